//! HTTP pieces both services mount: JSON body reading with clear 4xx errors, the JSON
//! 404/405 fallbacks and the security headers.

use std::future::Future;

use actix_web::{HttpMessage, HttpRequest, HttpResponse, http::header, web};
use futures_util::StreamExt;
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};

/// Reads a JSON request body of at most `limit` bytes. Errors: 415 unless the body is
/// declared `application/json`, 413 past the limit, 400 for bytes that are not JSON.
pub async fn read_json(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Value, ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
    if !is_json {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the body must be application/json",
        ));
    }
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "the body could not be read"))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// Finds the first string (value or object key) holding a NUL character, as a JSON path.
pub fn find_nul(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some(path.to_owned()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_nul(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let here = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k.contains('\0') {
                Some(here)
            } else {
                find_nul(v, &here)
            }
        }),
        _ => None,
    }
}

/// A service's routes as (path pattern, method), for [`no_route`].
pub type Routes = &'static [(&'static str, &'static str)];

/// What a request no route took gets: `405` with `Allow` when its path is one of
/// `routes` under another method (the usual mistake: a GET where a POST belongs), else
/// the JSON 404.
pub fn no_route(req: &HttpRequest, routes: Routes) -> HttpResponse {
    let mut allowed: Vec<&str> = routes
        .iter()
        .filter(|(pattern, _)| actix_web::dev::ResourceDef::new(*pattern).is_match(req.path()))
        .map(|(_, method)| *method)
        .collect();
    if allowed.is_empty() {
        return actix_web::ResponseError::error_response(&ApiError::not_found("no such endpoint"));
    }
    allowed.dedup();
    let allow = allowed.join(", ");
    let mut res = actix_web::ResponseError::error_response(&ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not served here; use {allow}", req.method()),
    ));
    if let Ok(value) = header::HeaderValue::from_str(&allow) {
        res.headers_mut().insert(header::ALLOW, value);
    }
    res
}

/// The bearer credential of a request, if it sent one.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        // The scheme is case-insensitive (RFC 9110, 11.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, credential)| credential.trim())
}

/// Compares secrets in time that depends neither on where they differ nor on their
/// lengths (it compares their SHA-256 digests).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The part of a request path fit for a log: tokens travel in query strings
/// (`?access_token=`) and must never reach a log, so the path is cut where a query
/// would start even when the client encoded it (`%3F`) or used `;`, and long paths are
/// cut short.
fn loggable_path(path: &str) -> String {
    const MAX: usize = 200;
    let lower = path.to_ascii_lowercase();
    let end = [lower.find("%3f"), lower.find(';'), lower.find('?')]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(path.len());
    let mut kept = &path[..end];
    if kept.len() > MAX {
        let mut cut = MAX;
        while !kept.is_char_boundary(cut) {
            cut -= 1;
        }
        kept = &kept[..cut];
    }
    if kept.len() < path.len() {
        format!("{kept}…")
    } else {
        kept.to_owned()
    }
}

/// Access log and request counter. Logs the path without its query string (see
/// [`loggable_path`]).
pub async fn access_log(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let started = std::time::Instant::now();
    let method = req.method().to_string();
    let path = loggable_path(req.path());
    let res = next.call(req).await?;
    let status = res.status().as_u16();
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    metrics::counter!(crate::metrics::HTTP_REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(%method, %path, status, ms, "request");
    } else {
        tracing::info!(%method, %path, status, ms, "request");
    }
    Ok(res)
}

/// The headers every answer of both services carries unless its route sets them: no
/// answer (JSON errors, pages) may be sniffed into another type by a browser, nor kept
/// by a cache (inboxes, unread counts and tokens are a user's own).
pub fn default_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::CACHE_CONTROL, "no-store"))
}

/// Cuts off a request body that has not all arrived within `timeout` (zero: never). The HTTP
/// server times out a request's head, not its body: a client declaring a body and
/// sending a byte a second held a connection, and a file descriptor, for hours (an
/// audit emptied a gateway's descriptors that way through the unauthenticated MQTT
/// auth endpoints). The handler sees a read error and answers 400. WebSocket upgrades
/// are left alone: their "body" is the socket.
pub async fn body_deadline(
    timeout: std::time::Duration,
    mut req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let headers = req.headers();
    let has_body = headers.contains_key(header::CONTENT_LENGTH)
        || headers.contains_key(header::TRANSFER_ENCODING);
    if has_body && !headers.contains_key(header::UPGRADE) && !timeout.is_zero() {
        let body = Deadline {
            body: req.take_payload(),
            deadline: Box::pin(tokio::time::sleep(timeout)),
        };
        let body: std::pin::Pin<Box<dyn futures_util::Stream<Item = _>>> = Box::pin(body);
        req.set_payload(actix_web::dev::Payload::from(body));
    }
    next.call(req).await
}

/// A request body that fails once its deadline passes.
struct Deadline {
    body: actix_web::dev::Payload,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl futures_util::Stream for Deadline {
    type Item = Result<web::Bytes, actix_web::error::PayloadError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if let Poll::Ready(item) = self.body.poll_next_unpin(cx) {
            return Poll::Ready(item);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request body did not arrive in time",
                ),
            )))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `reddot-* healthcheck`: asks the service listening on `addr` (a `0.0.0.0` address is
/// asked on loopback) for `/healthz`, so container images need no curl.
pub fn healthcheck(addr: &str) -> bool {
    use std::io::{Read, Write};
    let addr = addr.replace("0.0.0.0", "127.0.0.1");
    let Ok(mut stream) = std::net::TcpStream::connect(&addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(3)));
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// CSP sources (`'sha256-…'`) for every attribute-less inline `open … close` block of
/// `page` (e.g. `<script>` … `</script>`), or `'none'`: pages served by Reddot allow
/// their own inline script and style by hash, so an injected one would not run.
pub fn inline_hashes(page: &str, open: &str, close: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let mut sources = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(close) else { break };
        let digest = Sha256::digest(&after.as_bytes()[..end]);
        sources.push(format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &after[end + close.len()..];
    }
    if sources.is_empty() {
        "'none'".to_owned()
    } else {
        sources.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_blocks_are_allowed_by_their_sha256() {
        // printf 'alert(1)' | openssl dgst -sha256 -binary | base64
        assert_eq!(
            inline_hashes("<p><script>alert(1)</script>", "<script>", "</script>"),
            "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"
        );
        assert_eq!(inline_hashes("<p>", "<style>", "</style>"), "'none'");
    }

    #[test]
    fn logged_paths_stop_where_a_query_could_start() {
        assert_eq!(loggable_path("/v1/stream"), "/v1/stream");
        assert_eq!(
            loggable_path("/v1%2Fstream%3Faccess_token=eyJ.x.y"),
            "/v1%2Fstream…"
        );
        assert_eq!(loggable_path("/v1/stream%3faccess_token=t"), "/v1/stream…");
        assert_eq!(loggable_path("/v1/stream;access_token=t"), "/v1/stream…");
        let long = format!("/{}", "é".repeat(300));
        assert!(loggable_path(&long).len() <= 200 + "…".len());
    }

    #[test]
    fn secrets_compare_by_content_whatever_their_lengths() {
        assert!(constant_time_eq(b"key-1", b"key-1"));
        assert!(!constant_time_eq(b"key-1", b"key-2"));
        assert!(!constant_time_eq(b"key-1", b"key-10"));
        assert!(!constant_time_eq(b"", b"k"));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let with = |value: &str| {
            actix_web::test::TestRequest::default()
                .insert_header((header::AUTHORIZATION, value))
                .to_http_request()
        };
        for value in ["Bearer k1", "bearer k1", "BEARER k1", "Bearer  k1 "] {
            assert_eq!(bearer(&with(value)), Some("k1"), "{value}");
        }
        for value in ["Basic k1", "Bearerk1", "k1"] {
            assert_eq!(bearer(&with(value)), None, "{value}");
        }
    }
}
