//! `GET /v1/ws`: WebSocket with JSON text frames. A writer task sends the session's
//! events and pings; a reader task answers commands (`read`, `read_all`, `ping`). The
//! connection is dropped after 45 s without any frame from the client, and closed with
//! 4001 when the token expires.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use actix_web::{HttpRequest, HttpResponse, get, http::header, web};
use actix_ws::{CloseCode, CloseReason};
use reddot_shared::{
    domain::UserId,
    error::{ApiError, ErrorCode},
    time::now_ms,
};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::resume_cursor;
use crate::{auth::AuthUser, events::Event, read_actions, session::Session, state::GatewayState};

/// A client silent for this long is gone (half-open TCP is only found by pinging).
const SILENCE_LIMIT: Duration = Duration::from_secs(45);
const MAX_FRAME: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Command {
    Read { ids: Vec<i64> },
    ReadAll,
    Ping,
}

#[get(
    "/v1/ws",
    wrap = "actix_web::middleware::from_fn(crate::connect_limit::limit_connects)"
)]
pub async fn ws_stream(
    auth: AuthUser,
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<GatewayState>,
) -> Result<HttpResponse, ApiError> {
    if let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        && !state.origin_allowed(origin)
        && !super::is_own_origin(&req, origin)
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this origin is not allowed",
        ));
    }
    let cursor = resume_cursor(&req)?;
    let user = auth.user.clone();
    let session = Session::open(
        state.sessions.clone(),
        auth.user,
        cursor,
        auth.expires_at,
        "ws",
    )
    .await?;
    let (response, ws, messages) = actix_ws::handle(&req, body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("not a WebSocket upgrade: {e}"),
        )
    })?;
    let messages = messages
        .max_frame_size(MAX_FRAME)
        .aggregate_continuations()
        .max_continuation_size(MAX_FRAME);
    let last_heard = Arc::new(AtomicI64::new(now_ms()));
    let closed = CancellationToken::new();
    actix_web::rt::spawn(write_events(
        session,
        ws.clone(),
        last_heard.clone(),
        closed.clone(),
    ));
    actix_web::rt::spawn(read_commands(
        messages,
        ws,
        state.into_inner(),
        user,
        last_heard,
        closed,
    ));
    Ok(response)
}

async fn write_events(
    mut session: Session,
    mut ws: actix_ws::Session,
    last_heard: Arc<AtomicI64>,
    closed: CancellationToken,
) {
    let reason = loop {
        let event = tokio::select! {
            () = closed.cancelled() => return,
            event = session.next() => event,
        };
        let Some(event) = event else {
            break CloseReason {
                code: CloseCode::Away,
                description: Some("reconnect and resume".into()),
            };
        };
        if matches!(event, Event::Heartbeat) {
            if now_ms() - last_heard.load(Ordering::Relaxed) > SILENCE_LIMIT.as_millis() as i64 {
                break CloseReason {
                    code: CloseCode::Policy,
                    description: Some("no frame for 45 s".into()),
                };
            }
            if ws.ping(b"").await.is_err() {
                return;
            }
            continue;
        }
        event.record_delivery("ws");
        if let Some(text) = event.typed_json()
            && ws.text(text).await.is_err()
        {
            return;
        }
        if matches!(event, Event::TokenExpired) {
            break CloseReason {
                code: CloseCode::Other(4001),
                description: Some("token expired".into()),
            };
        }
    };
    closed.cancel();
    let _ = ws.close(Some(reason)).await;
}

async fn read_commands(
    mut messages: actix_ws::AggregatedMessageStream,
    mut ws: actix_ws::Session,
    state: Arc<GatewayState>,
    user: UserId,
    last_heard: Arc<AtomicI64>,
    closed: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            () = closed.cancelled() => return,
            msg = messages.recv() => msg,
        };
        let Some(Ok(msg)) = msg else { break };
        last_heard.store(now_ms(), Ordering::Relaxed);
        let reply = match msg {
            // Boxed: the command's database futures would otherwise sit in every idle
            // connection's task.
            actix_ws::AggregatedMessage::Text(text) => {
                Box::pin(command(&state, &user, &text)).await
            }
            actix_ws::AggregatedMessage::Ping(bytes) => {
                let _ = ws.pong(&bytes).await;
                None
            }
            actix_ws::AggregatedMessage::Close(reason) => {
                // RFC 6455 §5.5.1: a close frame is answered with one (else browsers
                // report an abnormal closure, 1006).
                let _ = ws.close(reason).await;
                break;
            }
            _ => None,
        };
        if let Some(reply) = reply
            && ws.text(reply).await.is_err()
        {
            break;
        }
    }
    closed.cancel();
}

/// Runs one client command. Successful reads answer nothing here: the `unread` event
/// that follows on every session of the user is the answer.
async fn command(state: &GatewayState, user: &UserId, text: &str) -> Option<String> {
    let result = match serde_json::from_str::<Command>(text) {
        Ok(Command::Ping) => return Some(json!({"type": "pong"}).to_string()),
        Ok(Command::Read { ids }) if ids.len() > 1000 => {
            Err(ApiError::field("ids", "at most 1000 ids per read"))
        }
        Ok(Command::Read { ids }) => read_actions::mark_read(state, user, &ids).await.map(drop),
        Ok(Command::ReadAll) => read_actions::mark_all_read(state, user).await.map(drop),
        Err(e) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("unknown command: {e}"),
        )),
    };
    result.err().map(|e| {
        json!({"type": "error", "code": e.code.as_str(), "message": e.message}).to_string()
    })
}
