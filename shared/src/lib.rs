//! What Reddot's producer and gateway share: configuration, domain types, the error
//! table, JWT handling, the database (schema, entities and every query) and the RabbitMQ
//! topology with its message encoding.

pub mod amqp;
pub mod auth;
pub mod backoff;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod http;
pub mod metrics;
pub mod store;
pub mod telemetry;
pub mod time;

pub use reddot_migrations as migrations;
