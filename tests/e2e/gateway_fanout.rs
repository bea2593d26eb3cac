//! Fan-out: every open session of a recipient, on any node and any transport, gets each
//! of her notifications once and in id order; nobody else does; broadcasts reach all.

use std::time::Duration;

use futures_util::future::try_join_all;
use reddot_tests::{
    Backend, Stack,
    clients::{Client, Connect, Events},
    gateway::{Gateway, to_all, to_users},
};

const DELIVERY: Duration = Duration::from_secs(20);

async fn every_session_of_a_user_on_two_nodes_gets_each_of_her_notifications_once_in_id_order(
    backend: Backend,
) -> anyhow::Result<()> {
    // Arrange: alice has 3 SSE and 2 WebSocket sessions over two nodes; bob has one of each.
    let stack = Stack::start(backend).await?;
    let a = Gateway::start(&stack, "node-a").await?;
    let b = Gateway::start(&stack, "node-b").await?;
    let alice = stack.token("alice").await?;
    let bob = stack.token("bob").await?;
    let mut alice_sessions: Vec<Client> = vec![
        a.client("sse", &Connect::bearer(&alice)).await?,
        b.client("sse", &Connect::query_token(&alice)).await?,
        a.client("sse", &Connect::query_token(&alice)).await?,
        a.client("ws", &Connect::query_token(&alice)).await?,
        b.client("ws", &Connect::bearer(&alice)).await?,
    ];
    let mut bob_sessions: Vec<Client> = vec![
        b.client("sse", &Connect::bearer(&bob)).await?,
        a.client("ws", &Connect::query_token(&bob)).await?,
    ];

    // Act: hers, mixed with bob's, carol's and shared ones; then a broadcast.
    let mut hers = Vec::new();
    let mut his = Vec::new();
    for i in 0..10 {
        hers.push(
            stack
                .notify(&to_users(&["alice"], &format!("for alice {i}")))
                .await?,
        );
        match i % 3 {
            0 => his.push(
                stack
                    .notify(&to_users(&["bob"], &format!("for bob {i}")))
                    .await?,
            ),
            1 => {
                stack
                    .notify(&to_users(&["carol"], &format!("for carol {i}")))
                    .await?;
            }
            _ => {
                let shared = stack
                    .notify(&to_users(&["carol", "alice"], &format!("shared {i}")))
                    .await?;
                hers.push(shared);
            }
        }
    }
    let broadcast = stack.notify(&to_all("for everyone")).await?;
    hers.push(broadcast);
    his.push(broadcast);

    // Assert: the broadcast comes last to everyone (id order), so what each session got
    // before it is exactly its user's notifications.
    let got = try_join_all(
        alice_sessions
            .iter_mut()
            .map(|s| s.ids_until(broadcast, DELIVERY)),
    )
    .await?;
    for (ids, session) in got.iter().zip(&alice_sessions) {
        assert_eq!(ids, &hers, "alice's {} session", session.transport());
    }
    let got = try_join_all(
        bob_sessions
            .iter_mut()
            .map(|s| s.ids_until(broadcast, DELIVERY)),
    )
    .await?;
    for (ids, session) in got.iter().zip(&bob_sessions) {
        assert_eq!(ids, &his, "bob's {} session", session.transport());
    }

    // A second broadcast proves nothing else was queued behind the first.
    let second = stack.notify(&to_all("again")).await?;
    for session in alice_sessions.iter_mut().chain(bob_sessions.iter_mut()) {
        assert_eq!(session.ids_until(second, DELIVERY).await?, [second]);
    }
    Ok(())
}

#[tokio::test]
async fn sqlite_every_session_of_a_user_on_two_nodes_gets_each_of_her_notifications_once_in_id_order()
-> anyhow::Result<()> {
    every_session_of_a_user_on_two_nodes_gets_each_of_her_notifications_once_in_id_order(
        Backend::Sqlite,
    )
    .await
}

#[tokio::test]
async fn postgres_every_session_of_a_user_on_two_nodes_gets_each_of_her_notifications_once_in_id_order()
-> anyhow::Result<()> {
    every_session_of_a_user_on_two_nodes_gets_each_of_her_notifications_once_in_id_order(
        Backend::Postgres,
    )
    .await
}

#[tokio::test]
async fn a_user_first_seen_after_a_broadcast_still_gets_it_on_resume() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let broadcast = stack.notify(&to_all("before dave existed")).await?;

    let mut dave = gw
        .sse(&Connect::bearer(&stack.token("dave").await?).after(0))
        .await?;

    assert_eq!(dave.ids_until(broadcast, DELIVERY).await?, [broadcast]);
    let unread = dave.expect("unread", DELIVERY).await?;
    assert_eq!(unread.data["count"], 1);
    assert_eq!(unread.data["as_of"], broadcast);
    Ok(())
}

/// The value of the `/metrics` sample whose name and labels are exactly `series`.
async fn sample(gw: &Gateway, series: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(gw.url("/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0))
}

#[tokio::test]
async fn deliveries_are_counted_per_transport_with_their_latency() -> anyhow::Result<()> {
    // Arrange: alice on SSE and on WebSocket.
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let alice = stack.token("alice").await?;
    let mut sessions = vec![
        gw.client("sse", &Connect::bearer(&alice)).await?,
        gw.client("ws", &Connect::bearer(&alice)).await?,
    ];

    // Act: three notifications, each written to both sessions.
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            stack
                .notify(&to_users(&["alice"], &format!("n{i}")))
                .await?,
        );
    }
    for session in &mut sessions {
        assert_eq!(session.ids_until(ids[2], DELIVERY).await?, ids);
    }

    // Assert: three per transport, six latencies.
    assert_eq!(
        sample(&gw, r#"reddot_deliveries_total{transport="sse"}"#).await?,
        3.0
    );
    assert_eq!(
        sample(&gw, r#"reddot_deliveries_total{transport="ws"}"#).await?,
        3.0
    );
    assert_eq!(
        sample(&gw, "reddot_delivery_latency_seconds_count").await?,
        6.0
    );
    Ok(())
}
