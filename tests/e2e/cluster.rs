//! Reddot as a cluster: one PostgreSQL database and one vhost, two producers and three
//! gateway nodes, all real processes. Backends post through both producers at once;
//! every session gets exactly its user's notifications and the broadcasts, once each, in
//! id order. Then one gateway node and the relay-leading producer are SIGKILLed under
//! load: the killed node's sessions resume on another node and miss nothing, the
//! surviving producer keeps accepting posts and takes over the relay lease.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::future::try_join_all;
use reddot_tests::{
    API_KEY, Backend, Service, ServiceKind, Stack,
    clients::{Client, Connect, Events, Sse, Ws},
    gateway::{Gateway, to_all},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::{sync::Notify, task::JoinHandle, time::Instant};

use crate::helpers::{eventually, leads};

/// Generous: two cores shared with builds and other tests.
const DELIVERY: Duration = Duration::from_secs(30);
/// Users with sessions, and users without any (whose notifications nobody may see).
const ONLINE: [&str; 5] = ["ann", "ben", "cat", "dan", "roamer"];
const OFFLINE: [&str; 2] = ["olga", "otto"];
/// Concurrent backend clients, split over the producers.
const POSTERS: usize = 4;
const POSTS_PER_PHASE: usize = 30;

/// A deterministic, well-mixed number for each (poster, post).
fn mix(poster: usize, post: usize) -> u64 {
    let mut z = ((poster as u64) << 32 | post as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Every eighth post a broadcast, the others to one to three users, online or not.
fn recipients(poster: usize, post: usize) -> Option<Vec<&'static str>> {
    let r = mix(poster, post);
    if r.is_multiple_of(8) {
        return None;
    }
    let everyone: Vec<&str> = ONLINE.iter().chain(&OFFLINE).copied().collect();
    let count = 1 + (r >> 8) % 3;
    let users: BTreeSet<&str> = (0..count)
        .map(|k| everyone[((r >> (16 + 8 * k)) % everyone.len() as u64) as usize])
        .collect();
    Some(users.into_iter().collect())
}

/// An acknowledged notification: its id and its users (`None`: a broadcast).
#[derive(Debug, Clone)]
struct Acked {
    id: i64,
    users: Option<Vec<&'static str>>,
}

impl Acked {
    fn is_for(&self, user: &str) -> bool {
        self.users
            .as_ref()
            .is_none_or(|users| users.contains(&user))
    }
}

/// The backends' side: acknowledged posts, and a signal after each one.
#[derive(Default)]
struct Ledger {
    acked: Mutex<Vec<Acked>>,
    posted: Notify,
}

impl Ledger {
    fn record(&self, acked: Acked) {
        self.acked.lock().unwrap().push(acked);
        self.posted.notify_one();
    }

    fn len(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Ids a session of `user` must get, ascending, up to and including `last`.
    fn expected_for(&self, user: &str, last: i64) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .acked
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.id <= last && a.is_for(user))
            .map(|a| a.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Waits until at least `n` posts are acknowledged.
    async fn await_len(&self, n: usize) -> anyhow::Result<()> {
        tokio::time::timeout(DELIVERY, async {
            while self.len() < n {
                self.posted.notified().await;
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("{n} posts not acknowledged within {DELIVERY:?}"))
    }
}

/// A backend client posting `posts` notifications one after another with an
/// `Idempotency-Key` each, as a real backend does. When its producer is unreachable it
/// retries the same request, same key, on the next one (what a load balancer does), so
/// a request the dying producer committed is answered with its first response rather
/// than created twice.
async fn poster(
    producers: Vec<String>,
    poster: usize,
    posts: std::ops::Range<usize>,
    pause: Duration,
    ledger: Arc<Ledger>,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut current = poster % producers.len();
    for post in posts {
        let users = recipients(poster, post);
        let title = format!("poster {poster} post {post}");
        let body = match &users {
            Some(users) => json!({"to": {"users": users}, "kind": "comment", "title": title}),
            None => json!({"to": {"all": true}, "kind": "announcement", "title": title}),
        };
        let key = format!("cluster-{poster}-{post}");
        let deadline = Instant::now() + DELIVERY;
        let id = loop {
            anyhow::ensure!(Instant::now() < deadline, "{title} was never acknowledged");
            let sent = http
                .post(format!("{}/api/v1/notifications", producers[current]))
                .bearer_auth(API_KEY)
                .header("Idempotency-Key", &key)
                .json(&body)
                .send()
                .await;
            let res = match sent {
                Ok(res) => res,
                Err(_) => {
                    current = (current + 1) % producers.len();
                    continue;
                }
            };
            let status = res.status();
            let json: Value = res.json().await.unwrap_or(Value::Null);
            match status {
                StatusCode::CREATED => {
                    break json["id"]
                        .as_i64()
                        .ok_or_else(|| anyhow::anyhow!("no id in {json}"))?;
                }
                // The same key still in flight elsewhere (the killed producer's request).
                StatusCode::CONFLICT => tokio::time::sleep(Duration::from_millis(100)).await,
                other => anyhow::bail!("{title}: {other} {json}"),
            }
        };
        ledger.record(Acked { id, users });
        tokio::time::sleep(pause).await;
    }
    Ok(())
}

/// Runs [`POSTERS`] backend clients concurrently, alternating between `producers`.
fn post_concurrently(
    producers: &[&Service],
    phase: usize,
    pause: Duration,
    ledger: &Arc<Ledger>,
) -> JoinHandle<anyhow::Result<()>> {
    let urls: Vec<String> = producers.iter().map(|p| p.url("")).collect();
    let posts = phase * POSTS_PER_PHASE..(phase + 1) * POSTS_PER_PHASE;
    let clients: Vec<_> = (0..POSTERS)
        .map(|p| poster(urls.clone(), p, posts.clone(), pause, ledger.clone()))
        .collect();
    tokio::spawn(async move { try_join_all(clients).await.map(drop) })
}

/// One session of a user, read continuously in its own task like a browser tab. When
/// its node goes away it reconnects to the next node that answers (as a load balancer
/// would send it) and resumes after the last notification it got.
struct Session {
    user: &'static str,
    transport: &'static str,
    home: usize,
    ids: Arc<Mutex<Vec<i64>>>,
    resumes: Arc<AtomicUsize>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Session {
    async fn open(
        nodes: &[String],
        home: usize,
        user: &'static str,
        transport: &'static str,
        token: &str,
    ) -> anyhow::Result<Self> {
        let ids = Arc::new(Mutex::new(Vec::new()));
        let resumes = Arc::new(AtomicUsize::new(0));
        // Cursor 0 on a fresh database: everything, however the join races the posts.
        let first = connect(&nodes[home], transport, token, 0).await?;
        let task = tokio::spawn(follow(
            first,
            nodes.to_vec(),
            home,
            transport,
            token.to_owned(),
            ids.clone(),
            resumes.clone(),
        ));
        Ok(Self {
            user,
            transport,
            home,
            ids,
            resumes,
            task,
        })
    }

    fn ids(&self) -> Vec<i64> {
        self.ids.lock().unwrap().clone()
    }

    fn describe(&self) -> String {
        format!(
            "{}'s {} session from node {}",
            self.user, self.transport, self.home
        )
    }
}

/// A session on `node` resuming after `last`: SSE with `Last-Event-ID` (what EventSource
/// sends), WebSocket with `?last_event_id=` (browsers' WebSocket cannot set headers).
async fn connect(node: &str, transport: &str, token: &str, last: i64) -> anyhow::Result<Client> {
    Ok(match transport {
        "sse" => Client::Sse(Box::new(
            Sse::open(node, &Connect::query_token(token).after(last)).await?,
        )),
        _ => Client::Ws(Box::new(
            Ws::open(node, &Connect::query_token(token).after_in_query(last)).await?,
        )),
    })
}

async fn follow(
    mut client: Client,
    nodes: Vec<String>,
    mut node: usize,
    transport: &'static str,
    token: String,
    ids: Arc<Mutex<Vec<i64>>>,
    resumes: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    loop {
        match client.next_or_end(Duration::from_secs(600)).await? {
            Some(event) => match event.kind.as_str() {
                "notification" => ids.lock().unwrap().push(
                    event
                        .notification_id()
                        .ok_or_else(|| anyhow::anyhow!("no id: {event:?}"))?,
                ),
                "unread" => {}
                _ => anyhow::bail!("unexpected {event:?}"),
            },
            None => {
                let last = ids.lock().unwrap().last().copied().unwrap_or(0);
                let deadline = Instant::now() + DELIVERY;
                client = loop {
                    node = (node + 1) % nodes.len();
                    match connect(&nodes[node], transport, &token, last).await {
                        Ok(client) => break client,
                        Err(err) if Instant::now() > deadline => {
                            return Err(err.context("no node took the session back"));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                };
                resumes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Posts a broadcast through `producer` and waits until every session has it; then
/// checks that each got exactly its user's notifications, once each, in id order.
async fn assert_every_session_got_its_own(
    http: &reqwest::Client,
    producer: &Service,
    sessions: &[Session],
    ledger: &Ledger,
    label: &str,
) -> anyhow::Result<()> {
    let (status, json) =
        reddot_tests::stack::send_notification(http, producer, &to_all(label), None).await?;
    anyhow::ensure!(status == StatusCode::CREATED, "{label}: {status} {json}");
    let end = json["id"].as_i64().unwrap_or_default();
    ledger.record(Acked {
        id: end,
        users: None,
    });
    for session in sessions {
        eventually(
            DELIVERY,
            &format!("{} reaches {label}", session.describe()),
            || async {
                if session.task.is_finished() {
                    anyhow::bail!("its task ended");
                }
                Ok(session.ids().contains(&end).then_some(()))
            },
        )
        .await?;
        let got: Vec<i64> = session
            .ids()
            .into_iter()
            .take_while(|id| *id <= end)
            .collect();
        assert_eq!(
            got,
            ledger.expected_for(session.user, end),
            "{} up to {label}",
            session.describe()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_delivers_everything_once_in_order_and_loses_nothing_when_a_gateway_node_and_the_relay_leader_die()
-> anyhow::Result<()> {
    // Arrange: one database and vhost; producers p0, p1; gateway nodes a, b, c.
    let stack = Stack::start(Backend::Postgres).await?;
    let second = Service::start(ServiceKind::Producer, &stack.env()).await?;
    let mut gateways = Vec::new();
    for node in ["node-a", "node-b", "node-c"] {
        gateways.push(Gateway::start(&stack, node).await?);
    }
    let nodes: Vec<String> = gateways.iter().map(Gateway::base).collect();
    // (user, transport, node): the roamer on every node; node c (about to die) carries
    // cat's only sessions, and one of ann's.
    let layout = [
        ("ann", "sse", 0),
        ("ann", "ws", 2),
        ("ben", "ws", 1),
        ("ben", "sse", 1),
        ("cat", "sse", 2),
        ("cat", "ws", 2),
        ("dan", "ws", 0),
        ("roamer", "sse", 0),
        ("roamer", "ws", 1),
        ("roamer", "sse", 2),
        ("roamer", "ws", 2),
    ];
    let mut sessions = Vec::new();
    for user in ONLINE {
        let token = stack.token(user).await?;
        for (_, transport, node) in layout.iter().filter(|(u, ..)| *u == user) {
            sessions.push(Session::open(&nodes, *node, user, transport, &token).await?);
        }
    }
    let ledger = Arc::new(Ledger::default());

    // Act 1: concurrent posts through both producers.
    post_concurrently(&[&stack.producer, &second], 0, Duration::ZERO, &ledger).await??;

    // Assert 1: every session has exactly its own, once, in order.
    assert_every_session_got_its_own(&stack.http, &second, &sessions, &ledger, "phase 1").await?;

    // Act 2: under load, SIGKILL node c and whichever producer leads the relay.
    let leader = eventually(DELIVERY, "a relay leads", || async {
        let first = leads(&stack.http, &stack.producer).await?;
        let other = leads(&stack.http, &second).await?;
        Ok((first != other).then_some(if first { 0 } else { 1 }))
    })
    .await?;
    let mut producers = [stack.producer, second];
    let before = ledger.len();
    let load = post_concurrently(
        &[&producers[0], &producers[1]],
        1,
        Duration::from_millis(20),
        &ledger,
    );
    ledger.await_len(before + POSTS_PER_PHASE).await?;
    gateways[2].kill();
    producers[leader].kill();
    let survivor = &producers[1 - leader];
    let at_kill = ledger.len();
    load.await??;

    // Assert 2: the load went on through the survivor, which took over the relay.
    assert!(
        ledger.len() > at_kill,
        "no post was acknowledged after the kill"
    );
    eventually(
        DELIVERY,
        "the surviving producer leads the relay",
        || async { Ok(leads(&stack.http, survivor).await?.then_some(())) },
    )
    .await?;
    assert_every_session_got_its_own(&stack.http, survivor, &sessions, &ledger, "phase 2").await?;
    for session in &sessions {
        let resumed = session.resumes.load(Ordering::Relaxed);
        let expected = usize::from(session.home == 2);
        assert_eq!(
            resumed,
            expected,
            "{} resumed {resumed} times",
            session.describe()
        );
    }
    for session in &sessions {
        session.task.abort();
    }
    Ok(())
}
