//! The per-IP connect rate limit: past the burst, new streaming connections from one
//! address get a JSON 429 with `Retry-After` on every streaming transport, other
//! addresses and the other endpoints are unaffected, and waiting restores access.

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
