//! Ordering under concurrent load (PostgreSQL): whatever the producers acknowledged is
//! published exactly once, in strictly increasing id order, with no gap among the
//! acknowledged ids; also with two producers sharing the database, where only one relay
//! may lead.

use std::{collections::HashMap, time::Duration};

use reddot_tests::{Backend, Service, ServiceKind, Stack, TestConsumer, stack::send_notification};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{eventually, leads};

const USERS: [&str; 5] = ["ann", "ben", "cat", "dan", "eve"];
const POSTS_PER_CLIENT: usize = 100;

/// A deterministic, well-mixed number for each (client, post): which users, or a broadcast.
fn mix(client: usize, post: usize) -> u64 {
    let mut z = ((client as u64) << 32 | post as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Every tenth post a broadcast, the others to one to three users of [`USERS`].
fn body_for(client: usize, post: usize) -> Value {
    let r = mix(client, post);
    let title = format!("client {client} post {post}");
    if r.is_multiple_of(10) {
        return json!({"to": {"all": true}, "title": title});
    }
    let count = 1 + (r >> 8) % 3;
    let users: Vec<&str> = (0..count)
        .map(|k| USERS[((r >> (16 + 8 * k)) % USERS.len() as u64) as usize])
        .collect();
    json!({"to": {"users": users}, "title": title})
}

/// `clients` concurrent clients (numbered from `first_client`) each post
/// [`POSTS_PER_CLIENT`] notifications to `producer`, one after another; returns the
/// id and title of each, failing on anything but 201.
async fn post_concurrently(
    http: &reqwest::Client,
    producer: &Service,
    first_client: usize,
    clients: usize,
) -> anyhow::Result<Vec<(i64, String)>> {
    let per_client = (first_client..first_client + clients).map(|client| async move {
        let mut acked = Vec::with_capacity(POSTS_PER_CLIENT);
        for post in 0..POSTS_PER_CLIENT {
            let body = body_for(client, post);
            let (status, json) = send_notification(http, producer, &body, None).await?;
            anyhow::ensure!(status == StatusCode::CREATED, "{status}: {json}");
            let id = json["id"]
                .as_i64()
                .ok_or_else(|| anyhow::anyhow!("no id in {json}"))?;
            acked.push((id, body["title"].as_str().unwrap_or_default().to_owned()));
        }
        anyhow::Ok(acked)
    });
    Ok(futures_util::future::try_join_all(per_client)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

/// The consumer receives exactly the acknowledged notifications, each once, with the
/// right content, in strictly increasing id order.
async fn assert_received_once_in_order(
    consumer: &mut TestConsumer,
    acked: &[(i64, String)],
) -> anyhow::Result<()> {
    let titles: HashMap<i64, &str> = acked.iter().map(|(id, t)| (*id, t.as_str())).collect();
    assert_eq!(titles.len(), acked.len(), "every 201 has its own id");
    let mut expected: Vec<i64> = titles.keys().copied().collect();
    expected.sort_unstable();

    let received = consumer.take(acked.len(), Duration::from_secs(60)).await?;
    let ids: Vec<i64> = received.iter().map(|r| r.id).collect();

    if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
        panic!("received {} after {}: not strictly increasing", w[1], w[0]);
    }
    assert!(
        ids == expected,
        "received ids differ from the acknowledged ones"
    );
    for r in &received {
        assert_eq!(r.json["title"], titles[&r.id], "content of {}", r.id);
    }
    consumer.expect_nothing(Duration::from_millis(500)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_notifications_are_published_once_each_in_id_order() -> anyhow::Result<()>
{
    let stack = Stack::start(Backend::Postgres).await?;
    let mut consumer = TestConsumer::bind(&stack.vhost, &USERS).await?;

    let acked = post_concurrently(&stack.http, &stack.producer, 0, 8).await?;

    assert_eq!(acked.len(), 8 * POSTS_PER_CLIENT);
    assert_received_once_in_order(&mut consumer, &acked).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_producers_on_one_database_publish_once_each_in_id_order_with_one_relay_leading()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Postgres).await?;
    let second = Service::start(ServiceKind::Producer, &stack.env()).await?;
    let mut consumer = TestConsumer::bind(&stack.vhost, &USERS).await?;

    let (first_acked, second_acked) = tokio::try_join!(
        post_concurrently(&stack.http, &stack.producer, 0, 4),
        post_concurrently(&stack.http, &second, 4, 4),
    )?;

    let acked: Vec<_> = first_acked.into_iter().chain(second_acked).collect();
    assert_eq!(acked.len(), 8 * POSTS_PER_CLIENT);
    assert_received_once_in_order(&mut consumer, &acked).await?;
    let leaders = eventually(Duration::from_secs(5), "one relay leads", || async {
        let leaders = [
            leads(&stack.http, &stack.producer).await?,
            leads(&stack.http, &second).await?,
        ];
        Ok(leaders.contains(&true).then_some(leaders))
    })
    .await?;
    assert_eq!(
        leaders.iter().filter(|l| **l).count(),
        1,
        "exactly one relay leads: {leaders:?}"
    );
    Ok(())
}
