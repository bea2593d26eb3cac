//! The Prometheus recorder behind `/metrics`. Metric names are listed here so that the
//! two services and the docs agree on them.

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "reddot_http_requests_total";
pub const NOTIFICATIONS_CREATED: &str = "reddot_notifications_created_total";
pub const OUTBOX_PUBLISHED: &str = "reddot_outbox_published_total";
pub const OUTBOX_PENDING: &str = "reddot_outbox_pending";
pub const PUBLISH_LAG: &str = "reddot_publish_lag_seconds";
pub const RELAY_LEADER: &str = "reddot_relay_leader";
pub const AMQP_CONNECTED: &str = "reddot_amqp_connected";
pub const SESSIONS: &str = "reddot_sessions";
pub const USERS_ONLINE: &str = "reddot_users_online";
pub const DELIVERIES: &str = "reddot_deliveries_total";
pub const REPLAYED: &str = "reddot_replayed_total";
pub const DELIVERY_LATENCY: &str = "reddot_delivery_latency_seconds";
pub const SESSIONS_DROPPED: &str = "reddot_sessions_dropped_total";
/// Answers of the gateway's RabbitMQ HTTP auth backend, by `kind` and `decision`.
pub const MQTT_AUTH: &str = "reddot_mqtt_auth_total";
/// Streaming connections refused with 429 by the per-IP connect rate limit.
pub const CONNECTS_LIMITED: &str = "reddot_connects_rate_limited_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once and returns the handle that renders it.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .ok()?
                .install_recorder()
                .ok()?;
            let upkeep = handle.clone();
            // Without the exporter's own listener, histograms are only compacted by upkeep.
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
            Some(handle)
        })
        .clone()
}

/// Renders the current values in the Prometheus text format.
pub fn render() -> String {
    install().map(|h| h.render()).unwrap_or_default()
}
