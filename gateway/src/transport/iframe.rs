//! `GET /v1/iframe?origin=<page origin>`: the "forever iframe". A chunked HTML page whose
//! every event is a `<script>` calling `parent.postMessage(<frame>, "<origin>")`, with
//! the WebSocket frame objects. The target origin must be an allowed origin, never `*`,
//! (or the gateway's own), so no other page can frame it and read the messages; the
//! page's CSP allows only inline scripts (no source may be loaded) and only that origin
//! as a parent. Heartbeats arrive as `{"type":"ping"}` messages.
//!
//! The chunks are exactly the contract's `<script>parent.postMessage(<payload>,
//! "<origin>")</script>`, with no nonce: every script is written here, and no payload
//! can end its element (see [`script_safe`]), so a nonce would guard against nothing
//! while breaking clients that parse the documented form.

use std::convert::Infallible;

use actix_web::{
    HttpRequest, HttpResponse, get,
    http::header::{self, ContentEncoding},
    web::{self, Bytes},
};
use bytestring::ByteString;
use futures_util::stream as body_stream;
use reddot_shared::error::{ApiError, ErrorCode};

use super::resume_cursor;
use crate::{
    auth::{AuthUser, query_param},
    session::Session,
    state::GatewayState,
};

#[get(
    "/v1/iframe",
    wrap = "actix_web::middleware::from_fn(crate::connect_limit::limit_connects)"
)]
pub async fn iframe_stream(
    auth: AuthUser,
    req: HttpRequest,
    state: web::Data<GatewayState>,
) -> Result<HttpResponse, ApiError> {
    let origin = query_param(&req, "origin").unwrap_or_default();
    let origin = origin.trim_end_matches('/').to_owned();
    if origin.is_empty() || !(state.origin_allowed(&origin) || super::is_own_origin(&req, &origin))
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "origin must be one of REDDOT_ALLOWED_ORIGINS",
        ));
    }
    let cursor = resume_cursor(&req)?;
    let session = Session::open(
        state.sessions.clone(),
        auth.user,
        cursor,
        auth.expires_at,
        "iframe",
    )
    .await?;
    let target = js_string(&origin);
    // Some browsers render (and run) a streamed document only after its first KiB.
    let prelude = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>reddot</title></head><body>\n<!--{}-->\n",
        " ".repeat(1024)
    );
    let body = body_stream::unfold((session, Some(prelude)), move |(mut session, prelude)| {
        let target = target.clone();
        async move {
            if let Some(p) = prelude {
                return Some((Ok::<_, Infallible>(Bytes::from(p)), (session, None)));
            }
            let event = session.next().await?;
            event.record_delivery("iframe");
            // Heartbeats are posted too: a page cannot see an HTML comment, and a cut
            // stream raises no event in the parent, so pings are how it notices silence.
            let json = event
                .typed_json()
                .unwrap_or_else(|| ByteString::from_static(r#"{"type":"ping"}"#));
            let chunk = format!(
                "<script>parent.postMessage({}, {target})</script>\n",
                script_safe(&json)
            );
            Some((Ok(Bytes::from(chunk)), (session, None)))
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .insert_header(ContentEncoding::Identity)
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            format!("default-src 'none'; script-src 'unsafe-inline'; frame-ancestors {origin}"),
        ))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .streaming(body))
}

/// JSON is valid JavaScript, but `</script>` or `<!--` inside a string would end or
/// confuse the script element: escape `<` (and the JS line separators) as `\uXXXX`.
fn script_safe(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

fn js_string(s: &str) -> String {
    script_safe(&serde_json::Value::String(s.to_owned()).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_payloads_cannot_close_the_script_element() {
        let json = serde_json::json!({"title": "</script><script>alert(1)</script>"}).to_string();
        let safe = script_safe(&json);
        assert!(!safe.contains("</script"));
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap_or_default();
        assert_eq!(back["title"], "</script><script>alert(1)</script>");
    }
}
