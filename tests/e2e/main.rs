//! End-to-end tests: real producer and gateway processes against real RabbitMQ,
//! PostgreSQL and SQLite. One binary (link time); each test gets its own database and
//! vhost, so they run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod publishing;
