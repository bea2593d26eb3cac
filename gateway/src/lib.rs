//! The gateway: browser-facing. Consumes its node's RabbitMQ queue and pushes every
//! notification to every session of its users over SSE and WebSocket, replaying what a
//! client missed from the database; serves the inbox and read state.

pub mod amqp;
pub mod auth;
pub mod connect_limit;
pub mod delivery_stats;
pub mod events;
pub mod hub;
pub mod publisher;
pub mod read_actions;
pub mod routes;
pub mod session;
pub mod startup;
pub mod state;
pub mod transport;
pub mod unread_cache;
