//! What a session sends, and its encoding for each transport. Notification JSON is kept
//! as the text the relay published and spliced into frames, never re-serialized.

use std::{
    fmt::Write,
    sync::{Arc, OnceLock},
};

use actix_codec::Encoder;
use actix_http::ws::{Codec, Message};
use actix_web::web::{Bytes, BytesMut};
use bytestring::ByteString;

use reddot_shared::{domain::Notification, store::inbox::Unread, time::now_ms};
use serde_json::json;

use crate::delivery_stats;

/// A notification as sessions send it: its JSON, and its frames rendered at most once.
/// A live notification's `Note` is shared by every session of the node it reaches (a
/// broadcast: 10,000 of them), each of which would otherwise format and allocate the
/// same frame again.
#[derive(Debug)]
pub struct Note {
    pub id: i64,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub json: Arc<str>,
    sse: OnceLock<Bytes>,
    typed: OnceLock<ByteString>,
    ws: OnceLock<Bytes>,
}

impl Note {
    pub fn new(id: i64, created_at: i64, expires_at: Option<i64>, json: Arc<str>) -> Self {
        Self {
            id,
            created_at,
            expires_at,
            json,
            sse: OnceLock::new(),
            typed: OnceLock::new(),
            ws: OnceLock::new(),
        }
    }

    /// Its SSE frame. The payload is JSON, which escapes every newline and carriage
    /// return, so a `data:` line can never be split by content.
    fn sse(&self) -> Bytes {
        self.sse
            .get_or_init(|| {
                let mut frame = String::with_capacity(self.json.len() + 64);
                let _ = write!(frame, "event: notification\nid: {}\ndata: ", self.id);
                frame.push_str(&self.json);
                frame.push_str("\n\n");
                Bytes::from(frame)
            })
            .clone()
    }

    /// Its WebSocket (and iframe) object: the same payload with a `"type"`.
    fn typed(&self) -> ByteString {
        self.typed
            .get_or_init(|| ByteString::from(splice_type("notification", &self.json)))
            .clone()
    }

    /// Its WebSocket frame. A server's frames are not masked, so every connection
    /// writes the same bytes.
    fn ws_frame(&self) -> Bytes {
        self.ws
            .get_or_init(|| {
                let mut frame = BytesMut::new();
                // Encoding a text message cannot fail (only continuations out of order do).
                let _ = Codec::new().encode(Message::Text(self.typed()), &mut frame);
                frame.freeze()
            })
            .clone()
    }
}

#[derive(Debug, Clone)]
pub enum Event {
    Notification(Arc<Note>),
    Unread(Unread),
    /// A resume could not be served (too much missed): reload the inbox. `latest` is
    /// the newest visible id, where the session goes on from.
    Reset {
        latest: i64,
    },
    /// The token's `exp` passed; the session ends after this.
    TokenExpired,
    /// Nothing to send; the transport keeps the connection alive.
    Heartbeat,
}

impl Event {
    pub fn from_notification(n: &Notification) -> Self {
        Event::Notification(Arc::new(Note::new(
            n.id,
            n.created_at,
            n.expires_at,
            Arc::from(n.to_json()),
        )))
    }

    /// Counts a notification written to a client and its latency since it was created.
    pub fn record_delivery(&self, transport: &'static str) {
        if let Event::Notification(note) = self {
            let latency_ms = u64::try_from(now_ms() - note.created_at).unwrap_or(0);
            delivery_stats::record(transport, latency_ms);
        }
    }

    /// An SSE frame.
    pub fn sse(&self) -> Bytes {
        match self {
            Event::Notification(note) => note.sse(),
            Event::Unread(u) => Bytes::from(format!("event: unread\ndata: {}\n\n", json!(u))),
            // With the id the session went on from: a client reconnecting before the
            // next notification resumes there, not before the gap (another reset).
            Event::Reset { latest } => Bytes::from(format!(
                "event: reset\nid: {latest}\ndata: {{\"reason\":\"gap_too_large\"}}\n\n"
            )),
            Event::TokenExpired => Bytes::from_static(b"event: token_expired\ndata: {}\n\n"),
            Event::Heartbeat => Bytes::from_static(b": ping\n\n"),
        }
    }

    /// A notification's WebSocket frame, encoded once for every connection it reaches;
    /// `None` for the other events, which each connection encodes itself.
    pub fn ws_frame(&self) -> Option<Bytes> {
        match self {
            Event::Notification(note) => Some(note.ws_frame()),
            _ => None,
        }
    }

    /// The WebSocket (and iframe / long-poll) object: the same payload with a `"type"`.
    pub fn typed_json(&self) -> Option<ByteString> {
        Some(match self {
            Event::Notification(note) => note.typed(),
            Event::Unread(u) => {
                json!({"type": "unread", "count": u.count, "by_kind": u.by_kind, "as_of": u.as_of})
                    .to_string()
                    .into()
            }
            Event::Reset { .. } => json!({"type": "reset", "reason": "gap_too_large"})
                .to_string()
                .into(),
            Event::TokenExpired => json!({"type": "token_expired"}).to_string().into(),
            Event::Heartbeat => return None,
        })
    }
}

/// `{"a":1}` → `{"type":"…","a":1}` without parsing.
fn splice_type(kind: &str, object: &str) -> String {
    let rest = object.strip_prefix('{').unwrap_or(object);
    let mut out = String::with_capacity(object.len() + kind.len() + 12);
    out.push_str("{\"type\":\"");
    out.push_str(kind);
    if rest.trim_start().starts_with('}') {
        out.push_str("\"}");
    } else {
        out.push_str("\",");
        out.push_str(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_frames_carry_the_notification_fields_with_a_type() -> anyhow::Result<()> {
        let e = Event::Notification(Arc::new(Note::new(
            3,
            0,
            None,
            Arc::from(r#"{"id":3,"title":"a\nb"}"#),
        )));
        let v: serde_json::Value = serde_json::from_str(&e.typed_json().unwrap_or_default())?;
        assert_eq!(v, json!({"type": "notification", "id": 3, "title": "a\nb"}));
        assert_eq!(splice_type("unread", "{}"), r#"{"type":"unread"}"#);
        assert_eq!(splice_type("unread", "{ }"), r#"{"type":"unread"}"#);
        Ok(())
    }

    #[test]
    fn a_shared_ws_frame_is_what_a_connection_would_encode() -> anyhow::Result<()> {
        let e = Event::Notification(Arc::new(Note::new(
            5,
            0,
            None,
            Arc::from(r#"{"id":5,"title":"ü"}"#),
        )));
        let mut own = BytesMut::new();
        Codec::new().encode(Message::Text(e.typed_json().unwrap_or_default()), &mut own)?;
        assert_eq!(e.ws_frame(), Some(own.freeze()));
        assert_eq!(Event::Heartbeat.ws_frame(), None);
        Ok(())
    }

    #[test]
    fn sse_frames_stay_one_data_line_whatever_the_content() {
        let n = Event::Notification(Arc::new(Note::new(
            9,
            0,
            None,
            Arc::from(json!({"title": "x\r\ny\n\ndata: z"}).to_string()),
        )));
        let frame = String::from_utf8(n.sse().to_vec()).unwrap_or_default();
        assert_eq!(frame.matches('\n').count(), 4, "{frame:?}");
        assert!(!frame.contains('\r'));
        assert!(frame.ends_with("\n\n"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever a notification holds (newlines, `\r`, NUL, "data:" lines, any
        /// Unicode), its SSE frame is exactly one event whose data parses back to it.
        #[test]
        fn an_sse_frame_is_one_event_whatever_the_content(title in ".*", body in "[\\n\\r\\x00 a-z:]*", id in 1i64..i64::MAX) {
            let payload = json!({"id": id, "title": title, "body": body});
            let note = Note::new(id, 0, None, Arc::from(payload.to_string()));
            let frame = String::from_utf8(Event::Notification(Arc::new(note)).sse().to_vec()).unwrap_or_default();
            prop_assert!(frame.ends_with("\n\n"));
            let lines: Vec<&str> = frame.trim_end_matches('\n').split('\n').collect();
            prop_assert_eq!(lines.len(), 3);
            prop_assert_eq!(lines[0], "event: notification");
            prop_assert_eq!(lines[1], format!("id: {id}"));
            prop_assert!(!frame.contains('\r'));
            let data = lines[2].strip_prefix("data: ").unwrap_or_default();
            let back: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
            prop_assert_eq!(back, payload);
        }
    }
}
