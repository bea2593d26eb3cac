//! The producer: the HTTP API backends call to send notifications. It stores them in the
//! database and publishes them to RabbitMQ through the transactional outbox.

pub mod api_key;
pub mod cleanup;
pub mod handoff;
pub mod relay;
pub mod routes;
pub mod startup;
pub mod writer;
