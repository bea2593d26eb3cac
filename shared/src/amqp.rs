//! RabbitMQ topology and message encoding: exchange and queue names, routing keys,
//! headers, and how a notification becomes one or more AMQP messages. Knows nothing of
//! HTTP or of sessions.
//!
//! A targeted notification is published to `reddot.direct` once per chunk of
//! recipients: the routing key is the first user, the `CC` header (RabbitMQ's
//! sender-selected distribution) lists the others. A node whose queue is bound for
//! several of them still gets one copy; it reads the routing key and `CC` to know whom
//! the copy is for. Broadcasts go to `reddot.broadcast` (fanout) once.
//!
//! MQTT clients (RabbitMQ's MQTT plugin) consume from `amq.topic`. Broadcasts reach it
//! through an exchange-to-exchange binding from `reddot.broadcast`, with the routing key
//! `reddot.broadcast` (a fanout ignores it; `amq.topic` routes on it). A targeted
//! notification is also published to `amq.topic` once per recipient, with the key
//! `reddot.users.<user id>`: the plugin turns a delivery's routing key into the MQTT
//! topic, so a `CC` list would show every recipient the first one's topic.

use std::sync::Arc;

use deadpool_lapin::lapin::{
    BasicProperties, Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, ExchangeUnbindOptions},
    types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString},
    uri::AMQPUri,
};

use crate::domain::{Audience, Notification, UserId};

pub use deadpool_lapin::lapin;

pub const DIRECT_EXCHANGE: &str = "reddot.direct";
pub const BROADCAST_EXCHANGE: &str = "reddot.broadcast";
/// The exchange RabbitMQ's MQTT plugin binds its subscribers' queues to (its default
/// `mqtt.exchange`).
pub const MQTT_EXCHANGE: &str = "amq.topic";
/// Routing key of every broadcast: MQTT topic `reddot/broadcast`.
pub const BROADCAST_ROUTING_KEY: &str = "reddot.broadcast";
/// MQTT topic of broadcasts.
pub const MQTT_BROADCAST_TOPIC: &str = "reddot/broadcast";
/// How long an MQTT copy may wait in the broker for its subscriber (see [`encode_mqtt`]).
pub const MQTT_COPY_TTL_MS: i64 = 60_000;
const MQTT_USER_KEY_PREFIX: &str = "reddot.users.";

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

/// Removes the exchange-to-exchange binding that carried broadcasts into
/// [`MQTT_EXCHANGE`] before broadcasts got MQTT copies of their own (see [`encode_mqtt`]);
/// idempotent. Left in place, MQTT subscribers would get every broadcast twice.
pub async fn remove_old_mqtt_route(channel: &Channel) -> Result<(), lapin::Error> {
    channel
        .exchange_unbind(
            MQTT_EXCHANGE.into(),
            BROADCAST_EXCHANGE.into(),
            "".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// The MQTT topic a user subscribes to: `reddot/users/<user id>`, the id verbatim.
pub fn mqtt_user_topic(user: &str) -> String {
    format!("reddot/users/{user}")
}

/// The `amq.topic` routing key that reaches subscribers of [`mqtt_user_topic`].
///
/// RabbitMQ's MQTT plugin turns a topic into a routing key by replacing `/` with `.`
/// and keeps a `.` inside a level as it is (verified on 3.10; the same translation is in
/// 3.13's source), so `reddot/users/a.b` subscribes to `reddot.users.a.b`: the key is
/// the id verbatim. User ids contain neither `/` nor the wildcards `*` `#` `+`, so each
/// id has its own key and no key of one user matches another's subscription. The other
/// way round the plugin replaces every `.` with `/`: a delivery to `a.b` carries the
/// MQTT topic `reddot/users/a/b`.
pub fn mqtt_user_routing_key(user: &str) -> String {
    format!("{MQTT_USER_KEY_PREFIX}{user}")
}

/// The vhost an AMQP URL connects to, parsed as lapin parses it (`%2f` is `/`).
pub fn vhost_of(url: &str) -> Result<String, String> {
    url.parse::<AMQPUri>().map(|uri| uri.vhost)
}

/// The AMQP heartbeat asked for when the URL names none (seconds). RabbitMQ proposes
/// 60 and lapin gives up after two silent intervals: a connection that stalls without
/// an error (a half-open TCP connection, a hung proxy) held delivery for two minutes
/// while everything looked connected. With 10 it is noticed within 20 s.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// How long opening a connection (TCP, TLS, the AMQP handshake) may take: before the
/// handshake there are no heartbeats, and an endpoint that accepts and never answers
/// held a connection attempt forever.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `url` with `heartbeat=` [`DEFAULT_HEARTBEAT_SECS`] added unless it sets one.
pub fn with_default_heartbeat(url: &str) -> String {
    match url.parse::<AMQPUri>() {
        Ok(uri) if uri.query.heartbeat.is_none() => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}heartbeat={DEFAULT_HEARTBEAT_SECS}")
        }
        _ => url.to_owned(),
    }
}

/// The connection pool (no automatic recovery: the pool replaces dead connections on
/// the next `get`, and recovering connections would leak when the pool drops them).
pub fn create_pool(url: &str) -> Result<deadpool_lapin::Pool, deadpool_lapin::CreatePoolError> {
    let config = deadpool_lapin::Config {
        url: Some(with_default_heartbeat(url)),
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
    let base = base_headers(n);
    let properties = |headers: FieldTable| notification_properties(n, headers);
    if n.audience == Audience::All {
        return vec![Outgoing {
            exchange: BROADCAST_EXCHANGE,
            routing_key: BROADCAST_ROUTING_KEY.to_owned(),
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

/// The copies of a notification for MQTT subscribers, to [`MQTT_EXCHANGE`] with the
/// same payload as the gateways' message: one per recipient ([`mqtt_user_routing_key`]),
/// or one for a broadcast ([`BROADCAST_ROUTING_KEY`]). None once it has expired.
///
/// One message per recipient, not one per `CC` chunk: the plugin hands every MQTT
/// subscriber the delivery's routing key as the topic, so with `CC` each recipient would
/// learn the first recipient's user id and get a topic it never subscribed to.
///
/// Each copy expires in the broker at the notification's `expires_at`, and after
/// [`MQTT_COPY_TTL_MS`] at the latest: a persistent MQTT session (`clean_session=false`)
/// keeps a queue while its client is away, and would otherwise hand it expired and
/// deleted notifications on its return, and grow for as long as the broker keeps it.
pub fn encode_mqtt(n: &Notification, users: &[String], now_ms: i64) -> Vec<Outgoing> {
    let ttl_ms = n
        .expires_at
        .map_or(MQTT_COPY_TTL_MS, |at| (at - now_ms).min(MQTT_COPY_TTL_MS));
    if ttl_ms <= 0 {
        return Vec::new();
    }
    let payload = n.to_json().into_bytes();
    let properties = notification_properties(n, base_headers(n))
        .with_expiration(ttl_ms.to_string().as_str().into());
    if n.audience == Audience::All {
        return vec![Outgoing {
            exchange: MQTT_EXCHANGE,
            routing_key: BROADCAST_ROUTING_KEY.to_owned(),
            payload,
            properties,
        }];
    }
    users
        .iter()
        .map(|user| Outgoing {
            exchange: MQTT_EXCHANGE,
            routing_key: mqtt_user_routing_key(user),
            payload: payload.clone(),
            properties: properties.clone(),
        })
        .collect()
}

/// Headers every copy of a notification carries, so a node routes it unparsed.
fn base_headers(n: &Notification) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(HEADER_ID.into(), AMQPValue::LongLongInt(n.id));
    headers.insert(HEADER_CREATED.into(), AMQPValue::LongLongInt(n.created_at));
    if let Some(exp) = n.expires_at {
        headers.insert(HEADER_EXPIRES.into(), AMQPValue::LongLongInt(exp));
    }
    headers
}

/// Persistent (`delivery_mode` 2; MQTT subscribers get it at QoS 1 when they asked for 1).
fn notification_properties(n: &Notification, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_type(TYPE_NOTIFICATION.into())
        .with_message_id(n.id.to_string().as_str().into())
        .with_timestamp(u64::try_from(n.created_at / 1000).unwrap_or_default())
        .with_headers(headers)
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

    /// RabbitMQ's MQTT plugin translating a topic (filter) into a routing (binding) key,
    /// as `rabbit_mqtt_util:to_amqp/1` does in 3.10 and 3.13.
    fn plugin_topic_to_key(topic: &str) -> String {
        topic.replace('/', ".").replace('+', "*")
    }

    /// The plugin translating a delivery's routing key into the MQTT topic (`to_mqtt/1`).
    fn plugin_key_to_topic(key: &str) -> String {
        key.replace('*', "+").replace('.', "/")
    }

    #[test]
    fn a_users_mqtt_topic_subscribes_exactly_to_her_routing_key() {
        let users = [
            "alice",
            "a.b",
            "org:carol",
            "x@example.com",
            "_-.:@",
            "a..b.",
        ];
        for user in users {
            assert_eq!(
                plugin_topic_to_key(&mqtt_user_topic(user)),
                mqtt_user_routing_key(user),
                "{user}"
            );
            assert_ne!(mqtt_user_routing_key(user), BROADCAST_ROUTING_KEY);
            // The ids are valid, so their keys carry no wildcard of either protocol.
            assert!(!mqtt_user_routing_key(user).contains(['*', '#', '+', '/']));
        }
        assert_eq!(
            plugin_topic_to_key(MQTT_BROADCAST_TOPIC),
            BROADCAST_ROUTING_KEY
        );
        // What a subscriber of `reddot/users/a.b` sees as the topic of a delivery.
        assert_eq!(
            plugin_key_to_topic(&mqtt_user_routing_key("a.b")),
            "reddot/users/a/b"
        );
        assert_eq!(
            plugin_key_to_topic(&mqtt_user_routing_key("alice")),
            mqtt_user_topic("alice")
        );
    }

    #[test]
    fn mqtt_gets_one_copy_per_recipient_with_the_gateways_payload() -> anyhow::Result<()> {
        let n = notification(Audience::User)?;
        let users: Vec<String> = ["alice", "a.b", "bob"].map(String::from).to_vec();
        let copies = encode_mqtt(&n, &users, 1000);
        let keys: Vec<&str> = copies.iter().map(|m| m.routing_key.as_str()).collect();
        assert_eq!(
            keys,
            ["reddot.users.alice", "reddot.users.a.b", "reddot.users.bob"]
        );
        let gateway = &encode_notification(&n, &users)[0];
        for copy in &copies {
            assert_eq!(copy.exchange, MQTT_EXCHANGE);
            assert_eq!(copy.payload, gateway.payload);
            assert_eq!(copy.properties.delivery_mode(), &Some(2));
            // Until the notification's expiry (5000, posted at 1000), at most a minute.
            assert_eq!(
                copy.properties.expiration().as_ref().map(|e| e.as_str()),
                Some("4000")
            );
            let headers = copy.properties.headers().clone().unwrap_or_default();
            assert!(
                !headers.inner().contains_key(HEADER_CC),
                "no recipient list"
            );
        }
        assert!(
            encode_mqtt(&n, &users, 5000).is_empty(),
            "expired: no copies"
        );

        let mut lasting = notification(Audience::All)?;
        lasting.expires_at = None;
        let broadcast = encode_mqtt(&lasting, &[], 1000);
        assert_eq!(broadcast.len(), 1);
        assert_eq!(broadcast[0].exchange, MQTT_EXCHANGE);
        assert_eq!(broadcast[0].routing_key, BROADCAST_ROUTING_KEY);
        assert_eq!(
            broadcast[0]
                .properties
                .expiration()
                .as_ref()
                .map(|e| e.as_str()),
            Some("60000")
        );
        Ok(())
    }

    #[test]
    fn the_vhost_is_read_from_the_amqp_url() -> anyhow::Result<()> {
        let vhost = |url: &str| vhost_of(url).map_err(anyhow::Error::msg);
        assert_eq!(vhost("amqp://guest:guest@127.0.0.1:5672/%2f")?, "/");
        assert_eq!(vhost("amqp://guest:guest@127.0.0.1:5672")?, "/");
        assert_eq!(vhost("amqp://u:p@rabbit/reddot-test-1")?, "reddot-test-1");
        assert!(vhost("not a url").is_err());
        Ok(())
    }

    #[test]
    fn a_heartbeat_is_asked_for_unless_the_url_sets_one() -> anyhow::Result<()> {
        let heartbeat = |url: &str| -> anyhow::Result<Option<u16>> {
            let uri = with_default_heartbeat(url)
                .parse::<AMQPUri>()
                .map_err(anyhow::Error::msg)?;
            Ok(uri.query.heartbeat)
        };
        assert_eq!(
            heartbeat("amqp://g:g@h:5672/%2f")?,
            Some(DEFAULT_HEARTBEAT_SECS)
        );
        assert_eq!(
            heartbeat("amqp://g:g@h/v?frame_max=8192")?,
            Some(DEFAULT_HEARTBEAT_SECS)
        );
        assert_eq!(heartbeat("amqp://g:g@h/v?heartbeat=30")?, Some(30));
        assert_eq!(heartbeat("amqp://g:g@h/v?heartbeat=0")?, Some(0));
        assert_eq!(with_default_heartbeat("not a url"), "not a url");
        Ok(())
    }

    #[test]
    fn a_broadcast_is_one_message_on_the_fanout_exchange() -> anyhow::Result<()> {
        let msgs = encode_notification(&notification(Audience::All)?, &[]);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].exchange, BROADCAST_EXCHANGE);
        assert_eq!(msgs[0].routing_key, BROADCAST_ROUTING_KEY);
        let Incoming::Notification(d) = decode(
            BROADCAST_EXCHANGE,
            &msgs[0].routing_key,
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
