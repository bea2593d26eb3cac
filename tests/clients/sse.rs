//! The SSE client: reqwest's byte stream, teed into a raw copy, parsed by
//! `eventsource-stream` the way a browser's EventSource parses it.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use reqwest::{StatusCode, header::HeaderMap};

use super::{Connect, Event, Events};

type SseStream = Pin<
    Box<
        dyn Stream<Item = Result<eventsource_stream::Event, EventStreamError<reqwest::Error>>>
            + Send,
    >,
>;

/// An SSE session on `GET /v1/stream`. Nothing is read in the background: bytes are
/// pulled only while the test awaits an event, like a real client's event loop.
pub struct Sse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    events: SseStream,
    raw: Arc<Mutex<Vec<u8>>>,
    last_id: Option<i64>,
    ended: bool,
    /// Why the stream ended, if it ended with a transport error.
    pub end_error: Option<String>,
}

impl Sse {
    /// `GET {base}/v1/stream` as `connect` says, without judging the answer.
    pub async fn request(
        http: &reqwest::Client,
        base: &str,
        connect: &Connect,
    ) -> anyhow::Result<reqwest::Response> {
        let mut req = http
            .get(format!("{base}{}", connect.path_and_query("/v1/stream")))
            .header("Accept", "text/event-stream");
        for (name, value) in connect.headers() {
            req = req.header(name, value);
        }
        Ok(req.send().await?)
    }

    /// Opens a session; fails unless the gateway answers 200.
    pub async fn open(base: &str, connect: &Connect) -> anyhow::Result<Self> {
        let res = Self::request(&reqwest::Client::new(), base, connect).await?;
        let status = res.status();
        if status != StatusCode::OK {
            let body = res.text().await.unwrap_or_default();
            anyhow::bail!("GET /v1/stream answered {status}: {body}");
        }
        Ok(Self::from_response(res))
    }

    /// Wraps a 200 response whose body is the event stream.
    pub fn from_response(res: reqwest::Response) -> Self {
        let status = res.status();
        let headers = res.headers().clone();
        let raw = Arc::new(Mutex::new(Vec::new()));
        let tee = raw.clone();
        let events = res
            .bytes_stream()
            .map(move |chunk| {
                if let Ok(bytes) = &chunk {
                    tee.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(bytes);
                }
                chunk
            })
            .eventsource();
        Self {
            status,
            headers,
            events: Box::pin(events),
            raw,
            last_id: None,
            ended: false,
            end_error: None,
        }
    }

    /// Every byte of the body received so far, exactly as it came.
    pub fn raw(&self) -> Vec<u8> {
        self.raw.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many `: ping` comments came so far.
    pub fn heartbeats(&self) -> usize {
        String::from_utf8_lossy(&self.raw())
            .lines()
            .filter(|l| *l == ": ping")
            .count()
    }
}

impl Events for Sse {
    async fn next_or_end(&mut self, timeout: Duration) -> anyhow::Result<Option<Event>> {
        if self.ended {
            return Ok(None);
        }
        let item = tokio::time::timeout(timeout, self.events.next())
            .await
            .map_err(|_| anyhow::anyhow!("no SSE event within {timeout:?}"))?;
        match item {
            None => {
                self.ended = true;
                Ok(None)
            }
            Some(Err(err)) => {
                self.ended = true;
                self.end_error = Some(err.to_string());
                Ok(None)
            }
            Some(Ok(e)) => {
                let data = serde_json::from_str(&e.data)
                    .with_context(|| format!("SSE `{}` data is not JSON: {:?}", e.event, e.data))?;
                let event = Event {
                    kind: e.event,
                    id: e.id.parse().ok(),
                    data,
                };
                if let Some(id) = event.notification_id() {
                    self.last_id = Some(id);
                }
                Ok(Some(event))
            }
        }
    }

    fn last_id(&self) -> Option<i64> {
        self.last_id
    }
}
