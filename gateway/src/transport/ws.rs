//! `GET /v1/ws`: WebSocket with JSON text frames. A connection is a single stream, the
//! response body: it reads the client's frames from the request payload (the commands
//! `read`, `read_all`, `ping`, and WebSocket pings and closes) and writes the session's
//! events, pings and replies. No reader and writer tasks with a channel between them:
//! an idle WebSocket holds no more than an idle SSE stream. The connection is dropped
//! after three heartbeats (45 s by default) without any frame from the client, and
//! closed with 4001 when the token expires.

use std::{collections::VecDeque, convert::Infallible, time::Duration};

use actix_codec::{Decoder, Encoder};
use actix_http::{
    Payload,
    ws::{self as proto, CloseCode, CloseReason, Codec, Frame, Item, Message, ProtocolError},
};
use actix_web::{
    HttpRequest, HttpResponse,
    body::BodyStream,
    get,
    http::header,
    web::{self, Bytes, BytesMut},
};
use bytestring::ByteString;
use futures_util::{StreamExt, stream as body_stream};
use reddot_shared::{
    domain::UserId,
    error::{ApiError, ErrorCode},
    time::now_ms,
};
use serde::Deserialize;
use serde_json::json;

use super::resume_cursor;
use crate::{auth::AuthUser, events::Event, read_actions, session::Session, state::GatewayState};

/// A client silent for this many heartbeats is gone (half-open TCP is only found by
/// pinging): with the default 15 s, the contract's 45 s. Tied to the heartbeat, since a
/// live client only speaks when pinged.
const SILENT_BEATS: u32 = 3;
/// The largest message a client may send, in one frame or in continuations.
const MAX_MESSAGE: usize = 64 * 1024;

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
    let mut handshake = proto::handshake(req.head()).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("not a WebSocket upgrade: {e}"),
        )
    })?;
    let cursor = resume_cursor(&req)?;
    let session = Session::open(
        state.sessions.clone(),
        auth.user,
        cursor,
        auth.expires_at,
        "ws",
    )
    .await?;
    let connection = Connection {
        session,
        state,
        payload: body.into_inner(),
        codec: Codec::new().max_size(MAX_MESSAGE),
        read_buf: BytesMut::new(),
        partial: None,
        replies: VecDeque::new(),
        last_heard: now_ms(),
        closing: false,
    };
    let frames = body_stream::unfold(connection, |mut conn| async move {
        let bytes = conn.next_write().await?;
        Some((Ok::<_, Infallible>(bytes), conn))
    });
    Ok(HttpResponse::from(
        handshake
            .body(BodyStream::new(frames))
            .map_into_boxed_body(),
    ))
}

/// One WebSocket connection: its session and both directions of its socket.
struct Connection {
    session: Session,
    state: web::Data<GatewayState>,
    payload: Payload,
    codec: Codec,
    read_buf: BytesMut,
    /// A text message arriving in continuation frames.
    partial: Option<BytesMut>,
    /// Frames owed to the client (pongs, command replies, the closing frame): written
    /// before the next event.
    replies: VecDeque<Message>,
    last_heard: i64,
    /// A close frame is queued: the connection ends once it is written.
    closing: bool,
}

/// What woke the connection.
enum Wake {
    Frame(Option<Result<Frame, ProtocolError>>),
    Session(crate::session::Wake),
}

impl Connection {
    /// The next bytes to write, or `None` when the connection is over.
    async fn next_write(&mut self) -> Option<Bytes> {
        loop {
            if let Some(message) = self.replies.pop_front() {
                if self.replies.is_empty() {
                    // Idle connections hold no queue buffer.
                    self.replies = VecDeque::new();
                }
                return self.encode(message);
            }
            if self.closing {
                return None;
            }
            if let Some(event) = self.session.queued() {
                match event {
                    Some(event) => {
                        // No reply is owed (they go first): a notification's shared
                        // frame goes out as it is.
                        if let Some(frame) = event.ws_frame() {
                            event.record_delivery("ws");
                            return Some(frame);
                        }
                        self.on_event(event);
                    }
                    None => self.close(CloseCode::Away, "reconnect and resume"),
                }
                continue;
            }
            // Waiting on both sides is safe: neither wait loses anything when the other
            // side wins. The work that follows (commands, catch-ups) runs to completion.
            let wake = tokio::select! {
                frame = read_frame(&mut self.payload, &mut self.codec, &mut self.read_buf) => Wake::Frame(frame),
                wake = self.session.wake() => Wake::Session(wake),
            };
            match wake {
                Wake::Frame(Some(Ok(frame))) => {
                    self.last_heard = now_ms();
                    self.on_frame(frame).await;
                }
                Wake::Frame(Some(Err(ProtocolError::Overflow))) => {
                    self.close(CloseCode::Size, "message too big");
                }
                Wake::Frame(Some(Err(error))) => {
                    tracing::info!(%error, "WebSocket protocol error: closing");
                    self.close(CloseCode::Protocol, "protocol error");
                }
                // The client is gone: nothing more can be written.
                Wake::Frame(None) => return None,
                Wake::Session(wake) => self.session.act(wake).await,
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Heartbeat => {
                let silent_ms = now_ms() - self.last_heard;
                let limit_ms = (self.state.sessions.heartbeat * SILENT_BEATS).as_millis() as i64;
                if silent_ms >= limit_ms {
                    self.close(CloseCode::Policy, "no frame for three heartbeats");
                } else {
                    self.replies.push_back(Message::Ping(Bytes::new()));
                    // Without this the drop could come up to a beat late. A client that
                    // answers this ping moves the limit on.
                    let left =
                        Duration::from_millis(u64::try_from(limit_ms - silent_ms).unwrap_or(0));
                    self.session
                        .beat_no_later_than(tokio::time::Instant::now() + left);
                }
            }
            Event::TokenExpired => {
                self.send_text(event.typed_json());
                self.close(CloseCode::Other(4001), "token expired");
            }
            // Notifications do not come here: their shared frame is written as it is.
            event => self.send_text(event.typed_json()),
        }
    }

    async fn on_frame(&mut self, frame: Frame) {
        let text = match frame {
            Frame::Text(text) => text,
            Frame::Continuation(Item::FirstText(part)) => {
                self.partial = Some(BytesMut::from(&part[..]));
                return;
            }
            Frame::Continuation(Item::Continue(part)) => {
                self.append(&part);
                return;
            }
            Frame::Continuation(Item::Last(part)) => {
                self.append(&part);
                match self.partial.take() {
                    Some(text) => text.freeze(),
                    // The end of a binary message, or of one already refused as too big.
                    None => return,
                }
            }
            Frame::Ping(bytes) => {
                self.replies.push_back(Message::Pong(bytes));
                return;
            }
            Frame::Pong(_) => return,
            Frame::Close(reason) => {
                // RFC 6455 §5.5.1: a close frame is answered with one (else browsers
                // report an abnormal closure, 1006).
                self.replies.push_back(Message::Close(reason));
                self.closing = true;
                return;
            }
            Frame::Binary(_) | Frame::Continuation(Item::FirstBinary(_)) => {
                self.send_text(Some(
                    error_frame(
                        ErrorCode::InvalidRequest,
                        "only JSON text frames are understood",
                    )
                    .into(),
                ));
                return;
            }
        };
        self.on_text(&text).await;
    }

    /// Adds a continuation to the text message being received, closing the connection
    /// when the message grows past the limit.
    fn append(&mut self, part: &[u8]) {
        let Some(partial) = self.partial.as_mut() else {
            return;
        };
        if partial.len() + part.len() > MAX_MESSAGE {
            self.partial = None;
            self.close(CloseCode::Size, "message too big");
        } else {
            partial.extend_from_slice(part);
        }
    }

    async fn on_text(&mut self, text: &[u8]) {
        let Ok(text) = std::str::from_utf8(text) else {
            self.close(CloseCode::Invalid, "text frames must be UTF-8");
            return;
        };
        // Boxed: the command's database futures would otherwise size every idle
        // connection.
        let reply = Box::pin(command(&self.state, self.session.user(), text)).await;
        self.send_text(reply.map(ByteString::from));
    }

    fn send_text(&mut self, text: Option<ByteString>) {
        if let Some(text) = text {
            self.replies.push_back(Message::Text(text));
        }
    }

    fn close(&mut self, code: CloseCode, description: &str) {
        self.replies.push_back(Message::Close(Some(CloseReason {
            code,
            description: Some(description.into()),
        })));
        self.closing = true;
    }

    fn encode(&mut self, message: Message) -> Option<Bytes> {
        let mut buf = BytesMut::new();
        // Encoding a server frame fails only for a continuation out of order, which is
        // never sent.
        self.codec.encode(message, &mut buf).ok()?;
        Some(buf.freeze())
    }
}

/// The next frame from the client; `None` once its side of the connection is closed.
/// Cancel-safe: bytes read stay in `buf`.
async fn read_frame(
    payload: &mut Payload,
    codec: &mut Codec,
    buf: &mut BytesMut,
) -> Option<Result<Frame, ProtocolError>> {
    loop {
        match codec.decode(buf) {
            Ok(Some(frame)) => {
                if buf.is_empty() {
                    // Idle connections hold no read buffer.
                    *buf = BytesMut::new();
                }
                return Some(Ok(frame));
            }
            Ok(None) => {}
            Err(e) => return Some(Err(e)),
        }
        match payload.next().await {
            Some(Ok(bytes)) => buf.extend_from_slice(&bytes),
            Some(Err(_)) | None => return None,
        }
    }
}

fn error_frame(code: ErrorCode, message: &str) -> String {
    json!({"type": "error", "code": code.as_str(), "message": message}).to_string()
}

/// Runs one client command. Successful reads answer nothing here: the `unread` event
/// that follows on every session of the user is the answer.
async fn command(state: &GatewayState, user: &UserId, text: &str) -> Option<String> {
    let result = match serde_json::from_str::<Command>(text) {
        Ok(Command::Ping) => return Some(json!({"type": "pong"}).to_string()),
        Ok(Command::Read { ids }) if ids.is_empty() || ids.len() > read_actions::MAX_READ_IDS => {
            Err(ApiError::field("ids", read_actions::READ_IDS_RULE))
        }
        Ok(Command::Read { ids }) => read_actions::mark_read(state, user, &ids).await.map(drop),
        Ok(Command::ReadAll) => read_actions::mark_all_read(state, user).await.map(drop),
        Err(e) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("unknown command: {e}"),
        )),
    };
    result.err().map(|e| error_frame(e.code, &e.message))
}
