//! Many-connection clients: a minimal SSE reader over raw TCP (HTTP/1.1, chunked) and
//! a WebSocket reader, each reporting `(notification id, receive time)`. Sockets are
//! spread over 127.0.0.2–127.0.0.9 source addresses so that tens of thousands of
//! connections do not exhaust one address's ephemeral ports.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Instant,
};

use futures_util::StreamExt;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
    sync::mpsc,
};

/// A received notification: which session, which id, when.
pub type Received = (usize, i64, Instant);

pub fn mint(user: &str, ttl_secs: i64) -> String {
    let exp = chrono::Utc::now().timestamp() + ttl_secs;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(reddot_tests::JWT_SECRET.as_bytes()),
    )
    .expect("sign")
}

pub async fn connect(port: u16, n: usize) -> anyhow::Result<TcpStream> {
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (n % 8) as u8));
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    Ok(socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await?)
}

/// Opens an SSE session and forwards every notification id it receives. Returns once
/// the response headers arrived (the session is then registered on the gateway).
pub async fn sse(
    port: u16,
    n: usize,
    token: &str,
    last_event_id: Option<i64>,
    out: mpsc::UnboundedSender<Received>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut stream = connect(port, n).await?;
    let resume = last_event_id
        .map(|id| format!("&last_event_id={id}"))
        .unwrap_or_default();
    stream
        .write_all(format!("GET /v1/stream?access_token={token}{resume} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n").as_bytes())
        .await?;
    // Room for a burst: a session that fell behind gets many events in one write.
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    anyhow::ensure!(line.contains(" 200 "), "SSE answered {line:?}");
    loop {
        line.clear();
        reader.read_line(&mut line).await?;
        if line == "\r\n" {
            break;
        }
    }
    Ok(tokio::spawn(async move {
        // Chunked body: "<hex size>\r\n<data>\r\n". Each event is its own chunk.
        let mut size_line = String::new();
        let mut buf = Vec::with_capacity(1024);
        // Events that came in one read share its receive time: a clock read per event
        // was the bench's largest single cost in a flat-out broadcast.
        let mut received = Instant::now();
        loop {
            let mut fresh = !reader.buffer().contains(&b'\n');
            size_line.clear();
            if reader.read_line(&mut size_line).await.unwrap_or(0) == 0 {
                return;
            }
            let Ok(size) = usize::from_str_radix(size_line.trim(), 16) else {
                return;
            };
            if size == 0 {
                return;
            }
            buf.resize(size + 2, 0);
            fresh |= reader.buffer().len() < buf.len();
            if reader.read_exact(&mut buf).await.is_err() {
                return;
            }
            if fresh {
                received = Instant::now();
            }
            if let Some(id) = event_id(&buf[..size]) {
                let _ = out.send((n, id, received));
            }
        }
    }))
}

/// The `id:` of an SSE event (Reddot writes one event per chunk), read from the bytes
/// as they are: the bench shares the CPUs with the gateway, and a flat-out broadcast
/// hands it a million of these a second.
fn event_id(event: &[u8]) -> Option<i64> {
    let at = event
        .windows(4)
        .position(|w| w == b"id: ")
        .filter(|&at| at == 0 || event[at - 1] == b'\n')?;
    let digits = &event[at + 4..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Opens a WebSocket session and forwards every notification id it receives.
pub async fn ws(
    port: u16,
    n: usize,
    token: &str,
    out: mpsc::UnboundedSender<Received>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let stream = connect(port, n).await?;
    let url = format!("ws://127.0.0.1:{port}/v1/ws?access_token={token}");
    let (mut socket, _) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(msg)) = socket.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(text) = msg {
                let now = Instant::now();
                if let Some(rest) = text
                    .as_str()
                    .strip_prefix("{\"type\":\"notification\",\"id\":")
                    && let Some(id) = rest.split(',').next().and_then(|v| v.parse().ok())
                {
                    let _ = out.send((n, id, now));
                }
            }
        }
    }))
}

/// Sends `GET path` back to back on one keep-alive connection until `deadline`; returns
/// how many answers had status `want`. Hand-rolled so the load generator spends as
/// little of the shared CPU as possible per request.
pub async fn get_loop(
    port: u16,
    n: usize,
    path: &str,
    extra_headers: &str,
    want: u16,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let stream = connect(port, n).await?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(8192, read);
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra_headers}\r\n");
    let (mut ok, mut line, mut body) = (0u64, String::new(), Vec::new());
    while Instant::now() < deadline {
        write.write_all(request.as_bytes()).await?;
        line.clear();
        reader.read_line(&mut line).await?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        let mut length = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                anyhow::bail!("connection closed mid-answer");
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or_default();
            }
        }
        body.resize(length, 0);
        reader.read_exact(&mut body).await?;
        ok += u64::from(status == want);
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::event_id;

    #[test]
    fn reads_the_id_line_of_an_event_and_nothing_else() {
        assert_eq!(
            event_id(b"event: notification\nid: 42\ndata: {\"id\":42}\n\n"),
            Some(42)
        );
        assert_eq!(event_id(b"id: 7\n\n"), Some(7));
        assert_eq!(
            event_id(b"event: unread\ndata: {\"x\":\"id: 9\"}\n\n"),
            None
        );
        assert_eq!(event_id(b": ping\n\n"), None);
    }
}
