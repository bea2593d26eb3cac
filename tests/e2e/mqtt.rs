//! MQTT through RabbitMQ's MQTT plugin, with a real MQTT client (rumqttc): a user logs
//! in with her user id and a gateway JWT (checked by the gateway's HTTP auth backend),
//! reads `reddot/users/<her id>` and `reddot/broadcast`, and can do nothing else.
//!
//! The broker asks one fixed address for auth decisions and maps its MQTT ports to one
//! vhost at a time, so these tests run one at a time: the nextest group `mqtt`
//! (`.config/nextest.toml`) in separate processes, and [`SERIAL`] within one process
//! (`cargo test`).

use std::time::Duration;

use reddot_shared::amqp;
use reddot_tests::{
    Backend, Env, MQTT_AUTH_ADDR, MQTT_PORT, MqttVhost, Stack,
    clients::{Connect, Events},
    gateway::{Gateway, now_secs, sign, token_expiring_in},
};
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode,
};
use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard, mpsc};

use crate::helpers::stack_with;

const DELIVERY: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(800);

static SERIAL: Mutex<()> = Mutex::const_new(());

/// A stack whose gateway answers the broker's auth requests, with MQTT logins routed
/// to the stack's vhost.
struct MqttStack {
    _route: MqttVhost,
    gateway: Gateway,
    stack: Stack,
    /// Dropped last: the next test starts once this one's gateway is gone.
    _serial: MutexGuard<'static, ()>,
}

impl MqttStack {
    async fn start() -> anyhow::Result<Self> {
        Self::start_with(Stack::start(Backend::Sqlite).await?).await
    }

    async fn start_with(stack: Stack) -> anyhow::Result<Self> {
        let serial = SERIAL.lock().await;
        let gateway = auth_gateway(stack.env()).await?;
        let route = MqttVhost::route_to(&stack.vhost).await?;
        Ok(Self {
            _route: route,
            gateway,
            stack,
            _serial: serial,
        })
    }

    /// `GET /v1/notifications` as `user`: the inbox items, newest first.
    async fn inbox(&self, user: &str) -> anyhow::Result<Vec<Value>> {
        let token = self.stack.token(user).await?;
        let page: Value = self
            .stack
            .http
            .get(self.gateway.url("/v1/notifications"))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(page["items"].as_array().cloned().unwrap_or_default())
    }
}

/// A gateway on the auth backend's fixed address. The previous test's gateway may hold
/// the port for a moment after it was killed: retry the bind briefly.
async fn auth_gateway(env: Env) -> anyhow::Result<Gateway> {
    let env = env.with("REDDOT_GATEWAY_ADDR", MQTT_AUTH_ADDR);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match Gateway::start_with("mqtt-auth", env.clone()).await {
            Ok(gateway) => return Ok(gateway),
            Err(err)
                if format!("{err:#}").contains("in use")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// One MQTT 3.1.1 connection (a clean session unless asked otherwise). Its event loop
/// runs in a task that forwards every incoming packet, and the error that ends the
/// connection.
struct Mqtt {
    client: AsyncClient,
    packets: mpsc::UnboundedReceiver<Result<Packet, String>>,
}

impl Mqtt {
    /// Connects as `username` with `password`; `Ok(Err(why))` when the broker refuses.
    async fn connect(
        client_id: &str,
        credentials: Option<(&str, &str)>,
    ) -> anyhow::Result<Result<Self, String>> {
        Self::connect_session(client_id, credentials, true).await
    }

    /// [`Mqtt::connect`] with `clean_session` chosen: `false` asks the broker to keep
    /// the subscriptions, and what arrives for them, while the client is away.
    async fn connect_session(
        client_id: &str,
        credentials: Option<(&str, &str)>,
        clean_session: bool,
    ) -> anyhow::Result<Result<Self, String>> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", MQTT_PORT);
        options
            .set_clean_session(clean_session)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(256 * 1024, 256 * 1024);
        if let Some((username, password)) = credentials {
            options.set_credentials(username, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let (tx, mut packets) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let item = match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => Ok(packet),
                    Ok(Event::Outgoing(_)) => continue,
                    Err(err) => Err(describe(&err)),
                };
                let end = item.is_err();
                if tx.send(item).is_err() || end {
                    break;
                }
            }
        });
        let first = tokio::time::timeout(DELIVERY, packets.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no CONNACK within {DELIVERY:?}"))?
            .ok_or_else(|| anyhow::anyhow!("event loop gone"))?;
        Ok(match first {
            Ok(Packet::ConnAck(_)) => Ok(Self { client, packets }),
            Ok(other) => anyhow::bail!("expected CONNACK, got {other:?}"),
            Err(why) => Err(why),
        })
    }

    /// Connects as `user` with a token minted by the producer and a client id of its
    /// own, `<user>/<random>` (a second connection with the same id would take over the
    /// first); fails if the broker refuses.
    async fn login(stack: &Stack, user: &str) -> anyhow::Result<Self> {
        let token = stack.token(user).await?;
        let client_id = format!("{user}/{}", uuid::Uuid::new_v4().simple());
        Self::connect(&client_id, Some((user, &token)))
            .await?
            .map_err(|why| anyhow::anyhow!("{user} could not log in: {why}"))
    }

    /// Subscribes at QoS 1: `Ok(Err(why))` for a SUBACK failure or a closed connection.
    async fn subscribe(&mut self, topic: &str) -> anyhow::Result<Result<(), String>> {
        self.client.subscribe(topic, QoS::AtLeastOnce).await?;
        loop {
            match self.next_packet().await? {
                Ok(Packet::SubAck(ack)) => {
                    return Ok(match ack.return_codes.as_slice() {
                        [SubscribeReasonCode::Success(_)] => Ok(()),
                        codes => Err(format!("SUBACK {codes:?}")),
                    });
                }
                Ok(_) => continue,
                Err(why) => return Ok(Err(why)),
            }
        }
    }

    /// The next PUBLISH; fails on a closed connection or at the deadline.
    async fn next_publish(&mut self) -> anyhow::Result<Publish> {
        loop {
            match self.next_packet().await? {
                Ok(Packet::Publish(publish)) => return Ok(publish),
                Ok(_) => continue,
                Err(why) => anyhow::bail!("connection closed: {why}"),
            }
        }
    }

    /// Fails if a PUBLISH arrives within `QUIET`.
    async fn expect_no_publish(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + QUIET;
        while let Ok(item) = tokio::time::timeout_at(deadline, self.packets.recv()).await {
            match item {
                Some(Ok(Packet::Publish(p))) => {
                    anyhow::bail!("unexpected PUBLISH on {}: {:?}", p.topic, p.payload)
                }
                Some(Ok(_)) => {}
                Some(Err(why)) => anyhow::bail!("connection closed: {why}"),
                None => anyhow::bail!("event loop gone"),
            }
        }
        Ok(())
    }

    /// Whether the broker closes the connection within `DELIVERY` (ignoring packets).
    async fn closed(&mut self) -> anyhow::Result<String> {
        loop {
            if let Err(why) = self.next_packet().await? {
                return Ok(why);
            }
        }
    }

    async fn next_packet(&mut self) -> anyhow::Result<Result<Packet, String>> {
        tokio::time::timeout(DELIVERY, self.packets.recv())
            .await
            .map_err(|_| anyhow::anyhow!("nothing from the broker within {DELIVERY:?}"))?
            .ok_or_else(|| anyhow::anyhow!("event loop gone"))
    }
}

fn describe(err: &ConnectionError) -> String {
    match err {
        ConnectionError::ConnectionRefused(code) => format!("refused: {code:?}"),
        other => other.to_string(),
    }
}

fn json_of(publish: &Publish) -> anyhow::Result<Value> {
    Ok(serde_json::from_slice(&publish.payload)?)
}

/// An inbox item without its `"read"`: the notification JSON every transport carries.
fn without_read(mut item: Value) -> Value {
    if let Some(map) = item.as_object_mut() {
        map.remove("read");
    }
    item
}

#[tokio::test]
async fn a_subscriber_gets_her_notifications_and_broadcasts_as_notification_json()
-> anyhow::Result<()> {
    let t = MqttStack::start().await?;
    let mut alice = Mqtt::login(&t.stack, "alice").await?;
    alice
        .subscribe("reddot/users/alice")
        .await?
        .map_err(anyhow::Error::msg)?;
    alice
        .subscribe(amqp::MQTT_BROADCAST_TOPIC)
        .await?
        .map_err(anyhow::Error::msg)?;

    let for_bob_and_alice = t
        .stack
        .notify(
            &json!({"to": {"users": ["bob", "alice"]}, "kind": "comment",
            "title": "New reply", "body": "bob replied", "data": {"post_id": 42}, "sender": "bob"}),
        )
        .await?;
    t.stack
        .notify(&json!({"to": {"users": ["bob"]}, "title": "only bob"}))
        .await?;
    let broadcast = t
        .stack
        .notify(&json!({"to": {"all": true}, "title": "Maintenance"}))
        .await?;

    let first = alice.next_publish().await?;
    let second = alice.next_publish().await?;
    // Her own topic, never the first recipient's: nobody learns who else got it.
    assert_eq!(first.topic, "reddot/users/alice");
    assert_eq!(first.qos, QoS::AtLeastOnce);
    assert_eq!(second.topic, "reddot/broadcast");
    let inbox = t.inbox("alice").await?;
    let listed = |id: i64| {
        inbox
            .iter()
            .find(|n| n["id"] == id)
            .cloned()
            .map(without_read)
    };
    assert_eq!(Some(json_of(&first)?), listed(for_bob_and_alice));
    assert_eq!(Some(json_of(&second)?), listed(broadcast));
    assert_eq!(json_of(&first)?["data"]["post_id"], 42);
    assert_eq!(json_of(&second)?["audience"], "all");
    alice.expect_no_publish().await
}

#[tokio::test]
async fn user_ids_with_dots_and_colons_subscribe_to_their_literal_topic() -> anyhow::Result<()> {
    let t = MqttStack::start().await?;
    let mut dotted = Mqtt::login(&t.stack, "a.b").await?;
    dotted
        .subscribe("reddot/users/a.b")
        .await?
        .map_err(anyhow::Error::msg)?;
    let mut colon = Mqtt::login(&t.stack, "org:carol").await?;
    colon
        .subscribe("reddot/users/org:carol")
        .await?
        .map_err(anyhow::Error::msg)?;

    let id = t
        .stack
        .notify(&json!({"to": {"users": ["a.b", "org:carol", "a"]}, "title": "dots"}))
        .await?;

    let got = dotted.next_publish().await?;
    assert_eq!(json_of(&got)?["id"], id);
    // The plugin turns every `.` of the routing key into `/` on the way out.
    assert_eq!(got.topic, "reddot/users/a/b");
    let got = colon.next_publish().await?;
    assert_eq!(json_of(&got)?["id"], id);
    assert_eq!(got.topic, "reddot/users/org:carol");
    dotted.expect_no_publish().await?;
    colon.expect_no_publish().await
}

#[tokio::test]
async fn logins_without_a_valid_token_of_the_user_are_refused_at_connect() -> anyhow::Result<()> {
    let t = MqttStack::start().await?;
    let bobs = t.stack.token("bob").await?;
    let alices = t.stack.token("alice").await?;
    let in_an_hour = now_secs() + 3600;
    // (what is wrong, client id, password) for the username alice.
    let cases = [
        ("bob's token", "alice/1", bobs),
        (
            "expired beyond the leeway",
            "alice/1",
            token_expiring_in("alice", -120),
        ),
        (
            "signed with another secret",
            "alice/1",
            sign(
                "another-secret-0123456789abcdef",
                &json!({"sub": "alice", "exp": in_an_hour}),
            ),
        ),
        ("not a JWT", "alice/1", "not-a-jwt".into()),
        ("a client id of another user", "bob/1", alices.clone()),
        ("a client id neither alice nor alice/…", "alice-2", alices),
    ];
    for (what, client_id, password) in &cases {
        match Mqtt::connect(client_id, Some(("alice", password))).await? {
            Ok(_) => anyhow::bail!("{what}: the broker let the client in"),
            Err(why) => assert!(why.contains("refused"), "{what}: {why}"),
        }
    }
    match Mqtt::connect("alice/1", None).await? {
        Ok(_) => anyhow::bail!("the broker let an anonymous client in"),
        Err(why) => assert!(why.contains("refused"), "anonymous: {why}"),
    }
    // The same broker lets the right token in.
    Mqtt::login(&t.stack, "alice").await?;
    Ok(())
}

#[tokio::test]
async fn subscribing_beyond_her_own_topic_is_refused() -> anyhow::Result<()> {
    let t = MqttStack::start().await?;
    for topic in [
        "reddot/users/bob",
        "reddot/users/#",
        "reddot/users/+",
        "reddot/#",
        "#",
        "reddot/users/alice/#",
        "reddot/users/alice.b",
    ] {
        let mut alice = Mqtt::login(&t.stack, "alice").await?;
        match alice.subscribe(topic).await? {
            Ok(()) => anyhow::bail!("{topic}: the broker granted the subscription"),
            // RabbitMQ 3.10 closes the connection when the binding is refused.
            Err(why) => assert!(!why.is_empty(), "{topic}"),
        }
    }
    // Nothing for bob reached alice through any of these attempts.
    let mut alice = Mqtt::login(&t.stack, "alice").await?;
    alice
        .subscribe("reddot/users/alice")
        .await?
        .map_err(anyhow::Error::msg)?;
    t.stack
        .notify(&json!({"to": {"users": ["bob"]}, "title": "for bob"}))
        .await?;
    alice.expect_no_publish().await
}

#[tokio::test]
async fn clients_cannot_publish() -> anyhow::Result<()> {
    let t = MqttStack::start().await?;
    let mut watcher = Mqtt::login(&t.stack, "alice").await?;
    watcher
        .subscribe("reddot/users/alice")
        .await?
        .map_err(anyhow::Error::msg)?;
    let mut sse = t
        .gateway
        .sse(&Connect::bearer(&t.stack.token("alice").await?))
        .await?;
    sse.expect("unread", DELIVERY).await?;

    for (topic, qos) in [
        ("reddot/users/alice", QoS::AtLeastOnce),
        ("reddot/broadcast", QoS::AtMostOnce),
    ] {
        let forged = json!({"id": 999_999, "title": "forged"}).to_string();
        let mut mallory = Mqtt::login(&t.stack, "alice").await?;
        mallory.client.publish(topic, qos, false, forged).await?;
        let why = mallory.closed().await?;
        assert!(!why.is_empty(), "{topic}");
    }
    watcher.expect_no_publish().await?;
    // The gateways never see MQTT traffic either.
    match sse.next_or_end(QUIET).await {
        Ok(Some(event)) => anyhow::bail!("unexpected {event:?}"),
        _ => Ok(()),
    }
}

#[tokio::test]
async fn nothing_reaches_mqtt_when_the_producer_has_it_switched_off() -> anyhow::Result<()> {
    let stack = stack_with(Backend::Sqlite, |db, vhost| {
        Env::new(&db.url, &vhost.url()).with("REDDOT_MQTT_PUBLISH", "0")
    })
    .await?;
    let t = MqttStack::start_with(stack).await?;
    let mut alice = Mqtt::login(&t.stack, "alice").await?;
    for topic in ["reddot/users/alice", amqp::MQTT_BROADCAST_TOPIC] {
        alice.subscribe(topic).await?.map_err(anyhow::Error::msg)?;
    }
    let mut sse = t
        .gateway
        .sse(&Connect::bearer(&t.stack.token("alice").await?))
        .await?;
    sse.expect("unread", DELIVERY).await?;

    t.stack
        .notify(&json!({"to": {"users": ["alice"]}, "title": "targeted"}))
        .await?;
    let last = t
        .stack
        .notify(&json!({"to": {"all": true}, "title": "broadcast"}))
        .await?;

    // The gateways still get both; MQTT gets neither.
    assert_eq!(sse.ids_until(last, DELIVERY).await?.len(), 2);
    alice.expect_no_publish().await
}

/// A persistent session (`clean_session=false`) keeps a queue in the broker while its
/// client is away; what expired meanwhile must not come out of it on the client's
/// return (it once did, as did deleted ones: the copies now expire in the broker).
#[tokio::test]
async fn a_persistent_session_gets_nothing_that_expired_while_it_was_away() -> anyhow::Result<()> {
    let t = MqttStack::start().await?;
    let token = t.stack.token("carol").await?;
    let client_id = format!("carol/{}", uuid::Uuid::new_v4().simple());
    let connect = || Mqtt::connect_session(&client_id, Some(("carol", &token)), false);
    let mut away = connect().await?.map_err(anyhow::Error::msg)?;
    for topic in ["reddot/users/carol", amqp::MQTT_BROADCAST_TOPIC] {
        away.subscribe(topic).await?.map_err(anyhow::Error::msg)?;
    }
    away.client.disconnect().await?;
    let _ = away.closed().await?;

    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    t.stack
        .notify(&json!({"to": {"users": ["carol"]}, "title": "short-lived", "expires_at": soon}))
        .await?;
    t.stack
        .notify(&json!({"to": {"all": true}, "title": "short-lived broadcast", "expires_at": soon}))
        .await?;
    let lasting = t
        .stack
        .notify(&json!({"to": {"users": ["carol"]}, "title": "lasting"}))
        .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Back with the same session: the one that still counts, and nothing else.
    let mut back = connect().await?.map_err(anyhow::Error::msg)?;
    let delivered = back.next_publish().await?;
    assert_eq!(json_of(&delivered)?["id"], lasting);
    back.expect_no_publish().await
}
