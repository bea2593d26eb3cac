//! `GET /v1/stream`: Server-Sent Events. Written by hand rather than through a
//! compression-aware responder: the body must never be compressed or buffered, so it is
//! marked `Content-Encoding: identity` and `X-Accel-Buffering: no`, and every event is
//! its own chunk.

use std::convert::Infallible;

use actix_web::{
    HttpRequest, HttpResponse, get,
    http::header::{self, ContentEncoding},
    web::{self, Bytes},
};
use futures_util::stream as body_stream;
use reddot_shared::error::ApiError;

use super::{RETRY_MS, resume_cursor};
use crate::{auth::AuthUser, session::Session, state::GatewayState};

#[get(
    "/v1/stream",
    wrap = "actix_web::middleware::from_fn(crate::connect_limit::limit_connects)"
)]
pub async fn sse_stream(
    auth: AuthUser,
    req: HttpRequest,
    state: web::Data<GatewayState>,
) -> Result<HttpResponse, ApiError> {
    let cursor = resume_cursor(&req)?;
    let session = Session::open(
        state.sessions.clone(),
        auth.user,
        cursor,
        auth.expires_at,
        "sse",
    )
    .await?;
    let body = body_stream::unfold((session, true), |(mut session, first)| async move {
        if first {
            return Some((
                Ok::<_, Infallible>(Bytes::from(format!("retry: {RETRY_MS}\n\n"))),
                (session, false),
            ));
        }
        let event = session.next().await?;
        event.record_delivery("sse");
        Some((Ok(event.sse()), (session, false)))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .insert_header(ContentEncoding::Identity)
        .streaming(body))
}
