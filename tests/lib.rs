//! Test harness shared by the end-to-end tests and the benchmarks: a fresh database
//! (SQLite file or uniquely named PostgreSQL database) and a fresh RabbitMQ vhost per
//! test, a TCP proxy that can cut a connection, and real `reddot-producer` /
//! `reddot-gateway` processes on port 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod broker;
pub mod clients;
pub mod database;
pub mod gateway;
pub mod process;
pub mod proxy;

pub use broker::{MqttVhost, TestConsumer, Vhost};
pub use database::{Backend, TestDb};
pub use process::{Env, Service, ServiceKind};
pub use proxy::Proxy;

/// The API key every test producer accepts.
pub const API_KEY: &str = "test-api-key";
/// The JWT secret of every test service.
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef";
/// Allowed origin of every test gateway.
pub const ORIGIN: &str = "http://app.test";

/// Where RabbitMQ's HTTP auth backend asks (`scripts/services` configures the broker):
/// the gateway of an MQTT test listens here, so MQTT tests run one at a time.
pub const MQTT_AUTH_ADDR: &str = "127.0.0.1:15690";
/// RabbitMQ's MQTT listener (1883 is often Mosquitto's).
pub const MQTT_PORT: u16 = 1884;
/// RabbitMQ's Web-MQTT listener.
pub const WEB_MQTT_PORT: u16 = 15675;

/// RabbitMQ as the tests reach it (override with `REDDOT_TEST_AMQP`, host:port).
pub fn amqp_addr() -> String {
    std::env::var("REDDOT_TEST_AMQP").unwrap_or_else(|_| "127.0.0.1:5672".into())
}

/// PostgreSQL admin URL the tests create databases with (`REDDOT_TEST_PG`).
pub fn pg_admin_url() -> String {
    std::env::var("REDDOT_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub mod stack;
pub use stack::Stack;
