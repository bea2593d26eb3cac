//! WebSocket commands: `ping` → `pong`; `read` and `read_all` change the user's read
//! state, and every session of hers, on every node and transport, gets a fresh `unread`.

use std::time::Duration;

use reddot_tests::{
    Backend, Stack,
    clients::{Connect, Events},
    gateway::{Gateway, to_users},
};
use serde_json::json;

const DELIVERY: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_ping_command_gets_a_pong_frame() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let mut ws = gw
        .ws(&Connect::bearer(&stack.token("alice").await?))
        .await?;
    ws.expect("unread", DELIVERY).await?;

    for _ in 0..3 {
        ws.send(&json!({"type": "ping"})).await?;
        let pong = ws.expect("pong", DELIVERY).await?;
        assert_eq!(pong.data, json!({"type": "pong"}));
    }
    Ok(())
}

#[tokio::test]
async fn reading_on_one_node_pushes_a_lower_unread_count_to_every_session_on_both_nodes()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let a = Gateway::start(&stack, "node-a").await?;
    let b = Gateway::start(&stack, "node-b").await?;
    let token = stack.token("alice").await?;
    let mut reader = a.ws(&Connect::bearer(&token)).await?;
    let mut other_node = b.ws(&Connect::query_token(&token)).await?;
    let mut other_sse = b.sse(&Connect::bearer(&token)).await?;
    let mut bob = b.ws(&Connect::bearer(&stack.token("bob").await?)).await?;
    let ids = [
        stack.notify(&to_users(&["alice"], "one")).await?,
        stack.notify(&to_users(&["alice", "bob"], "two")).await?,
        stack
            .notify(&json!({"to": {"users": ["alice"]}, "kind": "like", "title": "three"}))
            .await?,
    ];
    for s in [&mut reader, &mut other_node] {
        assert_eq!(s.ids_until(ids[2], DELIVERY).await?, ids);
    }
    assert_eq!(other_sse.ids_until(ids[2], DELIVERY).await?, ids);
    assert_eq!(bob.ids_until(ids[1], DELIVERY).await?, [ids[1]]);

    // Act: read one on node a.
    reader
        .send(&json!({"type": "read", "ids": [ids[1]]}))
        .await?;

    // Assert: every session of alice gets the new count; bob's is untouched.
    for s in [&mut other_node, &mut reader] {
        let unread = s.expect("unread", DELIVERY).await?;
        assert_eq!(unread.data["count"], 2, "{}", unread.data);
        assert_eq!(unread.data["by_kind"], json!({"comment": 1, "like": 1}));
        assert_eq!(unread.data["as_of"], ids[2]);
    }
    let unread = other_sse.expect("unread", DELIVERY).await?;
    assert_eq!(unread.data["count"], 2);

    // read_all from node b zeroes every badge.
    other_node.send(&json!({"type": "read_all"})).await?;
    for s in [&mut reader, &mut other_node] {
        let unread = s.expect("unread", DELIVERY).await?;
        assert_eq!(unread.data["count"], 0, "{}", unread.data);
        assert_eq!(unread.data["by_kind"], json!({}));
    }
    assert_eq!(other_sse.expect("unread", DELIVERY).await?.data["count"], 0);

    // Bob's session saw no read-state event: the next thing he gets is his next one.
    let his = stack.notify(&to_users(&["bob"], "for bob")).await?;
    assert_eq!(
        bob.expect("notification", DELIVERY)
            .await?
            .notification_id(),
        Some(his)
    );
    Ok(())
}

#[tokio::test]
async fn reading_an_unknown_or_foreign_id_answers_an_error_frame_and_keeps_the_session()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let bobs = stack.notify(&to_users(&["bob"], "bob's")).await?;
    let mut ws = gw
        .ws(&Connect::bearer(&stack.token("alice").await?))
        .await?;
    ws.expect("unread", DELIVERY).await?;

    for ids in [json!([bobs]), json!([bobs + 1000])] {
        ws.send(&json!({"type": "read", "ids": ids})).await?;
        let error = ws.expect("error", DELIVERY).await?;
        assert_eq!(error.data["code"], "not_found", "{}", error.data);
    }
    ws.send(&json!({"type": "no_such_command"})).await?;
    assert_eq!(
        ws.expect("error", DELIVERY).await?.data["code"],
        "invalid_request"
    );

    ws.send(&json!({"type": "ping"})).await?;
    ws.expect("pong", DELIVERY).await?;
    Ok(())
}

#[tokio::test]
async fn a_client_closing_its_websocket_gets_a_close_frame_back_and_its_session_ends()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let mut ws = gw
        .ws(&Connect::bearer(&stack.token("alice").await?))
        .await?;
    ws.expect("unread", DELIVERY).await?;

    let answer = ws.close().await?;

    // RFC 6455 §5.5.1: the endpoint that receives a close frame sends one back.
    assert_eq!(answer.map(|c| c.code), Some(1000), "no closing handshake");
    gw.readyz_until(DELIVERY, "the session ended", |r| r["sessions"] == 0)
        .await?;
    Ok(())
}
