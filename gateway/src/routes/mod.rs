//! The gateway's HTTP routes besides the streaming transports.

pub mod health;
pub mod inbox;
pub mod mqtt_auth;
pub mod web;
