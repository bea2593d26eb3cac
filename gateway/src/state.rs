//! What the gateway's handlers share.

use std::sync::{Arc, atomic::AtomicBool};

use reddot_shared::config::Secret;
use sea_orm::DatabaseConnection;

use crate::{
    connect_limit::ConnectLimiter, publisher::Publisher, session::SessionCtx,
    unread_cache::UnreadCache,
};

pub struct GatewayState {
    pub db: DatabaseConnection,
    pub jwt_secret: Secret,
    /// `REDDOT_JWT_AUDIENCE`: tokens must name it in `aud`.
    pub jwt_audience: Option<String>,
    pub sessions: Arc<SessionCtx>,
    pub allowed_origins: Vec<String>,
    pub amqp_connected: Arc<AtomicBool>,
    pub publisher: Publisher,
    pub unread_cache: Arc<UnreadCache>,
    /// The vhost of `REDDOT_AMQP_URL`: the only one MQTT clients are let into.
    pub mqtt_vhost: String,
    /// `None` when `REDDOT_CONNECT_RATE_PER_IP` is 0.
    pub connect_limiter: Option<ConnectLimiter>,
    /// `REDDOT_CLIENT_IP_HEADER`, lower-case; `None`: the TCP peer address.
    pub client_ip_header: Option<String>,
}

impl GatewayState {
    /// Whether `origin` may use this gateway from a browser.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|o| o == origin.trim_end_matches('/'))
    }
}
