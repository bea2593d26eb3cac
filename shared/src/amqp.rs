//! RabbitMQ topology and message encoding: exchange and queue names, routing keys,
//! headers, and how a notification becomes one or more AMQP messages. Knows nothing of
//! HTTP or of sessions.
//!
//! A targeted notification is published to `reddot.direct` once per chunk of
//! recipients: the routing key is the first user, the `CC` header (RabbitMQ's
//! sender-selected distribution) lists the others. A node whose queue is bound for
//! several of them still gets one copy; it reads the routing key and `CC` to know whom
//! the copy is for. Broadcasts go to `reddot.broadcast` (fanout) once.

use std::sync::Arc;

use deadpool_lapin::lapin::{
    BasicProperties, Channel, ExchangeKind,
    options::ExchangeDeclareOptions,
    types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString},
};

use crate::domain::{Audience, Notification, UserId};

pub use deadpool_lapin::lapin;

pub const DIRECT_EXCHANGE: &str = "reddot.direct";
pub const BROADCAST_EXCHANGE: &str = "reddot.broadcast";

/// AMQP `type` property of a notification message.
pub const TYPE_NOTIFICATION: &str = "notification";
/// AMQP `type` property of "this user's read state changed" (no body needed).
pub const TYPE_READ_STATE: &str = "read_state";

const HEADER_ID: &str = "x-reddot-id";
const HEADER_CREATED: &str = "x-reddot-created-ms";
const HEADER_EXPIRES: &str = "x-reddot-expires-ms";
const HEADER_CC: &str = "CC";

/// Bytes of user ids per message. The routing key and `CC` header travel in the content
/// header frame, which must fit in one frame (`frame_max`, 128 KiB by default).
const MAX_CC_BYTES: usize = 32 * 1024;

/// The queue of one gateway node for one start: exclusive and auto-delete, suffixed with
/// a boot id so a restarted node never collides with the queue of its previous life.
pub fn node_queue_name(node_id: &str, boot_id: &str) -> String {
    format!("reddot.gw.{node_id}.{boot_id}")
}

/// Declares both exchanges (durable; idempotent).
pub async fn declare_exchanges(channel: &Channel) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            DIRECT_EXCHANGE.into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            BROADCAST_EXCHANGE.into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await
}

/// The connection pool (no automatic recovery: the pool replaces dead connections on
/// the next `get`, and recovering connections would leak when the pool drops them).
pub fn create_pool(url: &str) -> Result<deadpool_lapin::Pool, deadpool_lapin::CreatePoolError> {
    let config = deadpool_lapin::Config {
        url: Some(url.to_owned()),
        pool: Some(deadpool_lapin::PoolConfig::new(4)),
    };
    config.create_pool(
        lapin::ConnectionProperties::default,
        deadpool_lapin::Runtime::Tokio1,
    )
}

/// One message ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: &'static str,
    pub routing_key: String,
    pub payload: Vec<u8>,
    pub properties: BasicProperties,
}

/// Encodes a notification for its recipients (`users` is ignored for a broadcast).
pub fn encode_notification(n: &Notification, users: &[String]) -> Vec<Outgoing> {
    let payload = n.to_json().into_bytes();
    let mut base = FieldTable::default();
    base.insert(HEADER_ID.into(), AMQPValue::LongLongInt(n.id));
    base.insert(HEADER_CREATED.into(), AMQPValue::LongLongInt(n.created_at));
    if let Some(exp) = n.expires_at {
        base.insert(HEADER_EXPIRES.into(), AMQPValue::LongLongInt(exp));
    }
    let properties = |headers: FieldTable| {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_type(TYPE_NOTIFICATION.into())
            .with_message_id(n.id.to_string().as_str().into())
            .with_timestamp(u64::try_from(n.created_at / 1000).unwrap_or_default())
            .with_headers(headers)
    };
    if n.audience == Audience::All {
        return vec![Outgoing {
            exchange: BROADCAST_EXCHANGE,
            routing_key: String::new(),
            payload,
            properties: properties(base),
        }];
    }
    let mut out = Vec::new();
    let mut rest = users;
    while let Some((first, tail)) = rest.split_first() {
        let mut bytes = first.len();
        let take = tail
            .iter()
            .take_while(|u| {
                bytes += u.len() + 8;
                bytes <= MAX_CC_BYTES
            })
            .count();
        let (cc, next) = tail.split_at(take);
        let mut headers = base.clone();
        if !cc.is_empty() {
            let list: Vec<AMQPValue> = cc
                .iter()
                .map(|u| AMQPValue::LongString(LongString::from(u.as_str())))
                .collect();
            headers.insert(
                HEADER_CC.into(),
                AMQPValue::FieldArray(FieldArray::from(list)),
            );
        }
        out.push(Outgoing {
            exchange: DIRECT_EXCHANGE,
            routing_key: first.clone(),
            payload: payload.clone(),
            properties: properties(headers),
        });
        rest = next;
    }
    out
}

/// A "read state changed" event for one user: every node with sessions of that user
/// recomputes the unread count and pushes it.
pub fn encode_read_state(user: &UserId) -> Outgoing {
    Outgoing {
        exchange: DIRECT_EXCHANGE,
        routing_key: user.as_str().to_owned(),
        payload: Vec::new(),
        properties: BasicProperties::default().with_type(TYPE_READ_STATE.into()),
    }
}

/// What a gateway node received.
#[derive(Debug, Clone)]
pub enum Incoming {
    Notification(Arc<Delivered>),
    ReadState { user: String },
}

/// A notification as delivered to a node: its JSON, kept as received, and what the hub
/// needs to route it without parsing the JSON.
#[derive(Debug)]
pub struct Delivered {
    pub id: i64,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub audience: Audience,
    /// For targeted notifications: whom this copy is for (routing key + `CC`).
    pub users: Vec<String>,
    pub json: Arc<str>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message without a known type")]
    UnknownType,
    #[error("notification without {0}")]
    Missing(&'static str),
    #[error("notification body is not UTF-8")]
    NotUtf8,
}

/// Decodes a delivery from the node queue.
pub fn decode(
    exchange: &str,
    routing_key: &str,
    properties: &BasicProperties,
    body: &[u8],
) -> Result<Incoming, DecodeError> {
    let kind = properties.kind().as_ref().map(ShortString::as_str);
    match kind {
        Some(TYPE_READ_STATE) => Ok(Incoming::ReadState {
            user: routing_key.to_owned(),
        }),
        Some(TYPE_NOTIFICATION) => {
            let headers = properties
                .headers()
                .as_ref()
                .ok_or(DecodeError::Missing("headers"))?;
            let int = |name: &str| match headers.inner().get(name) {
                Some(AMQPValue::LongLongInt(v)) => Some(*v),
                _ => None,
            };
            let id = int(HEADER_ID).ok_or(DecodeError::Missing(HEADER_ID))?;
            let created_at = int(HEADER_CREATED).ok_or(DecodeError::Missing(HEADER_CREATED))?;
            let audience = if exchange == BROADCAST_EXCHANGE {
                Audience::All
            } else {
                Audience::User
            };
            let mut users = Vec::new();
            if audience == Audience::User {
                users.push(routing_key.to_owned());
                if let Some(AMQPValue::FieldArray(cc)) = headers.inner().get(HEADER_CC) {
                    users.extend(cc.as_slice().iter().filter_map(|v| match v {
                        AMQPValue::LongString(s) => Some(s.to_string()),
                        _ => None,
                    }));
                }
            }
            let json = std::str::from_utf8(body).map_err(|_| DecodeError::NotUtf8)?;
            Ok(Incoming::Notification(Arc::new(Delivered {
                id,
                created_at,
                expires_at: int(HEADER_EXPIRES),
                audience,
                users,
                json: Arc::from(json),
            })))
        }
        _ => Err(DecodeError::UnknownType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn notification(audience: Audience) -> anyhow::Result<Notification> {
        Ok(Notification {
            id: 7,
            kind: "notice".into(),
            title: "t".into(),
            body: String::new(),
            data: RawValue::from_string("{}".into())?,
            sender: None,
            audience,
            created_at: 1000,
            expires_at: Some(5000),
        })
    }

    #[test]
    fn targeted_messages_cover_every_recipient_once_across_chunks() -> anyhow::Result<()> {
        let users: Vec<String> = (0..3000)
            .map(|i| format!("user-with-a-longish-id-{i:05}"))
            .collect();
        let msgs = encode_notification(&notification(Audience::User)?, &users);
        assert!(msgs.len() > 1, "3000 long ids need more than one message");
        let mut seen = Vec::new();
        for m in &msgs {
            assert_eq!(m.exchange, DIRECT_EXCHANGE);
            match decode(m.exchange, &m.routing_key, &m.properties, &m.payload)? {
                Incoming::Notification(d) => {
                    assert_eq!((d.id, d.created_at, d.expires_at), (7, 1000, Some(5000)));
                    seen.extend(d.users.iter().cloned());
                }
                other => anyhow::bail!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, users);
        Ok(())
    }

    #[test]
    fn a_broadcast_is_one_message_on_the_fanout_exchange() -> anyhow::Result<()> {
        let msgs = encode_notification(&notification(Audience::All)?, &[]);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].exchange, BROADCAST_EXCHANGE);
        let Incoming::Notification(d) = decode(
            BROADCAST_EXCHANGE,
            "",
            &msgs[0].properties,
            &msgs[0].payload,
        )?
        else {
            anyhow::bail!("not a notification");
        };
        assert_eq!(d.audience, Audience::All);
        assert!(d.users.is_empty());
        Ok(())
    }
}
