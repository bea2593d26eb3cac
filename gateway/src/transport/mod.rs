//! Transports: each writes the events of one [`crate::session::Session`] in its own
//! framing. They know nothing of AMQP or of the hub.

pub mod iframe;
pub mod longpoll;
pub mod poll;
pub mod sse;
pub mod ws;

use actix_web::HttpRequest;
use reddot_shared::error::{ApiError, ErrorCode};

use crate::{auth::query_param, session::OpenError};

/// Suggested reconnect delay for EventSource clients.
pub const RETRY_MS: u64 = 2000;

/// The resume cursor: the `Last-Event-ID` header (what EventSource sends on reconnect,
/// newer than any cursor in the URL) or `?last_event_id=`.
pub fn resume_cursor(req: &HttpRequest) -> Result<Option<i64>, ApiError> {
    let raw = match req
        .headers()
        .get("Last-Event-ID")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        Some(h) if !h.is_empty() => Some(h.to_owned()),
        _ => query_param(req, "last_event_id").filter(|q| !q.trim().is_empty()),
    };
    raw.map(|r| {
        r.trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::field(
                    "last_event_id",
                    "last_event_id must be a non-negative integer",
                )
            })
    })
    .transpose()
}

/// Whether `origin` is the gateway's own (the demo page it serves).
pub fn is_own_origin(req: &HttpRequest, origin: &str) -> bool {
    let info = req.connection_info();
    origin == format!("{}://{}", info.scheme(), info.host())
}

impl From<OpenError> for ApiError {
    fn from(err: OpenError) -> Self {
        match err {
            OpenError::Join(e) => ApiError::new(ErrorCode::TooManyRequests, e.to_string()),
            OpenError::Store(e) => e.into(),
        }
    }
}
