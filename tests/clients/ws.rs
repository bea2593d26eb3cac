//! The WebSocket client: tokio-tungstenite, JSON text frames, server pings answered
//! and counted, the server's close frame kept.

use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::{net::TcpStream, time::Instant};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{
        self, Message,
        client::IntoClientRequest,
        http::HeaderValue,
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};

use super::{Connect, Event, Events};

/// How the server closed a WebSocket.
#[derive(Debug, Clone)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

/// A WebSocket session on `GET /v1/ws`. Server pings are answered (tungstenite queues
/// the pong; it is flushed at once) and counted.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pings: usize,
    closed: Option<Closed>,
    ended: bool,
    last_id: Option<i64>,
}

/// A refused WebSocket upgrade: the HTTP status and the JSON body.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub body: Value,
}

impl Ws {
    /// Upgrades `ws://…{base}/v1/ws`; `Err(Refused)` if the gateway answered with an error.
    pub async fn try_open(base: &str, connect: &Connect) -> anyhow::Result<Result<Self, Refused>> {
        let ws_base = base.replacen("http://", "ws://", 1);
        let mut req =
            format!("{ws_base}{}", connect.path_and_query("/v1/ws")).into_client_request()?;
        for (name, value) in connect.headers() {
            req.headers_mut()
                .insert(name, HeaderValue::from_str(&value)?);
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((stream, _)) => Ok(Ok(Self {
                stream,
                pings: 0,
                closed: None,
                ended: false,
                last_id: None,
            })),
            Err(tungstenite::Error::Http(res)) => {
                let status = StatusCode::from_u16(res.status().as_u16())?;
                let body = res
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Ok(Err(Refused { status, body }))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Opens a session; fails unless the upgrade succeeds.
    pub async fn open(base: &str, connect: &Connect) -> anyhow::Result<Self> {
        Self::try_open(base, connect)
            .await?
            .map_err(|r| anyhow::anyhow!("WebSocket upgrade refused: {} {}", r.status, r.body))
    }

    /// Sends one JSON text frame.
    pub async fn send(&mut self, frame: &Value) -> anyhow::Result<()> {
        self.stream
            .send(Message::Text(frame.to_string().into()))
            .await?;
        Ok(())
    }

    /// Sends any WebSocket message, raw frames included (continuations, binary,
    /// oversized), for tests of the framing itself.
    pub async fn send_message(&mut self, msg: Message) -> anyhow::Result<()> {
        self.stream.send(msg).await?;
        Ok(())
    }

    /// Server pings received so far.
    pub fn pings(&self) -> usize {
        self.pings
    }

    /// The server's close frame, once the session has ended with one.
    pub fn closed(&self) -> Option<&Closed> {
        self.closed.as_ref()
    }

    /// Closes with 1000 (normal closure) and waits up to 5 s for the server's answer:
    /// its close frame, or `None` if the connection ended without one.
    pub async fn close(mut self) -> anyhow::Result<Option<Closed>> {
        self.stream
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await?;
        let mut answer = None;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(msg)) = self.stream.next().await {
                if let Message::Close(frame) = msg {
                    // The handshake is complete; the server drops the TCP connection.
                    answer = frame.map(|f| Closed {
                        code: f.code.into(),
                        reason: f.reason.to_string(),
                    });
                    break;
                }
            }
        })
        .await;
        Ok(answer)
    }
}

impl Events for Ws {
    async fn next_or_end(&mut self, timeout: Duration) -> anyhow::Result<Option<Event>> {
        let deadline = Instant::now() + timeout;
        while !self.ended {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.stream.next())
                .await
                .map_err(|_| anyhow::anyhow!("no WebSocket frame within {timeout:?}"))?;
            match msg {
                Some(Ok(Message::Text(text))) => {
                    let data: Value = serde_json::from_str(text.as_str())
                        .with_context(|| format!("WebSocket frame is not JSON: {text}"))?;
                    let event = Event {
                        kind: data["type"].as_str().unwrap_or_default().to_owned(),
                        id: data["id"].as_i64(),
                        data,
                    };
                    if let Some(id) = event.notification_id() {
                        self.last_id = Some(id);
                    }
                    return Ok(Some(event));
                }
                Some(Ok(Message::Ping(_))) => {
                    self.pings += 1;
                    // tungstenite queued the pong; send it now rather than on the next read.
                    let _ = self.stream.flush().await;
                }
                Some(Ok(Message::Close(frame))) => {
                    self.closed = frame.map(|f| Closed {
                        code: f.code.into(),
                        reason: f.reason.to_string(),
                    });
                    self.ended = true;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => self.ended = true,
            }
        }
        Ok(None)
    }

    fn last_id(&self) -> Option<i64> {
        self.last_id
    }
}
