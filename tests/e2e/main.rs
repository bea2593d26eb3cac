//! End-to-end tests: real producer and gateway processes against real RabbitMQ,
//! PostgreSQL and SQLite. One binary (link time); each test gets its own database and
//! vhost, so they run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster;
mod compose;
mod faults;
mod gateway_auth;
mod gateway_bindings;
mod gateway_fanout;
mod gateway_faults;
mod gateway_framing;
mod gateway_inbox;
mod gateway_limits;
mod gateway_resume;
mod gateway_ws;
mod helpers;
mod http_security;
mod isolation;
mod mqtt;
mod ordering;
mod producer_api;
mod publishing;
mod storing;
