//! Domain types parsed once at the edge: user ids, kinds, audiences and the
//! notification as every transport sends it. Handlers, SQL and routing keys only ever
//! see these, never raw strings from a request.

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use std::fmt;

use crate::time::rfc3339;

/// Why a value was refused; the message is shown to API clients as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub &'static str);

/// An opaque user id: 1–128 characters of `[A-Za-z0-9_.:@-]`. It is also the routing
/// key on `reddot.direct`, so this alphabet is what keeps routing keys well formed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || "_.:@-".contains(c);
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !raw.chars().all(valid_char) {
            return Err(Invalid(
                "a user id is 1-128 characters of A-Z a-z 0-9 _ . : @ -",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for UserId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A notification kind: `[a-z0-9_.-]{1,64}`, `notice` when the sender gives none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Kind(String);

impl Kind {
    pub const DEFAULT: &'static str = "notice";

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let valid_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c);
        if raw.is_empty() || raw.len() > 64 || !raw.chars().all(valid_char) {
            return Err(Invalid("kind is 1-64 characters of a-z 0-9 _ . -"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Kind {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

/// Who a notification is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Audience {
    /// The users listed in the request.
    User,
    /// Every user, including users first seen after it was sent.
    All,
}

impl Audience {
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::User => "user",
            Audience::All => "all",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "user" => Some(Audience::User),
            "all" => Some(Audience::All),
            _ => None,
        }
    }
}

/// A notification exactly as every transport and listing shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub id: i64,
    pub kind: String,
    pub title: String,
    pub body: String,
    /// Stored as the JSON text the sender gave; passed through without re-parsing.
    pub data: Box<RawValue>,
    pub sender: Option<String>,
    pub audience: Audience,
    #[serde(serialize_with = "ser_ms")]
    pub created_at: i64,
    #[serde(serialize_with = "ser_opt_ms")]
    pub expires_at: Option<i64>,
}

impl Notification {
    pub fn is_expired_at(&self, now_ms: i64) -> bool {
        self.expires_at.is_some_and(|t| t <= now_ms)
    }

    /// The JSON object every transport sends.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// An inbox entry: the notification plus whether this user has read it.
#[derive(Debug, Clone, Serialize)]
pub struct InboxItem {
    #[serde(flatten)]
    pub notification: Notification,
    pub read: bool,
}

fn ser_ms<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*ms))
}

fn ser_opt_ms<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_str(&rfc3339(*ms)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_follow_the_contract_alphabet() {
        for ok in ["alice", "a", "user_1.x:y@z-w", &"u".repeat(128)] {
            assert!(UserId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "ali/ce", "é", "a#", &"u".repeat(129), "a\0"] {
            assert!(UserId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kinds_are_lowercase_tokens() {
        assert!(Kind::parse("comment.reply-2_x").is_ok());
        for bad in ["", "Comment", "a b", &"k".repeat(65)] {
            assert!(Kind::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn notification_json_matches_the_contract_shape() -> anyhow::Result<()> {
        let n = Notification {
            id: 1042,
            kind: "comment".into(),
            title: "New reply".into(),
            body: "bob replied".into(),
            data: RawValue::from_string(r#"{"post_id":42}"#.into())?,
            sender: Some("bob".into()),
            audience: Audience::User,
            created_at: 1_795_420_800_123,
            expires_at: None,
        };
        let v: serde_json::Value = serde_json::from_str(&n.to_json())?;
        assert_eq!(
            v,
            serde_json::json!({"id": 1042, "kind": "comment", "title": "New reply",
                "body": "bob replied", "data": {"post_id": 42}, "sender": "bob",
                "audience": "user", "created_at": "2026-11-23T08:00:00.123Z", "expires_at": null})
        );
        Ok(())
    }
}
