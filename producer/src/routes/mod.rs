//! The producer's HTTP routes, one action per file.

pub mod admin_page;
pub mod create_notification;
pub mod health;
pub mod mint_token;
pub mod openapi;
pub mod user_views;

use std::sync::{Arc, atomic::AtomicBool};

use actix_web::web;
use reddot_shared::config::Secret;
use sea_orm::DatabaseConnection;

use crate::writer::Writer;

/// What handlers share.
pub struct AppState {
    pub db: DatabaseConnection,
    pub writer: Writer,
    pub amqp_pool: deadpool_lapin::Pool,
    pub amqp_ok: Arc<AtomicBool>,
    pub jwt_secret: Secret,
    /// `REDDOT_JWT_AUDIENCE`: minted tokens name it in `aud`.
    pub jwt_audience: Option<String>,
    pub max_body_bytes: usize,
}

/// Every route [`configure`] adds with its method, so that a known path asked with
/// another method gets `405` and `Allow` rather than a 404 (`http::no_route`).
pub const ROUTES: reddot_shared::http::Routes = &[
    ("/api/v1/notifications", "POST"),
    ("/api/v1/tokens", "POST"),
    ("/healthz", "GET"),
    ("/healthz", "HEAD"),
    ("/readyz", "GET"),
    ("/readyz", "HEAD"),
    ("/metrics", "GET"),
    ("/api/v1/users/{user_id}/notifications", "GET"),
    ("/api/v1/users/{user_id}/unread", "GET"),
    ("/openapi.json", "GET"),
    ("/admin", "GET"),
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(create_notification::create_notification)
        .service(mint_token::mint_token)
        .service(health::healthz)
        .service(health::readyz)
        .service(health::metrics_text)
        .service(user_views::user_notifications)
        .service(user_views::user_unread)
        .service(openapi::openapi_json)
        .service(admin_page::admin_page);
}
