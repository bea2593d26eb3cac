//! `/healthz` (the process answers), `/readyz` (the database answers; RabbitMQ and the
//! outbox lag are reported but never fail readiness: the outbox absorbs a broker outage)
//! and `/metrics`.

use std::{sync::atomic::Ordering, time::Duration};

use actix_web::{HttpResponse, get, route, web};
use reddot_shared::{db, metrics as m, store::outbox};
use serde_json::json;

use super::AppState;

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "the process is up", body = super::openapi::Health)))]
#[route("/healthz", method = "GET", method = "HEAD")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "the database is reachable", body = super::openapi::Readiness),
    (status = 503, description = "the database is unreachable", body = super::openapi::Readiness),
))]
#[route("/readyz", method = "GET", method = "HEAD")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let database = db::ping(&state.db).await;
    let lag = if database {
        outbox::lag(&state.db).await.ok()
    } else {
        None
    };
    if let Some(lag) = lag {
        metrics::gauge!(m::OUTBOX_PENDING).set(lag as f64);
    }
    let rabbitmq = amqp_reachable(&state).await;
    let body = json!({
        "database": if database { "ok" } else { "down" },
        "rabbitmq": if rabbitmq { "ok" } else { "down" },
        "outbox_lag": lag,
    });
    if database {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn amqp_reachable(state: &AppState) -> bool {
    let reachable = matches!(
        tokio::time::timeout(Duration::from_secs(1), state.amqp_pool.get()).await,
        Ok(Ok(conn)) if conn.status().connected()
    );
    state.amqp_ok.store(reachable, Ordering::Relaxed);
    metrics::gauge!(m::AMQP_CONNECTED).set(if reachable { 1.0 } else { 0.0 });
    reachable
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
#[get("/metrics")]
pub async fn metrics_text() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(m::render())
}
