//! A client that stops reading: raw HTTP/1.1 over a socket with a tiny receive buffer,
//! so the gateway's writes back up after a few kilobytes instead of megabytes.

use std::{convert::Infallible, time::Duration};

use anyhow::Context;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    time::Instant,
};

use super::Event;

/// An SSE client that reads the response head and then nothing more, with a tiny
/// receive buffer so the server's writes back up quickly: a tab that froze.
pub struct StalledSse {
    stream: TcpStream,
    /// Body bytes (still chunk-encoded) read together with the head.
    body: Vec<u8>,
}

/// What a stalled client finds once it reads again.
#[derive(Debug)]
pub struct Drained {
    pub events: Vec<Event>,
    /// Whether the server ended the response (final chunk or closed connection).
    pub ended: bool,
}

impl StalledSse {
    /// Opens `GET /v1/stream` on `port` with a bearer token and waits for the head.
    pub async fn open(port: u16, token: &str) -> anyhow::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(2048)?;
        let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await?;
        stream
            .write_all(
                format!(
                    "GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
                     Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut buf = Vec::new();
        let head_end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return anyhow::Ok(at + 4);
                }
                let mut chunk = [0u8; 512];
                let n = stream.read(&mut chunk).await?;
                anyhow::ensure!(n > 0, "connection closed before the response head");
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .context("no response head within 10 s")??;
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "unexpected head: {head}");
        anyhow::ensure!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "the stream is not chunked: {head}"
        );
        Ok(Self {
            stream,
            body: buf.split_off(head_end),
        })
    }

    /// Reads again: everything until the server ends the response, or the deadline.
    pub async fn drain(mut self, timeout: Duration) -> anyhow::Result<Drained> {
        let deadline = Instant::now() + timeout;
        let mut body = std::mem::take(&mut self.body);
        let mut ended = false;
        loop {
            if let Some(payload) = dechunk(&body)?.1 {
                body = payload;
                ended = true;
                break;
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Err(_) => {
                    body = dechunk(&body)?.0;
                    break;
                }
                Ok(Ok(0)) | Ok(Err(_)) => {
                    body = dechunk(&body)?.0;
                    ended = true;
                    break;
                }
                Ok(Ok(n)) => body.extend_from_slice(&chunk[..n]),
            }
        }
        let mut events = Vec::new();
        let mut parsed = futures_util::stream::iter([Ok::<_, Infallible>(body)]).eventsource();
        while let Some(e) = parsed.next().await {
            let e = e.map_err(|e| anyhow::anyhow!("{e}"))?;
            events.push(Event {
                kind: e.event,
                id: e.id.parse().ok(),
                data: serde_json::from_str(&e.data)?,
            });
        }
        Ok(Drained { events, ended })
    }
}

/// Decodes HTTP/1.1 chunked framing: the payload of the complete chunks, and the whole
/// payload again if the final (zero-size) chunk has arrived.
fn dechunk(raw: &[u8]) -> anyhow::Result<(Vec<u8>, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut rest = raw;
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok((out, None));
        };
        let size_field = std::str::from_utf8(&rest[..line_end])?;
        let size_hex = size_field.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size {size_field:?}"))?;
        if size == 0 {
            return Ok((out.clone(), Some(out)));
        }
        let start = line_end + 2;
        if rest.len() < start + size + 2 {
            return Ok((out, None));
        }
        out.extend_from_slice(&rest[start..start + size]);
        rest = &rest[start + size + 2..];
    }
}
