//! The producer's HTTP API as a backend sees it: validation with the field to blame,
//! the 201 answer, API keys, idempotency, token minting and the operational endpoints.
//! Rules that only validate run once (SQLite); whatever touches the database runs on
//! both backends.

mod auth;
mod creating;
mod idempotency;
mod operations;
mod tokens;
mod validation;
