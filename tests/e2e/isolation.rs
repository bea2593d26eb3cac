//! One user can never see, read or delete another's notifications, through any endpoint
//! or transport: the user always comes from the token, never from the request.

use std::time::Duration;

use reddot_tests::{
    Backend, ORIGIN, Stack,
    clients::{Connect, Events},
    gateway::{Gateway, to_users},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::helpers::call;

const DELIVERY: Duration = Duration::from_secs(20);

fn ids_of(list: &Value) -> Vec<i64> {
    list.as_array()
        .map(|items| items.iter().filter_map(|n| n["id"].as_i64()).collect())
        .unwrap_or_default()
}

/// Reads the iframe stream until it holds `marker`.
async fn iframe_until(res: &mut reqwest::Response, marker: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + DELIVERY;
    let mut body = String::new();
    while !body.contains(marker) {
        match tokio::time::timeout_at(deadline, res.chunk()).await {
            Ok(Ok(Some(chunk))) => body.push_str(&String::from_utf8_lossy(&chunk)),
            _ => anyhow::bail!("no {marker} in the iframe stream: {body}"),
        }
    }
    Ok(body)
}

/// How a notification id appears in a frame: `"id":N,` (so 1 does not match 12).
fn marker(id: i64) -> String {
    format!("\"id\":{id},")
}

#[tokio::test]
async fn a_user_never_sees_reads_or_deletes_another_users_notifications_on_any_endpoint()
-> anyhow::Result<()> {
    // Arrange: bob's notifications around alice's one.
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let alice = stack.token("alice").await?;
    let bob = stack.token("bob").await?;
    let b1 = stack.notify(&to_users(&["bob"], "bob 1")).await?;
    let a1 = stack.notify(&to_users(&["alice"], "alice 1")).await?;
    let b2 = stack.notify(&to_users(&["bob"], "bob 2")).await?;

    // Streams replaying everything from id 0: only alice's.
    let mut sse = gw.sse(&Connect::bearer(&alice).after(0)).await?;
    let mut ws = gw
        .ws(&Connect::query_token(&alice).after_in_query(0))
        .await?;
    let mut iframe = stack
        .http
        .get(gw.url(&format!(
            "/v1/iframe?origin={ORIGIN}&last_event_id=0&access_token={alice}"
        )))
        .send()
        .await?;
    assert_eq!(iframe.status(), StatusCode::OK);
    assert_eq!(sse.ids_until(a1, DELIVERY).await?, [a1], "SSE replay");
    assert_eq!(ws.ids_until(a1, DELIVERY).await?, [a1], "WebSocket replay");
    let mut frames = iframe_until(&mut iframe, &marker(a1)).await?;

    // Long poll, short poll and the inbox: only alice's.
    let polled = call(
        &stack,
        &gw,
        &alice,
        Method::GET,
        "/v1/poll?cursor=0&timeout=0",
        None,
    )
    .await?;
    assert_eq!(
        ids_of(&polled.json["notifications"]),
        [a1],
        "{}",
        polled.json
    );
    let unread = call(&stack, &gw, &alice, Method::GET, "/v1/unread", None).await?;
    assert_eq!(unread.json["count"], 1, "{}", unread.json);
    assert_eq!(unread.json["latest_id"], a1, "{}", unread.json);
    let inbox = call(
        &stack,
        &gw,
        &alice,
        Method::GET,
        "/v1/notifications?limit=100",
        None,
    )
    .await?;
    assert_eq!(ids_of(&inbox.json["items"]), [a1], "{}", inbox.json);
    let before = format!("/v1/notifications?before={}", b2 + 1);
    let page = call(&stack, &gw, &alice, Method::GET, &before, None).await?;
    assert_eq!(ids_of(&page.json["items"]), [a1], "{}", page.json);

    // Reading or deleting bob's: not found (not even "forbidden": no existence leak).
    for (what, method, path, body) in [
        (
            "read",
            Method::POST,
            "/v1/notifications/read".to_owned(),
            Some(json!({"ids": [b1]})),
        ),
        (
            "delete",
            Method::DELETE,
            format!("/v1/notifications/{b1}"),
            None,
        ),
    ] {
        let answer = call(&stack, &gw, &alice, method, &path, body.as_ref()).await?;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{what}: {}",
            answer.json
        );
    }
    let all = call(
        &stack,
        &gw,
        &alice,
        Method::POST,
        "/v1/notifications/read",
        Some(&json!({"all": true})),
    )
    .await?;
    assert!(all.status.is_success(), "{}", all.json);
    ws.send(&json!({"type": "read", "ids": [b2]})).await?;
    loop {
        // alice's own `unread` from read-all may come first.
        let event = ws.next(DELIVERY).await?;
        if event.kind == "error" {
            assert_eq!(event.data["code"], "not_found", "{}", event.data);
            break;
        }
        assert_eq!(event.kind, "unread", "{event:?}");
    }

    // Live: bob's next one is never pushed to alice's sessions; hers is.
    let b3 = stack.notify(&to_users(&["bob"], "bob 3")).await?;
    let a2 = stack.notify(&to_users(&["alice"], "alice 2")).await?;
    assert_eq!(sse.ids_until(a2, DELIVERY).await?, [a2], "SSE live");
    assert_eq!(ws.ids_until(a2, DELIVERY).await?, [a2], "WebSocket live");
    frames.push_str(&iframe_until(&mut iframe, &marker(a2)).await?);
    for b in [b1, b2, b3] {
        assert!(
            !frames.contains(&marker(b)),
            "bob's {b} in alice's iframe: {frames}"
        );
    }
    let polled = call(
        &stack,
        &gw,
        &alice,
        Method::GET,
        &format!("/v1/poll?cursor={a1}&timeout=0"),
        None,
    )
    .await?;
    assert_eq!(
        ids_of(&polled.json["notifications"]),
        [a2],
        "{}",
        polled.json
    );

    // Bob's state is untouched by all of it.
    let bobs = call(&stack, &gw, &bob, Method::GET, "/v1/notifications", None).await?;
    assert_eq!(ids_of(&bobs.json["items"]), [b3, b2, b1], "{}", bobs.json);
    assert!(
        bobs.json["items"]
            .as_array()
            .is_some_and(|items| items.iter().all(|n| n["read"] == false)),
        "{}",
        bobs.json
    );
    Ok(())
}
