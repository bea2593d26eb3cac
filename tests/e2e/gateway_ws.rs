//! WebSocket commands: `ping` → `pong`; `read` and `read_all` change the user's read
//! state, and every session of hers, on every node and transport, gets a fresh `unread`
//! (also after a delete, whose `as_of` keeps the client's badge exact).

use std::time::Duration;

use reddot_tests::{
    Backend, Stack,
    clients::{Connect, Events},
    gateway::{Gateway, to_users},
};
use serde_json::json;

use crate::helpers::call;

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

/// A client's badge is `count` plus the notifications it received above `as_of`. After
/// the user deleted her newest notification, `as_of` must not fall below it, or every
/// session that received it would count it again.
#[tokio::test]
async fn deleting_the_newest_notification_keeps_every_sessions_badge_exact() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    let mut ws = gw.ws(&Connect::bearer(&token)).await?;
    let mut sse = gw.sse(&Connect::bearer(&token)).await?;
    ws.expect("unread", DELIVERY).await?;
    sse.expect("unread", DELIVERY).await?;
    let older = stack.notify(&to_users(&["alice"], "older")).await?;
    let newest = stack.notify(&to_users(&["alice"], "newest")).await?;
    assert_eq!(ws.ids_until(newest, DELIVERY).await?, [older, newest]);
    assert_eq!(sse.ids_until(newest, DELIVERY).await?, [older, newest]);

    let path = format!("/v1/notifications/{newest}");
    let answer = call(&stack, &gw, &token, reqwest::Method::DELETE, &path, None).await?;
    assert!(answer.status.is_success(), "{answer:?}");

    let received = [older, newest];
    assert_eq!(badge(&mut ws, &received).await?, 1, "ws");
    assert_eq!(badge(&mut sse, &received).await?, 1, "sse");
    // Short polling's `latest_id` is still the newest one she can see.
    let unread = call(
        &stack,
        &gw,
        &token,
        reqwest::Method::GET,
        "/v1/unread",
        None,
    )
    .await?;
    assert_eq!(unread.json["latest_id"], older, "{}", unread.json);
    assert_eq!(unread.json["count"], 1);
    Ok(())
}

/// The badge a client shows after the next `unread`, having received `received`.
async fn badge(session: &mut impl Events, received: &[i64]) -> anyhow::Result<i64> {
    let unread = session.expect("unread", DELIVERY).await?;
    let (Some(count), Some(as_of)) = (unread.data["count"].as_i64(), unread.data["as_of"].as_i64())
    else {
        anyhow::bail!("no count or as_of in {}", unread.data);
    };
    Ok(count + received.iter().filter(|&&id| id > as_of).count() as i64)
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
    // As over HTTP: a read names 1-1000 ids.
    ws.send(&json!({"type": "read", "ids": []})).await?;
    let error = ws.expect("error", DELIVERY).await?;
    assert_eq!(error.data["code"], "invalid_request", "{}", error.data);

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

/// Raw frames: a command split over continuation frames, a binary frame, a frame over
/// the 64 KiB limit. These are what a real client library may send; the gateway reads
/// them itself (one stream per connection), so each has its own answer.
mod framing {
    use tokio_tungstenite::tungstenite::{
        Message,
        protocol::frame::{
            Frame,
            coding::{Data, OpCode},
        },
    };

    use super::*;

    fn part(text: &str, opcode: Data, last: bool) -> Message {
        Message::Frame(Frame::message(text.to_owned(), OpCode::Data(opcode), last))
    }

    #[tokio::test]
    async fn a_command_split_over_continuation_frames_is_answered() -> anyhow::Result<()> {
        let stack = Stack::start(Backend::Sqlite).await?;
        let gw = Gateway::start(&stack, "node-a").await?;
        let mut ws = gw
            .ws(&Connect::bearer(&stack.token("alice").await?))
            .await?;
        ws.expect("unread", DELIVERY).await?;

        ws.send_message(part(r#"{"ty"#, Data::Text, false)).await?;
        ws.send_message(part(r#"pe":"pi"#, Data::Continue, false))
            .await?;
        ws.send_message(part(r#"ng"}"#, Data::Continue, true))
            .await?;

        let pong = ws.expect("pong", DELIVERY).await?;
        assert_eq!(pong.data, json!({"type": "pong"}));
        Ok(())
    }

    #[tokio::test]
    async fn a_binary_frame_gets_an_error_frame_and_the_session_stays() -> anyhow::Result<()> {
        let stack = Stack::start(Backend::Sqlite).await?;
        let gw = Gateway::start(&stack, "node-a").await?;
        let mut ws = gw
            .ws(&Connect::bearer(&stack.token("alice").await?))
            .await?;
        ws.expect("unread", DELIVERY).await?;

        ws.send_message(Message::Binary(br#"{"type":"ping"}"#.to_vec().into()))
            .await?;
        let error = ws.expect("error", DELIVERY).await?;
        assert_eq!(error.data["code"], "invalid_request", "{}", error.data);

        stack.notify(&to_users(&["alice"], "still here")).await?;
        let n = ws.expect("notification", DELIVERY).await?;
        assert_eq!(n.data["title"], "still here");
        Ok(())
    }

    #[tokio::test]
    async fn a_message_over_64_kib_is_closed_with_1009() -> anyhow::Result<()> {
        let stack = Stack::start(Backend::Sqlite).await?;
        let gw = Gateway::start(&stack, "node-a").await?;
        let mut ws = gw
            .ws(&Connect::bearer(&stack.token("alice").await?))
            .await?;
        ws.expect("unread", DELIVERY).await?;
        let mut other = gw.ws(&Connect::bearer(&stack.token("bob").await?)).await?;
        other.expect("unread", DELIVERY).await?;

        // One frame, and the same size in continuations: both are one message too big.
        let big = format!(r#"{{"type":"read","ids":[{}1]}}"#, "1,".repeat(40 * 1024));
        ws.send_message(Message::Text(big.clone().into())).await?;
        let half = big.len() / 2;
        other
            .send_message(part(&big[..half], Data::Text, false))
            .await?;
        other
            .send_message(part(&big[half..], Data::Continue, true))
            .await?;

        for client in [&mut ws, &mut other] {
            assert!(client.next_or_end(DELIVERY).await?.is_none());
            assert_eq!(client.closed().map(|c| c.code), Some(1009));
        }
        gw.readyz_until(DELIVERY, "both sessions ended", |r| r["sessions"] == 0)
            .await?;
        Ok(())
    }
}
