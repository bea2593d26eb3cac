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
    let invalid = || {
        ApiError::field(
            "last_event_id",
            "last_event_id must be a non-negative integer",
        )
    };
    // A header that is not even text is refused, not ignored: ignoring it would start
    // the session "from now" and silently skip the replay the client asked for.
    let header = match req.headers().get("Last-Event-ID") {
        Some(v) => Some(v.to_str().map_err(|_| invalid())?.trim().to_owned()),
        None => None,
    };
    let raw = match header {
        Some(h) if !h.is_empty() => Some(h),
        _ => query_param(req, "last_event_id").filter(|q| !q.trim().is_empty()),
    };
    raw.map(|r| {
        r.trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(invalid)
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

#[cfg(test)]
mod properties {
    use actix_web::{ResponseError, http::StatusCode, test::TestRequest};
    use proptest::prelude::*;
    use reddot_shared::{auth, store::inbox::ListQuery};

    use super::resume_cursor;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Whatever a client sends as its cursor (header or query, any bytes a URL or a
        /// header can carry): a cursor ≥ 0 or a 400 naming `last_event_id`, never a panic.
        #[test]
        fn any_resume_cursor_is_a_number_or_a_400(raw in "\\PC{0,40}", in_header in any::<bool>()) {
            let req = if in_header {
                match actix_web::http::header::HeaderValue::from_str(&raw) {
                    Ok(v) => TestRequest::default().insert_header(("Last-Event-ID", v)).to_http_request(),
                    Err(_) => return Ok(()),
                }
            } else {
                let q: String = raw.bytes().map(|b| format!("%{b:02X}")).collect();
                TestRequest::with_uri(&format!("/v1/stream?last_event_id={q}")).to_http_request()
            };
            match resume_cursor(&req) {
                Ok(Some(n)) => prop_assert!(n >= 0 && raw.trim().parse::<i64>().ok() == Some(n)),
                Ok(None) => prop_assert!(raw.trim().is_empty()),
                Err(e) => prop_assert_eq!(e.status_code(), StatusCode::BAD_REQUEST),
            }
        }

        /// Inbox query strings: parsed or refused with a 400, never a panic.
        #[test]
        fn any_inbox_query_is_parsed_or_a_400(query in "[a-z_=&%0-9A-Z.-]{0,60}") {
            if let Err(e) = ListQuery::parse(&query) {
                prop_assert_eq!(e.status_code(), StatusCode::BAD_REQUEST);
            }
        }

        /// Arbitrary strings as tokens are refused, never a panic.
        #[test]
        fn any_string_as_a_token_is_refused(token in "\\PC{0,300}") {
            prop_assert!(auth::verify("a-secret-of-at-least-32-characters!!", &token, None).is_err());
        }
    }
}
