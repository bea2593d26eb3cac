//! `/healthz`, `/readyz` (200 iff the database answers; RabbitMQ reported, not required:
//! sessions catch up from the database when it returns) and `/metrics`.

use std::sync::atomic::Ordering;

use actix_web::{HttpResponse, get, route, web};
use reddot_shared::{db, metrics as m};
use serde_json::json;

use crate::{delivery_stats, state::GatewayState};

#[route("/healthz", method = "GET", method = "HEAD")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

#[route("/readyz", method = "GET", method = "HEAD")]
pub async fn readyz(state: web::Data<GatewayState>) -> HttpResponse {
    let database = db::ping(&state.db).await;
    let rabbitmq = state.amqp_connected.load(Ordering::Relaxed);
    let hub = &state.sessions.hub;
    let body = json!({
        "database": if database { "ok" } else { "down" },
        "rabbitmq": if rabbitmq { "ok" } else { "down" },
        "sessions": hub.session_count(),
        "users_online": hub.user_count(),
    });
    if database {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[get("/metrics")]
pub async fn metrics_text() -> HttpResponse {
    let mut text = m::render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&delivery_stats::render());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}
