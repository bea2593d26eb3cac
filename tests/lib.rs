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

pub use broker::{TestConsumer, Vhost};
pub use database::{Backend, TestDb};
pub use process::{Env, Service, ServiceKind};
pub use proxy::Proxy;

/// The API key every test producer accepts.
pub const API_KEY: &str = "test-api-key";
/// The JWT secret of every test service.
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef";
/// Allowed origin of every test gateway.
pub const ORIGIN: &str = "http://app.test";

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
