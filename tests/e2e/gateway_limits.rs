//! The per-IP connect rate limit: past the burst, new streaming connections from one
//! address get a JSON 429 with `Retry-After` on every streaming transport, other
//! addresses and the other endpoints are unaffected, and waiting restores access. The
//! per-user session limit: streams past it are refused, held long polls make room.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use reddot_tests::{
    Backend, ORIGIN, Stack,
    clients::{Connect, Ws},
    gateway::{Gateway, token_expiring_in},
};
use reqwest::{StatusCode, header::RETRY_AFTER};
use serde_json::Value;

const RATE: f64 = 2.0;
const BURST: usize = 5;

fn client_from(ip: [u8; 4]) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::from(ip)))
        .build()?)
}

#[tokio::test]
async fn connections_past_the_burst_get_429_with_retry_after_until_the_bucket_refills()
-> anyhow::Result<()> {
    // Arrange
    let stack = Stack::start(Backend::Sqlite).await?;
    let env = stack
        .env()
        .with("REDDOT_CONNECT_RATE_PER_IP", RATE.to_string())
        .with("REDDOT_CONNECT_BURST_PER_IP", BURST.to_string());
    let gw = Gateway::start_with("node-a", env).await?;
    let token = stack.token("alice").await?;
    let first_ip = client_from([127, 0, 0, 1])?;
    let stream = gw.url(&format!("/v1/stream?access_token={token}"));

    // Act: the burst, then one more.
    let mut open = Vec::new();
    for n in 0..BURST {
        let res = first_ip.get(&stream).send().await?;
        assert_eq!(res.status(), StatusCode::OK, "connection {n} of the burst");
        open.push(res);
    }
    let refused_at = Instant::now();
    let refused = first_ip
        .get(&stream)
        .header("Origin", ORIGIN)
        .send()
        .await?;

    // Assert: 429, the error table's body, Retry-After, CORS so a page can read it.
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()[RETRY_AFTER].to_str()?.parse()?;
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(
        refused.headers()["access-control-allow-origin"].to_str()?,
        ORIGIN
    );
    let body: Value = refused.json().await?;
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
    assert!(body["error"]["hint"].is_string(), "{body}");

    // Every streaming transport shares the bucket; an unauthenticated attempt too.
    for path in [
        format!("/v1/poll?access_token={token}&timeout=0"),
        format!("/v1/iframe?origin={ORIGIN}&access_token={token}"),
        "/v1/stream".to_owned(),
    ] {
        let res = first_ip.get(gw.url(&path)).send().await?;
        assert_eq!(
            res.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            path.split('?').next().unwrap_or_default()
        );
    }
    match Ws::try_open(&gw.base(), &Connect::query_token(&token)).await? {
        Ok(_) => panic!("a WebSocket got past the connect limit"),
        Err(refused) => {
            assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(refused.body["error"]["code"], "too_many_requests");
        }
    }

    // Other endpoints are not limited; another address has its own bucket.
    let inbox = first_ip
        .get(gw.url("/v1/notifications"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(inbox.status(), StatusCode::OK);
    let unread = first_ip
        .get(gw.url("/v1/unread"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(unread.status(), StatusCode::OK);
    let second_ip = client_from([127, 0, 0, 2])?;
    for n in 0..BURST {
        let res = second_ip.get(&stream).send().await?;
        assert_eq!(res.status(), StatusCode::OK, "127.0.0.2, connection {n}");
        open.push(res);
    }

    // After Retry-After the first address may connect again; the sessions it opened
    // meanwhile were never cut.
    tokio::time::sleep_until((refused_at + Duration::from_secs(retry_after)).into()).await;
    let again = first_ip.get(&stream).send().await?;
    assert_eq!(again.status(), StatusCode::OK);
    drop(open);
    Ok(())
}

#[tokio::test]
async fn with_the_limit_off_one_address_opens_more_connections_than_any_burst() -> anyhow::Result<()>
{
    let stack = Stack::start(Backend::Sqlite).await?;
    // The harness runs every gateway with REDDOT_CONNECT_RATE_PER_IP=0.
    let gw = Gateway::start(&stack, "node-a").await?;
    let http = client_from([127, 0, 0, 1])?;

    let mut open = Vec::new();
    for n in 0..150 {
        let token = token_expiring_in(&format!("user-{n}"), 3600);
        let res = http
            .get(gw.url(&format!("/v1/stream?access_token={token}")))
            .send()
            .await?;
        assert_eq!(res.status(), StatusCode::OK, "connection {n}");
        open.push(res);
    }
    Ok(())
}

/// A node allowing `max` sessions per user, beating every `heartbeat_secs`; alice's token.
async fn node_with_a_session_limit(
    stack: &Stack,
    max: u32,
    heartbeat_secs: u32,
) -> anyhow::Result<(Gateway, String)> {
    let env = stack
        .env()
        .with("REDDOT_MAX_SESSIONS_PER_USER", max.to_string())
        .with("REDDOT_HEARTBEAT_SECS", heartbeat_secs.to_string());
    let gw = Gateway::start_with("node-a", env).await?;
    Ok((gw, stack.token("alice").await?))
}

/// Streams whose clients closed them free their places at once: at the per-user limit,
/// a user who closed her tabs can open new ones (before, the places stayed taken until
/// each stream's next heartbeat, 429 for up to a heartbeat).
#[tokio::test]
async fn closed_streams_free_their_places_at_once() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    // A long heartbeat: a closed stream is not found at a heartbeat's write.
    let (gw, token) = node_with_a_session_limit(&stack, 3, 60).await?;
    let http = reqwest::Client::new();
    let stream = gw.url(&format!("/v1/stream?access_token={token}"));

    let mut open = Vec::new();
    for _ in 0..3 {
        let res = http.get(&stream).send().await?;
        assert_eq!(res.status(), StatusCode::OK);
        open.push(res);
    }
    assert_eq!(
        http.get(&stream).send().await?.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    drop(open);

    let deadline = Instant::now() + Duration::from_secs(3);
    let mut reopened = Vec::new();
    while reopened.len() < 3 {
        let res = http.get(&stream).send().await?;
        if res.status() == StatusCode::OK {
            reopened.push(res);
            continue;
        }
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            Instant::now() < deadline,
            "{} of 3 places free 3 s after the streams were closed",
            reopened.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// At REDDOT_MAX_SESSIONS_PER_USER, another stream is refused (429); but held long
/// polls, which the gateway cannot see abandoned until they are answered, make room:
/// the oldest is answered 204 and the newcomer gets in. Before, a few abandoned polls
/// locked the user out of every transport for up to 60 s.
#[tokio::test]
async fn at_the_per_user_limit_streams_are_refused_and_held_long_polls_make_room()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let (gw, token) = node_with_a_session_limit(&stack, 2, 1).await?;
    let http = reqwest::Client::new();
    let stream = gw.url(&format!("/v1/stream?access_token={token}"));
    let poll = gw.url(&format!("/v1/poll?timeout=60&access_token={token}"));

    // Two streams: a third session of any kind is refused.
    let streams = [
        http.get(&stream).send().await?,
        http.get(&stream).send().await?,
    ];
    for s in &streams {
        assert_eq!(s.status(), StatusCode::OK);
    }
    assert_eq!(
        http.get(&stream).send().await?.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        http.get(&poll).send().await?.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    drop(streams);
    // The hub's sessions, long polls included.
    let sessions = || async { anyhow::Ok(gw.readyz().await?["sessions"].as_f64()) };
    let until_sessions = |n: f64| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while sessions().await? != Some(n) {
            anyhow::ensure!(Instant::now() < deadline, "never {n} sessions");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    };
    until_sessions(0.0).await?;

    // Two held polls (their clients have gone, as far as anyone can tell) ...
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(http.get(&poll).send()))
        .collect();
    until_sessions(2.0).await?;
    // ... yield to a new stream: the oldest poll is answered 204 at once.
    let started = Instant::now();
    let newcomer = http.get(&stream).send().await?;
    assert_eq!(newcomer.status(), StatusCode::OK);
    let mut answered = Vec::new();
    for h in held {
        if let Ok(Ok(res)) = tokio::time::timeout(Duration::from_secs(5), h).await {
            answered.push(res?.status());
        }
    }
    assert_eq!(
        answered,
        vec![StatusCode::NO_CONTENT],
        "the oldest poll only"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    Ok(())
}
