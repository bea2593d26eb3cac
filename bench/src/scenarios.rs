//! The scenarios. Each starts its own deployment (fresh database and vhost), drives it,
//! checks that nothing was lost or duplicated, and reports.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use reddot_tests::{
    Backend, Env, Service, ServiceKind, TestConsumer, TestDb, Vhost, stack::send_notification,
};
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

use crate::{clients, report};

pub struct Opts {
    pub quick: bool,
    pub db: Option<String>,
    /// Concurrent HTTP clients of `produce` and `poll`.
    pub clients: Option<usize>,
}

impl Opts {
    fn backends(&self) -> Vec<Backend> {
        match self.db.as_deref() {
            Some("sqlite") => vec![Backend::Sqlite],
            Some("postgres") => vec![Backend::Postgres],
            _ => vec![Backend::Sqlite, Backend::Postgres],
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        if self.db.as_deref() == Some("postgres") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

pub(crate) struct Deploy {
    backend: Backend,
    db: TestDb,
    vhost: Vhost,
    pub(crate) producer: Service,
    pub(crate) gateway: Option<Service>,
}

pub(crate) async fn deploy(backend: Backend, gateway: bool) -> anyhow::Result<Deploy> {
    deploy_with(backend, gateway, &[]).await
}

/// [`deploy`] with settings of the scenario's own on top.
async fn deploy_with(
    backend: Backend,
    gateway: bool,
    settings: &[(&str, &str)],
) -> anyhow::Result<Deploy> {
    let db = TestDb::new(backend).await?;
    let vhost = Vhost::new().await?;
    let env = Env::new(&db.url, &vhost.url())
        .with(
            "RUST_LOG",
            "warn,reddot_producer::startup=info,reddot_gateway::startup=info",
        )
        .with("REDDOT_MAX_SESSIONS_PER_USER", "100000");
    // Settings worth comparing pass through from the bench's own environment.
    let env = [
        "RUST_LOG",
        "REDDOT_MQTT_PUBLISH",
        "REDDOT_POLL_CACHE_SECS",
        "REDDOT_UNBIND_DELAY_SECS",
    ]
    .into_iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| (k, v)))
    .chain(settings.iter().map(|&(k, v)| (k, v.to_owned())))
    .fold(env, |env, (k, v)| env.with(k, v));
    let producer = Service::start(ServiceKind::Producer, &env).await?;
    let gateway = if gateway {
        Some(Service::start(ServiceKind::Gateway, &env).await?)
    } else {
        None
    };
    Ok(Deploy {
        backend,
        db,
        vhost,
        producer,
        gateway,
    })
}

pub(crate) fn name(b: Backend) -> &'static str {
    match b {
        Backend::Sqlite => "SQLite",
        Backend::Postgres => "PostgreSQL",
    }
}

/// How `produce` loads the producer.
#[derive(Clone, Copy)]
enum Load {
    /// This many clients, each posting as soon as its last post was answered: how many
    /// notifications/s the producer accepts.
    Clients(usize),
    /// Posts at a fixed rate, whatever the answers: the publish lag at that rate. At
    /// full load the lag is the length of the queue in front of the saturated CPU, so
    /// the lag target is checked at the target rate.
    Rate(u32),
}

impl Load {
    /// Posts `body` until `deadline`; the ids of the accepted notifications.
    async fn run(
        self,
        http: &reqwest::Client,
        producer: &Arc<Service>,
        body: &Value,
        deadline: Instant,
    ) -> Vec<i64> {
        let post = |http: reqwest::Client, producer: Arc<Service>, body: Value| async move {
            match send_notification(&http, &producer, &body, None).await {
                Ok((status, v)) if status == 201 => v["id"].as_i64(),
                _ => None,
            }
        };
        match self {
            Load::Clients(clients) => {
                let tasks = (0..clients).map(|_| {
                    let (http, body, producer) = (http.clone(), body.clone(), producer.clone());
                    tokio::spawn(async move {
                        let mut ids = Vec::new();
                        while Instant::now() < deadline {
                            ids.extend(post(http.clone(), producer.clone(), body.clone()).await);
                        }
                        ids
                    })
                });
                join_all(tasks)
                    .await
                    .into_iter()
                    .flat_map(|r| r.unwrap_or_default())
                    .collect()
            }
            Load::Rate(rate) => {
                let mut ticker =
                    tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
                // Answers are collected as they come: joining 50,000 tasks at the end
                // held this runtime for tens of ms, and the publish-lag consumer, which
                // stamps receipts on it, counted that as lag of the last notifications.
                let mut tasks = tokio::task::JoinSet::new();
                let mut ids = Vec::new();
                while Instant::now() < deadline {
                    ticker.tick().await;
                    tasks.spawn(post(http.clone(), producer.clone(), body.clone()));
                    while let Some(done) = tasks.try_join_next() {
                        ids.extend(done.ok().flatten());
                    }
                }
                while let Some(done) = tasks.join_next().await {
                    ids.extend(done.ok().flatten());
                }
                ids
            }
        }
    }

    fn label(self) -> String {
        match self {
            Load::Clients(n) => format!("{n} clients"),
            Load::Rate(r) => format!("{r}/s"),
        }
    }
}

/// Producer throughput: accepted notifications/s with the outbox keeping up, flat out;
/// then the publish lag at the target rate.
pub async fn produce(opts: &Opts) -> anyhow::Result<()> {
    let secs = if opts.quick { 2 } else { 10 };
    let clients = Load::Clients(opts.clients.unwrap_or(32));
    let mut rows = Vec::new();
    let mut results = Vec::new();
    for backend in opts.backends() {
        // The targets: 2,000/s on SQLite, 5,000/s on PostgreSQL; both run both.
        let paced = if opts.quick {
            vec![200]
        } else {
            vec![2_000, 5_000]
        };
        let mut loads = vec![
            ("1 recipient", 1usize, clients),
            ("100 recipients", 100, clients),
            ("broadcast", 0, clients),
        ];
        loads.extend(paced.into_iter().map(|r| ("1 recipient", 1, Load::Rate(r))));
        for (shape, recipients, load) in loads {
            let d = deploy(backend, false).await?;
            let mut consumer = TestConsumer::bind(&d.vhost, &["u0"]).await?;
            let body = if recipients == 0 {
                json!({"to": {"all": true}, "title": "bench"})
            } else {
                json!({"to": {"users": (0..recipients).map(|i| format!("u{i}")).collect::<Vec<_>>()}, "title": "bench"})
            };
            let http = reqwest::Client::new();
            let started = Instant::now();
            let deadline = started + Duration::from_secs(secs);
            let producer = Arc::new(d.producer);
            let ids = load.run(&http, &producer, &body, deadline).await;
            let elapsed = started.elapsed().as_secs_f64();
            let mut lag = report::new_histogram();
            let mut seen = HashMap::new();
            while seen.len() < ids.len() {
                let Ok(r) = consumer.next(Duration::from_secs(30)).await else {
                    break;
                };
                let created = reddot_shared::time::parse_rfc3339(
                    r.json["created_at"].as_str().unwrap_or_default(),
                )
                .unwrap_or_default();
                lag.record(((r.received_at_ms - created).max(0) * 1000) as u64)?;
                *seen.entry(r.id).or_insert(0) += 1;
            }
            let lost = ids.iter().filter(|id| !seen.contains_key(id)).count();
            let dup: usize = seen.values().map(|n| n - 1).sum();
            let rate = ids.len() as f64 / elapsed;
            rows.push(vec![
                name(backend).into(),
                shape.into(),
                load.label(),
                format!("{rate:.0}"),
                format!("{:.1}", report::ms(&lag, 0.5)),
                format!("{:.1}", report::ms(&lag, 0.99)),
                lost.to_string(),
                dup.to_string(),
            ]);
            results.push(json!({"db": name(backend), "shape": shape, "load": load.label(), "accepted_per_s": rate,
                "publish_lag_p50_ms": report::ms(&lag, 0.5), "publish_lag_p99_ms": report::ms(&lag, 0.99), "lost": lost, "duplicated": dup}));
            drop(d.db);
        }
    }
    report::table(
        &format!("produce — {secs} s each"),
        &[
            "database",
            "shape",
            "load",
            "accepted/s",
            "publish lag p50 ms",
            "p99 ms",
            "lost",
            "dup",
        ],
        &rows,
    );
    report::json("produce", Value::Array(results.clone()));
    ensure_clean(&results)
}

pub(crate) fn ensure_clean(results: &[Value]) -> anyhow::Result<()> {
    let bad = results
        .iter()
        .any(|r| r["lost"].as_u64().unwrap_or(0) > 0 || r["duplicated"].as_u64().unwrap_or(0) > 0);
    anyhow::ensure!(!bad, "FAILED: a delivery was lost or duplicated");
    Ok(())
}

/// Opens one SSE session per user u0..u{n}; returns the receiver of all deliveries.
async fn open_sse(
    port: u16,
    n: usize,
) -> anyhow::Result<(mpsc::UnboundedReceiver<clients::Received>, f64)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (_, rate) = open_sse_from(port, n, &HashMap::new(), tx).await?;
    Ok((rx, rate))
}

/// Opens one SSE session per user u0..u{n}, resuming user `i` from `resume[i]` if given;
/// returns the sessions' reader tasks and the connect rate.
pub(crate) async fn open_sse_from(
    port: u16,
    n: usize,
    resume: &HashMap<usize, i64>,
    tx: mpsc::UnboundedSender<clients::Received>,
) -> anyhow::Result<(Vec<tokio::task::JoinHandle<()>>, f64)> {
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let opens = (0..n).map(|i| {
        let (tx, sem) = (tx.clone(), sem.clone());
        let from = resume.get(&i).copied();
        async move {
            let _permit = sem.acquire().await?;
            clients::sse(port, i, &clients::mint(&format!("u{i}"), 3600), from, tx).await
        }
    });
    let handles = join_all(opens)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok((handles, n as f64 / started.elapsed().as_secs_f64()))
}

/// Sends one notification to every user u0..u{n} (1,000 recipients per request); returns
/// the ids with the sessions each is for.
async fn notify_everyone(
    http: &reqwest::Client,
    producer: &Service,
    n: usize,
) -> anyhow::Result<Vec<(i64, std::ops::Range<usize>)>> {
    let chunks: Vec<std::ops::Range<usize>> = (0..n)
        .step_by(1000)
        .map(|start| start..(start + 1000).min(n))
        .collect();
    let posts = chunks.into_iter().map(|range| async move {
        let users: Vec<String> = range.clone().map(|i| format!("u{i}")).collect();
        let (status, v) = send_notification(
            http,
            producer,
            &json!({"to": {"users": users}, "title": "storm"}),
            None,
        )
        .await?;
        anyhow::ensure!(status == 201, "post failed: {v}");
        Ok((v["id"].as_i64().unwrap_or_default(), range))
    });
    join_all(posts).await.into_iter().collect()
}

/// Every session drops at once, misses 10 notifications, and resumes with its last id:
/// how long until all are caught up.
pub async fn storm(opts: &Opts) -> anyhow::Result<()> {
    let (sessions, missed) = if opts.quick { (200, 10) } else { (10_000, 10) };
    let backend = opts.backend();
    let mut rows = Vec::new();
    let mut results = Vec::new();
    // A user's binding outlives her last session by 5 s by default, about as long as the
    // drop here lasts, so which case a run measured was luck. Both, on purpose: bindings
    // kept (a network blip), and every user needing a new one, as on a node that has
    // just started (its users coming over from one that stopped).
    for (bindings, unbind_delay) in [("kept", "60"), ("new", "0")] {
        let settings = [("REDDOT_UNBIND_DELAY_SECS", unbind_delay)];
        let d = deploy_with(backend, true, &settings).await?;
        let (row, result) = storm_once(&d, sessions, missed).await?;
        rows.push([vec![name(backend).into(), bindings.into()], row].concat());
        results.push(result);
    }
    report::table(
        &format!(
            "storm — {sessions} SSE sessions drop at once and resume after missing {missed} each"
        ),
        &[
            "database",
            "bindings",
            "all caught up after s",
            "reconnects/s",
            "replayed",
            "lost",
            "dup",
            "foreign",
        ],
        &rows,
    );
    report::json("storm", Value::Array(results.clone()));
    ensure_clean(&results)
}

/// One storm against `d`: the table row (from its third column) and the JSON result.
async fn storm_once(
    d: &Deploy,
    sessions: usize,
    missed: usize,
) -> anyhow::Result<(Vec<String>, Value)> {
    let port = d.gateway.as_ref().map(|g| g.port).unwrap_or_default();
    let http = reqwest::Client::new();

    // Online, each session has seen one notification: that is where it resumes from.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (handles, _) = open_sse_from(port, sessions, &HashMap::new(), tx).await?;
    let first = notify_everyone(&http, &d.producer, sessions).await?;
    let mut last_seen: HashMap<usize, i64> = HashMap::with_capacity(sessions);
    while last_seen.len() < sessions {
        let Ok(Some((session, id, _))) =
            tokio::time::timeout(Duration::from_secs(10), rx.recv()).await
        else {
            anyhow::bail!(
                "only {} of {sessions} sessions got the first notification",
                last_seen.len()
            );
        };
        last_seen.insert(session, id);
    }
    anyhow::ensure!(
        first
            .iter()
            .all(|(id, r)| r.clone().all(|s| last_seen[&s] == *id)),
        "a session got another user's notification"
    );

    // All drop at once; meanwhile `missed` notifications reach each user's inbox.
    for h in handles {
        h.abort();
    }
    drop(rx);
    let mut expected: HashMap<usize, Vec<i64>> = HashMap::with_capacity(sessions);
    for _ in 0..missed {
        for (id, range) in notify_everyone(&http, &d.producer, sessions).await? {
            for s in range {
                expected.entry(s).or_default().push(id);
            }
        }
    }

    let started = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (handles, connect_rate) = open_sse_from(port, sessions, &last_seen, tx).await?;
    let mut got: HashMap<(usize, i64), u32> = HashMap::with_capacity(sessions * missed);
    let mut caught_up = 0usize;
    let mut per_session: HashMap<usize, usize> = HashMap::with_capacity(sessions);
    let mut last = started;
    while caught_up < sessions {
        let Ok(Some((session, id, at))) =
            tokio::time::timeout(Duration::from_secs(10), rx.recv()).await
        else {
            break;
        };
        let count = got.entry((session, id)).or_default();
        *count += 1;
        if *count == 1 && expected.get(&session).is_some_and(|ids| ids.contains(&id)) {
            let n = per_session.entry(session).or_default();
            *n += 1;
            if *n == missed {
                caught_up += 1;
                last = at;
            }
        }
    }
    let elapsed = last.duration_since(started).as_secs_f64();
    let delivered: usize = per_session.values().sum();
    let lost = sessions * missed - delivered;
    let dup: u32 = got.values().map(|n| n - 1).sum();
    let foreign = got.len() - delivered;
    for h in handles {
        h.abort();
    }
    let row = vec![
        format!("{elapsed:.2}"),
        format!("{connect_rate:.0}"),
        delivered.to_string(),
        lost.to_string(),
        dup.to_string(),
        foreign.to_string(),
    ];
    let result = json!({"db": name(d.backend), "sessions": sessions, "missed": missed,
        "seconds": elapsed, "reconnects_per_s": connect_rate, "lost": lost,
        "duplicated": dup + foreign as u32});
    Ok((row, result))
}

/// A targeted post: its user, when it was sent, and when its 201 came back.
type Posted = (usize, Instant, Instant);

/// End-to-end latency, POST sent → SSE event received, at a fixed rate to random users.
pub async fn latency(opts: &Opts) -> anyhow::Result<()> {
    let (users, rates, secs): (usize, Vec<u32>, u64) = if opts.quick {
        (100, vec![50], 2)
    } else {
        (10_000, vec![200, 1000, 5000], 10)
    };
    let backend = opts.backend();
    let d = deploy(backend, true).await?;
    let port = d.gateway.as_ref().map(|g| g.port).unwrap_or_default();
    let (mut rx, _) = open_sse(port, users).await?;
    let producer = Arc::new(d.producer);
    let http = reqwest::Client::new();
    let mut rows = Vec::new();
    let mut results = Vec::new();
    for rate in rates {
        let sent: Arc<Mutex<HashMap<i64, Posted>>> = Arc::default();
        let total = rate as u64 * secs;
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        // Finished posts are reaped as they come (see `Load::run`): joining them all at
        // the end would hold the runtime the SSE readers stamp receipts on.
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..total {
            ticker.tick().await;
            while tasks.try_join_next().is_some() {}
            let user = rand::random_range(0..users);
            let (http, producer, sent) = (http.clone(), producer.clone(), sent.clone());
            tasks.spawn(async move {
                let t0 = Instant::now();
                let body = json!({"to": {"users": [format!("u{user}")]}, "title": "latency"});
                if let Ok((201, v)) = send_notification(&http, &producer, &body, None)
                    .await
                    .map(|(s, v)| (s.as_u16(), v))
                {
                    let answered = Instant::now();
                    sent.lock()
                        .await
                        .insert(v["id"].as_i64().unwrap_or_default(), (user, t0, answered));
                }
            });
        }
        tasks.join_all().await;
        let sent = sent.lock().await.clone();
        let mut h = report::new_histogram();
        // The end-to-end time split where the producer answers: up to the commit (HTTP,
        // the writer), and from there to the frame (relay, RabbitMQ, gateway, client). A
        // frame may beat its 201 to the client; that counts as 0 after it.
        let (mut accepted, mut after) = (report::new_histogram(), report::new_histogram());
        let mut seen: HashMap<i64, usize> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < sent.len() && Instant::now() < deadline {
            let Ok(Some((session, id, at))) =
                tokio::time::timeout(Duration::from_secs(5), rx.recv()).await
            else {
                break;
            };
            let Some((user, t0, answered)) = sent.get(&id) else {
                continue;
            };
            if *user != session {
                anyhow::bail!("notification {id} for u{user} reached u{session}");
            }
            h.record(at.saturating_duration_since(*t0).as_micros().max(1) as u64)?;
            if !seen.contains_key(&id) {
                accepted
                    .record(answered.saturating_duration_since(*t0).as_micros().max(1) as u64)?;
                after.record(at.saturating_duration_since(*answered).as_micros().max(1) as u64)?;
            }
            *seen.entry(id).or_default() += 1;
        }
        let lost = sent.len() - seen.len();
        let dup: usize = seen.values().map(|n| n - 1).sum();
        rows.push(vec![
            name(backend).into(),
            users.to_string(),
            rate.to_string(),
            format!("{:.1}", report::ms(&h, 0.5)),
            format!("{:.1}", report::ms(&h, 0.99)),
            format!("{:.1}", report::ms(&h, 1.0)),
            format!("{:.1}", report::ms(&accepted, 0.99)),
            format!("{:.1}", report::ms(&after, 0.99)),
            lost.to_string(),
            dup.to_string(),
        ]);
        results.push(json!({"db": name(backend), "users": users, "rate": rate, "p50_ms": report::ms(&h, 0.5),
            "p99_ms": report::ms(&h, 0.99), "max_ms": report::ms(&h, 1.0),
            "to_201_p99_ms": report::ms(&accepted, 0.99), "201_to_frame_p99_ms": report::ms(&after, 0.99),
            "lost": lost, "duplicated": dup}));
    }
    report::table(
        &format!("targeted — POST → SSE event, {secs} s per rate"),
        &[
            "database",
            "online users",
            "notifications/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "to 201 p99 ms",
            "201 → frame p99 ms",
            "lost",
            "dup",
        ],
        &rows,
    );
    report::json("targeted", Value::Array(results.clone()));
    ensure_clean(&results)
}

/// Broadcasts to every online session: as fast as the producer accepts them, then paced
/// (the same sessions), which separates fan-out capacity from queueing delay.
/// How the broadcasts of one `broadcast` round are sent.
#[derive(Clone, Copy)]
enum Pace {
    /// Each as soon as the previous post was accepted (201): the scenario.
    Flat,
    /// At a fixed rate per second.
    Every(u32),
    /// Each once the previous one reached every session: one broadcast's fan-out time,
    /// as load tools that wait for the previous message measure it.
    AfterDelivered,
}

impl Pace {
    fn label(self) -> String {
        match self {
            Pace::Flat => "as fast as accepted".into(),
            Pace::Every(p) => format!("{p}/s"),
            Pace::AfterDelivered => "each after the last reached all".into(),
        }
    }
}

/// Deliveries of one `broadcast` round as they arrive: per (session, broadcast), with
/// latency. Counted in a flat array rather than a map of a million keys: the bench
/// shares the CPUs with the gateway, so its bookkeeping per delivery must stay small.
pub(crate) struct Tally {
    count: usize,
    /// Each broadcast's id, the order it was posted in and when.
    posted: HashMap<i64, (usize, Instant)>,
    /// How often each session got each broadcast: `[session * count + broadcast]`.
    got: Vec<u32>,
    pub(crate) distinct: usize,
    pub(crate) latency: hdrhistogram::Histogram<u64>,
    pub(crate) last: Instant,
}

impl Tally {
    pub(crate) fn new(sessions: usize, count: usize, started: Instant) -> Self {
        Self {
            count,
            posted: HashMap::with_capacity(count),
            got: vec![0; sessions * count],
            distinct: 0,
            latency: report::new_histogram(),
            last: started,
        }
    }

    pub(crate) fn posted(&mut self, id: i64, at: Instant) {
        let n = self.posted.len();
        self.posted.insert(id, (n, at));
    }

    /// Reads deliveries until `want` distinct ones arrived, or none for 10 s.
    pub(crate) async fn receive_until(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<clients::Received>,
        want: usize,
    ) -> anyhow::Result<()> {
        while self.distinct < want {
            // What is already there without a timer each: a flat-out round brings a
            // million deliveries, and a timeout per receive was a timer registered per
            // delivery on the CPUs the gateway shares.
            let next = match rx.try_recv() {
                Ok(received) => Some(received),
                Err(_) => tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .ok()
                    .flatten(),
            };
            let Some((session, id, at)) = next else {
                return Ok(());
            };
            if let Some(&(n, t0)) = self.posted.get(&id) {
                self.latency
                    .record(at.saturating_duration_since(t0).as_micros().max(1) as u64)?;
                let count = &mut self.got[session * self.count + n];
                self.distinct += usize::from(*count == 0);
                *count += 1;
                self.last = at;
            }
        }
        Ok(())
    }

    pub(crate) fn duplicated(&self) -> u32 {
        self.got.iter().map(|n| n.saturating_sub(1)).sum()
    }
}

pub async fn broadcast(opts: &Opts) -> anyhow::Result<()> {
    let (sessions, count) = if opts.quick { (200, 20) } else { (10_000, 100) };
    let backend = opts.backend();
    let d = deploy(backend, true).await?;
    let port = d.gateway.as_ref().map(|g| g.port).unwrap_or_default();
    let (mut rx, _) = open_sse(port, sessions).await?;
    let http = reqwest::Client::new();
    let mut rows = Vec::new();
    let mut results = Vec::new();
    let paces = [
        Pace::Flat,
        Pace::Every(10),
        // 15 broadcasts to 10,000 sessions a second: the target's 150,000 deliveries/s,
        // so this row says whether its p99 holds at that rate.
        Pace::Every(15),
        Pace::Every(20),
        Pace::AfterDelivered,
    ];
    for pace in paces {
        let mut ticker = match pace {
            Pace::Every(p) => Some(tokio::time::interval(Duration::from_secs_f64(
                1.0 / f64::from(p),
            ))),
            _ => None,
        };
        let started = Instant::now();
        let expected = sessions * count;
        let mut tally = Tally::new(sessions, count, started);
        for _ in 0..count {
            if let Some(t) = ticker.as_mut() {
                t.tick().await;
            }
            let t0 = Instant::now();
            let (status, v) = send_notification(
                &http,
                &d.producer,
                &json!({"to": {"all": true}, "title": "broadcast"}),
                None,
            )
            .await?;
            anyhow::ensure!(status == 201, "post failed: {v}");
            tally.posted(v["id"].as_i64().unwrap_or_default(), t0);
            if matches!(pace, Pace::AfterDelivered) {
                tally
                    .receive_until(&mut rx, tally.posted.len() * sessions)
                    .await?;
            }
        }
        let posted = started.elapsed().as_secs_f64();
        tally.receive_until(&mut rx, expected).await?;
        let h = &tally.latency;
        let elapsed = tally.last.duration_since(started).as_secs_f64();
        let lost = expected - tally.distinct;
        let dup = tally.duplicated();
        let rate = tally.distinct as f64 / elapsed;
        let label = pace.label();
        rows.push(vec![
            name(backend).into(),
            label.clone(),
            format!("{posted:.2}"),
            format!("{rate:.0}"),
            format!("{elapsed:.2}"),
            format!("{:.1}", report::ms(h, 0.5)),
            format!("{:.1}", report::ms(h, 0.99)),
            lost.to_string(),
            dup.to_string(),
        ]);
        results.push(json!({"db": name(backend), "pace": label, "sessions": sessions, "broadcasts": count,
            "posted_in_s": posted, "deliveries_per_s": rate, "seconds": elapsed,
            "p50_ms": report::ms(h, 0.5), "p99_ms": report::ms(h, 0.99), "lost": lost, "duplicated": dup}));
    }
    report::table(
        &format!("broadcast — {count} broadcasts to {sessions} SSE sessions"),
        &[
            "database",
            "broadcasts sent",
            "posted in s",
            "deliveries/s",
            "all delivered after s",
            "p50 ms",
            "p99 ms",
            "lost",
            "dup",
        ],
        &rows,
    );
    report::json("broadcast", Value::Array(results.clone()));
    ensure_clean(&results)
}

/// Gateway memory per idle connection, SSE and WebSocket, and RabbitMQ memory per user.
pub async fn idle(opts: &Opts) -> anyhow::Result<()> {
    let sizes: Vec<usize> = if opts.quick {
        vec![500]
    } else {
        vec![1000, 10_000]
    };
    let mut rows = Vec::new();
    let mut results = Vec::new();
    for n in sizes {
        for transport in ["sse", "ws"] {
            let d = deploy(opts.backend(), true).await?;
            let gateway = d.gateway.as_ref().expect("gateway");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let base = gateway.rss_kib().unwrap_or_default();
            let broker_base = broker_memory().await;
            let (tx, _rx) = mpsc::unbounded_channel();
            let sem = Arc::new(tokio::sync::Semaphore::new(256));
            let open = |range: std::ops::Range<usize>| {
                join_all(range.map(|i| {
                    let (tx, sem, port) = (tx.clone(), sem.clone(), gateway.port);
                    async move {
                        let _permit = sem.acquire().await?;
                        let token = clients::mint(&format!("u{i}"), 3600);
                        if transport == "sse" {
                            clients::sse(port, i, &token, None, tx).await
                        } else {
                            clients::ws(port, i, &token, tx).await
                        }
                    }
                }))
            };
            // Two steps: the first tenth brings the node's one-time costs (database
            // connections and their threads, allocator arenas, pools) to their working
            // size, so the rest measures what one more connection costs.
            let warm = n / 10;
            let mut handles: Vec<_> = open(0..warm).await.into_iter().collect::<Result<_, _>>()?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let warm_rss = gateway.rss_kib().unwrap_or_default();
            let resumed = Instant::now();
            handles.extend(
                open(warm..n)
                    .await
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()?,
            );
            let connect_rate = (n - warm) as f64 / resumed.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs(2)).await;
            bindings_in_place(&d.vhost, n).await;
            let rss = gateway.rss_kib().unwrap_or_default();
            let per_conn = (rss.saturating_sub(warm_rss) as f64 * 1024.0) / (n - warm) as f64;
            let per_conn_all = (rss.saturating_sub(base) as f64 * 1024.0) / n as f64;
            let broker_per_user = broker_memory()
                .await
                .zip(broker_base)
                .map(|(a, b)| (a - b) as f64 / n as f64);
            rows.push(vec![
                transport.into(),
                n.to_string(),
                format!("{:.0}", per_conn),
                format!("{:.0}", per_conn_all),
                format!("{:.1}", rss as f64 / 1024.0),
                broker_per_user.map_or("n/a".into(), |b| format!("{b:.0}")),
                format!("{connect_rate:.0}"),
            ]);
            results.push(json!({"transport": transport, "connections": n, "gateway_bytes_per_connection": per_conn,
                "gateway_bytes_per_connection_with_one_time_costs": per_conn_all,
                "gateway_rss_mib": rss as f64 / 1024.0, "broker_bytes_per_user": broker_per_user, "connects_per_s": connect_rate}));
            for h in handles {
                h.abort();
            }
            drop(d);
        }
    }
    report::table(
        "idle — one session per user",
        &[
            "transport",
            "connections",
            "gateway bytes/conn",
            "incl. one-time costs",
            "gateway RSS MiB",
            "RabbitMQ routing bytes/user",
            "connects/s",
        ],
        &rows,
    );
    report::json("idle", Value::Array(results));
    Ok(())
}

/// RabbitMQ node memory in bytes (management API).
/// RabbitMQ's memory for routing: bindings live in its Mnesia and ETS tables. Read live
/// from the node; its `mem_used` also counts every process heap, which garbage
/// collection moves by megabytes (per-user figures came out negative).
async fn broker_memory() -> Option<i64> {
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:15672/api{path}"))
                .basic_auth("guest", Some("guest"))
                .send()
                .await
                .ok()?
                .json::<Value>()
                .await
                .ok()
        }
    };
    let nodes = get("/nodes".into()).await?;
    let node = nodes.get(0)?.get("name")?.as_str()?.to_owned();
    let memory = get(format!("/nodes/{node}/memory")).await?;
    let tables = memory.get("memory")?;
    Some(
        ["mnesia", "other_ets"]
            .iter()
            .filter_map(|k| tables.get(*k)?.as_i64())
            .sum(),
    )
}

/// Waits (up to a minute) until the node's queue is bound for `n` users.
async fn bindings_in_place(vhost: &Vhost, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && vhost.direct_bindings().await.map_or(0, |b| b.len()) < n {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Short polling: `/v1/unread` requests/s with and without `If-None-Match`, and the
/// latency of one unread count for a user with 10,000 notifications and 100 broadcasts.
pub async fn poll(opts: &Opts) -> anyhow::Result<()> {
    let (history, broadcasts, secs, default_clients) = if opts.quick {
        (1000, 10, 2, 16)
    } else {
        (10_000, 100, 5, 32)
    };
    let clients = opts.clients.unwrap_or(default_clients);
    let backend = opts.backend();
    let d = deploy(backend, true).await?;
    let gateway = d.gateway.as_ref().expect("gateway");
    let http = reqwest::Client::new();
    // One request with all recipients would be one notification; the history needs many.
    let batch: Vec<_> = (0..history).collect();
    for chunk in batch.chunks(500) {
        let posts = chunk.iter().map(|i| {
            let http = http.clone();
            let body = json!({"to": {"users": ["heavy", format!("other{}", i % 7)]}, "kind": if i % 3 == 0 { "comment" } else { "like" }, "title": "history"});
            let producer = &d.producer;
            async move { send_notification(&http, producer, &body, None).await }
        });
        join_all(posts).await;
    }
    for _ in 0..broadcasts {
        send_notification(
            &http,
            &d.producer,
            &json!({"to": {"all": true}, "title": "b"}),
            None,
        )
        .await?;
    }
    let token = clients::mint("heavy", 3600);
    let url = gateway.url("/v1/unread");
    let mut one = report::new_histogram();
    let mut etag = String::new();
    for _ in 0..200 {
        let t0 = Instant::now();
        let res = http.get(&url).bearer_auth(&token).send().await?;
        etag = res
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body: Value = res.json().await?;
        one.record(t0.elapsed().as_micros().max(1) as u64)?;
        anyhow::ensure!(
            body["count"].as_i64() == Some((history + broadcasts) as i64),
            "unexpected count {body}"
        );
    }
    let mut rows = Vec::new();
    let mut results = Vec::new();
    for conditional in [false, true] {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let headers = if conditional {
            format!("Authorization: Bearer {token}\r\nIf-None-Match: {etag}\r\n")
        } else {
            format!("Authorization: Bearer {token}\r\n")
        };
        let want = if conditional { 304 } else { 200 };
        let tasks = (0..clients).map(|i| {
            let (headers, port) = (headers.clone(), gateway.port);
            tokio::spawn(async move {
                clients::get_loop(port, i, "/v1/unread", &headers, want, deadline).await
            })
        });
        let total: u64 = join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.map_err(anyhow::Error::from).and_then(|r| r))
            .sum::<anyhow::Result<u64>>()?;
        let rate = total as f64 / secs as f64;
        let label = if conditional {
            "with If-None-Match (304)"
        } else {
            "without (200)"
        };
        rows.push(vec![
            name(backend).into(),
            label.into(),
            format!("{rate:.0}"),
        ]);
        results
            .push(json!({"db": name(backend), "conditional": conditional, "requests_per_s": rate}));
    }
    report::table(
        &format!(
            "poll — /v1/unread, {clients} clients, {secs} s; one user with {history} notifications and {broadcasts} live broadcasts"
        ),
        &["database", "request", "requests/s"],
        &rows,
    );
    println!(
        "\nunread count latency (one request, sequential): p50 {:.2} ms, p99 {:.2} ms",
        report::ms(&one, 0.5),
        report::ms(&one, 0.99)
    );
    results.push(json!({"unread_latency_p50_ms": report::ms(&one, 0.5), "unread_latency_p99_ms": report::ms(&one, 0.99)}));
    report::json("poll", Value::Array(results));
    Ok(())
}
