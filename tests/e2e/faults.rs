//! The producer when its dependencies fail: RabbitMQ going away never fails a request
//! and never loses or reorders a notification (the outbox publishes later, also after a
//! SIGKILL); PostgreSQL going away is a 503 and nothing stored; SIGTERM publishes what
//! was acknowledged and exits cleanly.

use std::{collections::BTreeSet, time::Duration};

use reddot_tests::{
    Backend, Env, Proxy, Service, ServiceKind, Stack, TestConsumer, amqp_addr, pg_admin_url,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::helpers::{count_rows, eventually, get, host_port, post_json, stack_with};

fn for_alice(title: impl Into<String>) -> Value {
    json!({"to": {"users": ["alice"]}, "title": title.into()})
}

/// Posts `title` to alice until the answer is no longer the database's 503 (30 s).
async fn post_once_the_database_is_back(
    stack: &Stack,
    title: &str,
) -> anyhow::Result<crate::helpers::Answer> {
    eventually(Duration::from_secs(30), "a POST succeeds again", || async {
        let answer = post_json(
            stack,
            "/api/v1/notifications",
            Some(reddot_tests::API_KEY),
            &for_alice(title),
            None,
        )
        .await?;
        let unavailable = answer.status == StatusCode::SERVICE_UNAVAILABLE
            && answer.code() == "database_unavailable";
        Ok((!unavailable).then_some(answer))
    })
    .await
}

/// `/readyz` polled until `settled` holds for it (or it is not 200/503), with a deadline.
async fn readyz_until(
    stack: &Stack,
    what: &str,
    settled: impl Fn(&Value) -> bool,
) -> anyhow::Result<crate::helpers::Answer> {
    eventually(Duration::from_secs(15), what, || async {
        let answer = get(stack, "/readyz").await?;
        let expected_status = matches!(
            answer.status,
            StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE
        );
        Ok((!expected_status || settled(&answer.json)).then_some(answer))
    })
    .await
}

async fn notifications_accepted_while_rabbitmq_is_down_are_published_in_order_once_it_is_back(
    backend: Backend,
) -> anyhow::Result<()> {
    let proxy = Proxy::start(&amqp_addr()).await?;
    let stack = stack_with(backend, |db, vhost| {
        Env::new(&db.url, &vhost.url_via(&proxy.addr))
    })
    .await?;
    // Bound straight to the broker, not through the proxy.
    let mut consumer = TestConsumer::bind(&stack.vhost, &["alice"]).await?;
    let before = stack.notify(&for_alice("before the outage")).await?;
    assert_eq!(consumer.next(Duration::from_secs(10)).await?.id, before);
    // Delivered is not yet marked published: the relay deletes the row only once every
    // message of its batch is confirmed (the MQTT copy too), and a batch cut off before
    // that is rightly published again. The outage starts after the row is gone.
    readyz_until(&stack, "the outbox is empty before the outage", |body| {
        body["outbox_lag"] == 0
    })
    .await?;

    proxy.cut();
    let attempts_before = proxy.attempts();
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(
            stack
                .notify(&for_alice(format!("during the outage {i}")))
                .await?,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The relay backs off (0.1, 0.2, 0.4, 0.8 s…) whatever is committed meanwhile: about
    // five attempts in this second, not one per commit.
    let attempts = proxy.attempts() - attempts_before;
    assert!(
        attempts <= 8,
        "{attempts} connection attempts to RabbitMQ during 20 commits in ~1 s"
    );
    let during = readyz_until(&stack, "/readyz reports RabbitMQ down", |body| {
        body["rabbitmq"] == "down"
    })
    .await?;
    proxy.restore();

    assert_eq!(during.status, StatusCode::OK, "{}", during.json);
    assert_eq!(during.json["database"], "ok");
    assert!(
        during.json["outbox_lag"].as_i64().is_some_and(|n| n >= 20),
        "the outbox holds the 20: {}",
        during.json
    );
    let received = consumer.take(20, Duration::from_secs(15)).await?;
    let ids: Vec<i64> = received.iter().map(|r| r.id).collect();
    assert_eq!(ids, acked, "all 20, in id order");
    consumer.expect_nothing(Duration::from_secs(1)).await?;
    let after = readyz_until(&stack, "/readyz reports RabbitMQ ok again", |body| {
        body["rabbitmq"] == "ok" && body["outbox_lag"] == 0
    })
    .await?;
    assert_eq!(after.status, StatusCode::OK, "{}", after.json);
    Ok(())
}

#[tokio::test]
async fn sqlite_notifications_accepted_while_rabbitmq_is_down_are_published_in_order_once_it_is_back()
-> anyhow::Result<()> {
    notifications_accepted_while_rabbitmq_is_down_are_published_in_order_once_it_is_back(
        Backend::Sqlite,
    )
    .await
}

#[tokio::test]
async fn postgres_notifications_accepted_while_rabbitmq_is_down_are_published_in_order_once_it_is_back()
-> anyhow::Result<()> {
    notifications_accepted_while_rabbitmq_is_down_are_published_in_order_once_it_is_back(
        Backend::Postgres,
    )
    .await
}

async fn a_producer_killed_before_publishing_leaves_its_notifications_to_the_next_one(
    backend: Backend,
) -> anyhow::Result<()> {
    let proxy = Proxy::start(&amqp_addr()).await?;
    proxy.cut();
    let mut stack = stack_with(backend, |db, vhost| {
        Env::new(&db.url, &vhost.url_via(&proxy.addr))
    })
    .await?;
    let mut consumer = TestConsumer::bind(&stack.vhost, &["alice"]).await?;
    let mut acked = Vec::new();
    for i in 0..10 {
        acked.push(stack.notify(&for_alice(format!("unpublished {i}"))).await?);
    }
    let pending = get(&stack, "/readyz").await?;
    assert_eq!(pending.json["outbox_lag"], 10, "{}", pending.json);

    stack.producer.kill();
    let _next = Service::start(
        ServiceKind::Producer,
        &Env::new(&stack.db.url, &stack.vhost.url()),
    )
    .await?;

    // The dead relay's lease must expire first (10 s), hence the generous deadline.
    let received = consumer.take(10, Duration::from_secs(30)).await?;
    let ids: Vec<i64> = received.iter().map(|r| r.id).collect();
    assert_eq!(ids, acked, "all 10, in id order");
    consumer.expect_nothing(Duration::from_secs(1)).await
}

#[tokio::test]
async fn sqlite_a_producer_killed_before_publishing_leaves_its_notifications_to_the_next_one()
-> anyhow::Result<()> {
    a_producer_killed_before_publishing_leaves_its_notifications_to_the_next_one(Backend::Sqlite)
        .await
}

#[tokio::test]
async fn postgres_a_producer_killed_before_publishing_leaves_its_notifications_to_the_next_one()
-> anyhow::Result<()> {
    a_producer_killed_before_publishing_leaves_its_notifications_to_the_next_one(Backend::Postgres)
        .await
}

#[tokio::test]
async fn while_postgres_is_unreachable_posts_get_503_and_nothing_is_stored_until_it_is_back()
-> anyhow::Result<()> {
    let admin = pg_admin_url();
    let proxy = Proxy::start(host_port(&admin)).await?;
    let stack = stack_with(Backend::Postgres, |db, vhost| {
        let proxied = db.url.replacen(host_port(&db.url), &proxy.addr, 1);
        Env::new(&proxied, &vhost.url())
    })
    .await?;
    stack.notify(&for_alice("before the outage")).await?;

    proxy.cut();
    let bodies: Vec<Value> = (0..5)
        .map(|i| for_alice(format!("during the outage {i}")))
        .collect();
    let (posts, ready) = tokio::join!(
        futures_util::future::try_join_all(bodies.iter().map(|body| post_json(
            &stack,
            "/api/v1/notifications",
            Some(reddot_tests::API_KEY),
            body,
            None
        ))),
        get(&stack, "/readyz"),
    );
    let (posts, ready) = (posts?, ready?);
    proxy.restore();
    let after = post_once_the_database_is_back(&stack, "after the outage").await?;

    for answer in &posts {
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            answer.json
        );
        assert_eq!(answer.code(), "database_unavailable");
    }
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.json
    );
    assert_eq!(ready.json["database"], "down");
    assert_eq!(after.status, StatusCode::CREATED, "{}", after.json);
    assert_eq!(
        count_rows(&stack, "notifications").await?,
        2,
        "only the notifications answered 201 are stored"
    );
    let ready_again = get(&stack, "/readyz").await?;
    assert_eq!(ready_again.status, StatusCode::OK, "{}", ready_again.json);
    Ok(())
}

/// PostgreSQL's connections stall without an error (a hung proxy, a half-open TCP
/// connection): a post is answered 503 within the writer's statement timeout instead of
/// waiting as long as the stall (minutes, in an audit), and posting works once the
/// connections flow again.
#[tokio::test]
async fn while_postgres_stalls_silently_posts_get_503_in_time_and_work_after() -> anyhow::Result<()>
{
    let admin = pg_admin_url();
    let proxy = Proxy::start(host_port(&admin)).await?;
    let stack = stack_with(Backend::Postgres, |db, vhost| {
        let proxied = db.url.replacen(host_port(&db.url), &proxy.addr, 1);
        Env::new(&proxied, &vhost.url())
    })
    .await?;
    stack.notify(&for_alice("before the stall")).await?;

    // Keep the writer inside a transaction (posts of 3,000 recipients back to back), so
    // the stall catches a statement in flight, not an idle connection (which the pool's
    // check before handing it out already times out).
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let big = json!({"to": {"users": (0..3000).map(|i| format!("u{i}")).collect::<Vec<_>>()}, "title": "big"});
    let posters: Vec<_> = (0..2)
        .map(|_| {
            let (http, url, busy, big) = (
                stack.http.clone(),
                stack.producer.url("/api/v1/notifications"),
                busy.clone(),
                big.clone(),
            );
            tokio::spawn(async move {
                while busy.load(std::sync::atomic::Ordering::SeqCst) {
                    let post = http
                        .post(&url)
                        .bearer_auth(reddot_tests::API_KEY)
                        .json(&big);
                    let _ = post.timeout(Duration::from_secs(60)).send().await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    proxy.pause();
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(40),
        post_json(
            &stack,
            "/api/v1/notifications",
            Some(reddot_tests::API_KEY),
            &for_alice("during the stall"),
            None,
        ),
    )
    .await;
    let waited = started.elapsed();
    busy.store(false, std::sync::atomic::Ordering::SeqCst);
    proxy.resume();
    let answer = answer.map_err(|_| anyhow::anyhow!("no answer within 40 s"))??;
    for poster in posters {
        poster.await?;
    }
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.json
    );
    assert_eq!(answer.code(), "database_unavailable");
    assert!(
        waited < Duration::from_secs(25),
        "answered after {waited:?}"
    );

    let after = post_once_the_database_is_back(&stack, "after the stall").await?;
    assert!(after.json["id"].as_i64().is_some(), "{}", after.json);
    Ok(())
}

async fn sigterm_during_steady_posting_publishes_every_acknowledged_notification_and_exits_0(
    backend: Backend,
) -> anyhow::Result<()> {
    const CLIENTS: usize = 4;
    const ACKED_BEFORE_SIGTERM: usize = 200;
    let mut stack = Stack::start(backend).await?;
    let mut consumer = TestConsumer::bind(&stack.vhost, &["alice"]).await?;
    let url = stack.producer.url("/api/v1/notifications");
    let (acks, mut acked_rx) = mpsc::unbounded_channel();

    // Clients post until the producer stops answering 201.
    let posting = futures_util::future::join_all((0..CLIENTS).map(|client| {
        let (http, url, acks) = (stack.http.clone(), url.clone(), acks.clone());
        async move {
            for i in 0..100_000 {
                let sent = http
                    .post(&url)
                    .bearer_auth(reddot_tests::API_KEY)
                    .json(&for_alice(format!("client {client} post {i}")))
                    .send()
                    .await;
                let Ok(res) = sent else { break };
                if res.status() != StatusCode::CREATED {
                    break;
                }
                let Ok(json) = res.json::<Value>().await else {
                    break;
                };
                if let Some(id) = json["id"].as_i64() {
                    let _ = acks.send(id);
                }
            }
        }
    }));
    drop(acks);
    let producer = &mut stack.producer;
    let stopping = async {
        let mut acked = Vec::new();
        while acked.len() < ACKED_BEFORE_SIGTERM {
            let id = tokio::time::timeout(Duration::from_secs(20), acked_rx.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("posting stopped early"))?;
            acked.push(id);
        }
        let clean = producer.terminate(Duration::from_secs(20)).await?;
        anyhow::Ok((acked, clean))
    };
    let (_, stopped) = tokio::join!(posting, stopping);
    let (mut acked, clean_exit) = stopped?;
    while let Some(id) = acked_rx.recv().await {
        acked.push(id);
    }

    assert!(
        clean_exit,
        "the producer exits 0 within 20 s:\n{}",
        stack.producer.logs()
    );
    let mut missing: BTreeSet<i64> = acked.iter().copied().collect();
    let mut received = Vec::new();
    while !missing.is_empty() {
        let next = consumer.next(Duration::from_secs(10)).await.map_err(|e| {
            anyhow::anyhow!(
                "{e}: {} acknowledged notifications never published, e.g. {:?}",
                missing.len(),
                missing.first()
            )
        })?;
        missing.remove(&next.id);
        received.push(next.id);
    }
    if let Some(w) = received.windows(2).find(|w| w[0] >= w[1]) {
        panic!("received {} after {}: not strictly increasing", w[1], w[0]);
    }
    Ok(())
}

#[tokio::test]
async fn sqlite_sigterm_during_steady_posting_publishes_every_acknowledged_notification_and_exits_0()
-> anyhow::Result<()> {
    sigterm_during_steady_posting_publishes_every_acknowledged_notification_and_exits_0(
        Backend::Sqlite,
    )
    .await
}

#[tokio::test]
async fn postgres_sigterm_during_steady_posting_publishes_every_acknowledged_notification_and_exits_0()
-> anyhow::Result<()> {
    sigterm_during_steady_posting_publishes_every_acknowledged_notification_and_exits_0(
        Backend::Postgres,
    )
    .await
}

/// The relay publishes the next batch while earlier ones wait for their confirms; a cut
/// connection fails those, and the relay must start over from the oldest row left.
async fn cutting_rabbitmq_while_batches_are_in_flight_loses_nothing_and_keeps_id_order(
    backend: Backend,
) -> anyhow::Result<()> {
    let proxy = Proxy::start(&amqp_addr()).await?;
    let stack = stack_with(backend, |db, vhost| {
        Env::new(&db.url, &vhost.url_via(&proxy.addr))
    })
    .await?;
    let mut consumer = TestConsumer::bind(&stack.vhost, &["alice"]).await?;

    // Eight clients post without pause while the connection is cut twice.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let post = |client: usize| {
        let (stack, stop) = (&stack, &stop);
        async move {
            let mut ids = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let title = format!("client {client} post {}", ids.len());
                ids.push(stack.notify(&for_alice(title)).await?);
            }
            anyhow::Ok(ids)
        }
    };
    let cuts = async {
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            proxy.cut();
            tokio::time::sleep(Duration::from_millis(300)).await;
            proxy.restore();
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let (posted, ()) = tokio::join!(futures_util::future::try_join_all((0..8).map(post)), cuts);
    let acked: BTreeSet<i64> = posted?.into_iter().flatten().collect();
    assert!(acked.len() >= 50, "only {} posts went through", acked.len());

    // Every acknowledged id arrives; repeats are allowed (a failed batch is published
    // again), but each id first arrives after every smaller one: no gap, no reordering.
    let mut seen = BTreeSet::new();
    while seen.len() < acked.len() {
        let id = consumer
            .next(Duration::from_secs(20))
            .await
            .map_err(|e| anyhow::anyhow!("{e}; {} of {} arrived", seen.len(), acked.len()))?
            .id;
        assert!(acked.contains(&id), "{id} was never acknowledged");
        if seen.insert(id) {
            assert_eq!(
                seen.last(),
                Some(&id),
                "{id} arrived for the first time after a larger id"
            );
        }
    }
    readyz_until(&stack, "the outbox empties", |body| body["outbox_lag"] == 0).await?;
    Ok(())
}

#[tokio::test]
async fn sqlite_cutting_rabbitmq_while_batches_are_in_flight_loses_nothing_and_keeps_id_order()
-> anyhow::Result<()> {
    cutting_rabbitmq_while_batches_are_in_flight_loses_nothing_and_keeps_id_order(Backend::Sqlite)
        .await
}

#[tokio::test]
async fn postgres_cutting_rabbitmq_while_batches_are_in_flight_loses_nothing_and_keeps_id_order()
-> anyhow::Result<()> {
    cutting_rabbitmq_while_batches_are_in_flight_loses_nothing_and_keeps_id_order(Backend::Postgres)
        .await
}
