//! Real clients of the gateway, as browsers and apps use it: an SSE client (reqwest
//! streaming + `eventsource-stream`), a WebSocket client (tokio-tungstenite) and an SSE
//! client that stops reading after the response head (a stalled tab). Each yields the
//! same parsed [`Event`]s and awaits them with deadlines, never with sleeps.

mod sse;
mod stalled;
mod ws;

use std::{future::Future, time::Duration};

use anyhow::Context;
use serde_json::Value;
use tokio::time::Instant;

pub use sse::Sse;
pub use stalled::{Drained, StalledSse};
pub use ws::{Closed, Refused, Ws};

/// How a client proves who it is.
#[derive(Debug, Clone)]
pub enum Auth {
    /// `Authorization: Bearer <jwt>`.
    Bearer(String),
    /// `?access_token=<jwt>` (EventSource and browsers' WebSocket cannot set headers).
    Query(String),
    None,
}

/// Where a client resumes.
#[derive(Debug, Clone, Copy)]
pub enum Resume {
    /// No cursor: no replay, just `unread` and then live events.
    Fresh,
    /// `Last-Event-ID: <id>` (what EventSource sends by itself on reconnect).
    Header(i64),
    /// `?last_event_id=<id>`.
    Query(i64),
}

/// Everything a client sends when it opens a session.
#[derive(Debug, Clone)]
pub struct Connect {
    pub auth: Auth,
    pub resume: Resume,
    /// `Origin` header (browsers send it on WebSocket upgrades).
    pub origin: Option<String>,
}

impl Connect {
    pub fn bearer(token: &str) -> Self {
        Self {
            auth: Auth::Bearer(token.to_owned()),
            resume: Resume::Fresh,
            origin: None,
        }
    }

    pub fn query_token(token: &str) -> Self {
        Self {
            auth: Auth::Query(token.to_owned()),
            ..Self::bearer(token)
        }
    }

    pub fn anonymous() -> Self {
        Self {
            auth: Auth::None,
            resume: Resume::Fresh,
            origin: None,
        }
    }

    /// Resumes after `id` with a `Last-Event-ID` header.
    pub fn after(mut self, id: i64) -> Self {
        self.resume = Resume::Header(id);
        self
    }

    /// Resumes after `id` with `?last_event_id=`.
    pub fn after_in_query(mut self, id: i64) -> Self {
        self.resume = Resume::Query(id);
        self
    }

    /// Resumes after `last` if the client has seen anything, else starts fresh.
    pub fn resume_from(self, last: Option<i64>) -> Self {
        match last {
            Some(id) => self.after(id),
            None => Self {
                resume: Resume::Fresh,
                ..self
            },
        }
    }

    pub fn origin(mut self, origin: &str) -> Self {
        self.origin = Some(origin.to_owned());
        self
    }

    /// `path` with the query parameters this connection puts in the URL.
    fn path_and_query(&self, path: &str) -> String {
        let mut params = Vec::new();
        if let Auth::Query(token) = &self.auth {
            params.push(format!("access_token={token}"));
        }
        if let Resume::Query(id) = self.resume {
            params.push(format!("last_event_id={id}"));
        }
        if params.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", params.join("&"))
        }
    }

    /// The headers this connection sends, as (name, value) pairs.
    fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Auth::Bearer(token) = &self.auth {
            out.push(("Authorization", format!("Bearer {token}")));
        }
        if let Resume::Header(id) = self.resume {
            out.push(("Last-Event-ID", id.to_string()));
        }
        if let Some(origin) = &self.origin {
            out.push(("Origin", origin.clone()));
        }
        out
    }
}

/// One event as a client sees it, whatever the transport.
#[derive(Debug, Clone)]
pub struct Event {
    /// `notification`, `unread`, `reset`, `token_expired`, `pong`, `error`: the SSE event
    /// name or the WebSocket frame's `"type"`.
    pub kind: String,
    /// SSE: the stream's last event id (per the EventSource spec it carries over to later
    /// events until the next `id:` line). WebSocket: the notification's `id`.
    pub id: Option<i64>,
    /// The payload (WebSocket: the whole frame, `"type"` included).
    pub data: Value,
}

impl Event {
    /// The notification's id, if this is a notification.
    pub fn notification_id(&self) -> Option<i64> {
        (self.kind == "notification")
            .then(|| self.data["id"].as_i64())
            .flatten()
    }
}

/// A stream of gateway events with deadlines; implemented by every client.
pub trait Events: Send {
    /// The next event; `Ok(None)` once the session has ended (closed by the server or
    /// the connection dropped), an error if nothing came within `timeout`.
    fn next_or_end(
        &mut self,
        timeout: Duration,
    ) -> impl Future<Output = anyhow::Result<Option<Event>>> + Send;

    /// The newest notification id received so far (what a client resumes from).
    fn last_id(&self) -> Option<i64>;

    /// The next event; an error if the session ended or nothing came within `timeout`.
    fn next(&mut self, timeout: Duration) -> impl Future<Output = anyhow::Result<Event>> + Send {
        async move {
            self.next_or_end(timeout)
                .await?
                .ok_or_else(|| anyhow::anyhow!("the session ended"))
        }
    }

    /// The next event, which must be of `kind`.
    fn expect(
        &mut self,
        kind: &str,
        timeout: Duration,
    ) -> impl Future<Output = anyhow::Result<Event>> + Send {
        async move {
            let event = self
                .next(timeout)
                .await
                .with_context(|| format!("awaiting `{kind}`"))?;
            anyhow::ensure!(event.kind == kind, "expected `{kind}`, got {event:?}");
            Ok(event)
        }
    }

    /// Notification ids in arrival order up to and including `last`, skipping `unread`
    /// events; fails on any other event, on the end of the session, or at the deadline.
    fn ids_until(
        &mut self,
        last: i64,
        timeout: Duration,
    ) -> impl Future<Output = anyhow::Result<Vec<i64>>> + Send {
        async move {
            let deadline = Instant::now() + timeout;
            let mut ids = Vec::new();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let event = self
                    .next(left)
                    .await
                    .with_context(|| format!("awaiting notification {last}; got {ids:?}"))?;
                match event.kind.as_str() {
                    "unread" => continue,
                    "notification" => {
                        let id = event
                            .notification_id()
                            .ok_or_else(|| anyhow::anyhow!("notification without id: {event:?}"))?;
                        ids.push(id);
                        if id >= last {
                            return Ok(ids);
                        }
                    }
                    _ => anyhow::bail!("unexpected {event:?} after {ids:?}"),
                }
            }
        }
    }

    /// Skips `unread` events until one with `count`; fails on any other event.
    fn unread_count(
        &mut self,
        count: i64,
        timeout: Duration,
    ) -> impl Future<Output = anyhow::Result<Event>> + Send {
        async move {
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let event = self
                    .next(left)
                    .await
                    .with_context(|| format!("awaiting an unread count of {count}"))?;
                anyhow::ensure!(event.kind == "unread", "expected `unread`, got {event:?}");
                if event.data["count"] == count {
                    return Ok(event);
                }
            }
        }
    }

    /// The next `n` notifications, skipping `unread` events.
    fn notifications(
        &mut self,
        n: usize,
        timeout: Duration,
    ) -> impl Future<Output = anyhow::Result<Vec<Event>>> + Send {
        async move {
            let deadline = Instant::now() + timeout;
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                let left = deadline.saturating_duration_since(Instant::now());
                let event = self
                    .next(left)
                    .await
                    .with_context(|| format!("got {} of {n} notifications", out.len()))?;
                match event.kind.as_str() {
                    "unread" => {}
                    "notification" => out.push(event),
                    _ => anyhow::bail!("unexpected {event:?} after {} notifications", out.len()),
                }
            }
            Ok(out)
        }
    }

    /// Reads until the session ends, returning what came before the end.
    fn until_end(
        &mut self,
        timeout: Duration,
    ) -> impl Future<Output = anyhow::Result<Vec<Event>>> + Send {
        async move {
            let deadline = Instant::now() + timeout;
            let mut out = Vec::new();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self
                    .next_or_end(left)
                    .await
                    .with_context(|| format!("awaiting the end; got {out:?}"))?
                {
                    Some(event) => out.push(event),
                    None => return Ok(out),
                }
            }
        }
    }
}

/// Either transport, for tests that treat every session alike.
pub enum Client {
    Sse(Box<Sse>),
    Ws(Box<Ws>),
}

impl Client {
    pub fn transport(&self) -> &'static str {
        match self {
            Client::Sse(_) => "sse",
            Client::Ws(_) => "ws",
        }
    }
}

impl Events for Client {
    async fn next_or_end(&mut self, timeout: Duration) -> anyhow::Result<Option<Event>> {
        match self {
            Client::Sse(c) => c.next_or_end(timeout).await,
            Client::Ws(c) => c.next_or_end(timeout).await,
        }
    }

    fn last_id(&self) -> Option<i64> {
        match self {
            Client::Sse(c) => c.last_id(),
            Client::Ws(c) => c.last_id(),
        }
    }
}
