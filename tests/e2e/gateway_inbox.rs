//! The inbox and the polling transports: `GET /v1/notifications` (paging, filters, read
//! state), read / read all / delete, broadcasts and expiry as every view sees them,
//! long polling (`/v1/poll`), short polling (`/v1/unread` with `ETag`), the iframe
//! stream, and the producer's admin views of the same inbox.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use futures_util::future::join_all;
use reddot_tests::{
    API_KEY, Backend, ORIGIN, Stack,
    clients::{Connect, Events},
    gateway::{Gateway, to_all, to_users, token_expiring_in},
};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::helpers::{Answer, call, eventually};

const DELIVERY: Duration = Duration::from_secs(20);

async fn get(stack: &Stack, gw: &Gateway, token: &str, path: &str) -> anyhow::Result<Answer> {
    call(stack, gw, token, reqwest::Method::GET, path, None).await
}

/// `GET path`, expecting 200; the JSON body.
async fn get_ok(stack: &Stack, gw: &Gateway, token: &str, path: &str) -> anyhow::Result<Value> {
    let answer = get(stack, gw, token, path).await?;
    anyhow::ensure!(
        answer.status == StatusCode::OK,
        "GET {path}: expected 200, got {} {}",
        answer.status,
        answer.json
    );
    Ok(answer.json)
}

async fn mark_read(
    stack: &Stack,
    gw: &Gateway,
    token: &str,
    body: &Value,
) -> anyhow::Result<Answer> {
    call(
        stack,
        gw,
        token,
        reqwest::Method::POST,
        "/v1/notifications/read",
        Some(body),
    )
    .await
}

async fn delete(stack: &Stack, gw: &Gateway, token: &str, id: i64) -> anyhow::Result<Answer> {
    call(
        stack,
        gw,
        token,
        reqwest::Method::DELETE,
        &format!("/v1/notifications/{id}"),
        None,
    )
    .await
}

/// The ids of a page's `items`, in the order given.
fn item_ids(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|n| n["id"].as_i64()).collect())
        .unwrap_or_default()
}

/// The ids of a long-poll answer's `notifications`.
fn polled_ids(answer: &Value) -> Vec<i64> {
    answer["notifications"]
        .as_array()
        .map(|items| items.iter().filter_map(|n| n["id"].as_i64()).collect())
        .unwrap_or_default()
}

async fn unread_count(stack: &Stack, gw: &Gateway, token: &str) -> anyhow::Result<i64> {
    let unread = get_ok(stack, gw, token, "/v1/unread").await?;
    unread["count"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no count in {unread}"))
}

async fn inbox_pages_newest_first_and_filters(backend: Backend) -> anyhow::Result<()> {
    let stack = Stack::start(backend).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    let mut ids = Vec::new();
    for i in 0..25 {
        let kind = if i % 5 == 0 { "like" } else { "comment" };
        ids.push(
            stack
                .notify(
                    &json!({"to": {"users": ["alice"]}, "kind": kind, "title": format!("n{i}")}),
                )
                .await?,
        );
    }
    stack.notify(&to_users(&["bob"], "bob's own")).await?;
    let newest_first: Vec<i64> = ids.iter().rev().copied().collect();

    // Page 1: default limit 20, newest first.
    let first = get_ok(&stack, &gw, &token, "/v1/notifications").await?;
    assert_eq!(item_ids(&first), newest_first[..20], "{first}");
    assert_eq!(first["next_before"], ids[5], "{first}");
    assert_eq!(first["cursor"], ids[24]);
    for item in first["items"].as_array().unwrap() {
        assert_eq!(item["read"], false, "{item}");
        assert_eq!(item["audience"], "user");
    }

    // Page 2: the remaining 5, and no further page.
    let second = get_ok(
        &stack,
        &gw,
        &token,
        &format!("/v1/notifications?before={}", ids[5]),
    )
    .await?;
    assert_eq!(item_ids(&second), newest_first[20..], "{second}");
    assert_eq!(second["next_before"], Value::Null, "{second}");
    assert_eq!(second["cursor"], ids[24]);
    // A page exactly as long as what is left has no next page either.
    let exact = get_ok(
        &stack,
        &gw,
        &token,
        &format!("/v1/notifications?before={}&limit=5", ids[5]),
    )
    .await?;
    assert_eq!(item_ids(&exact), newest_first[20..], "{exact}");
    assert_eq!(exact["next_before"], Value::Null, "{exact}");

    for bad in ["0", "101", "-1", "ten"] {
        let answer = get(
            &stack,
            &gw,
            &token,
            &format!("/v1/notifications?limit={bad}"),
        )
        .await?;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "limit={bad}");
    }

    // kind filter.
    let likes = get_ok(&stack, &gw, &token, "/v1/notifications?kind=like").await?;
    let like_ids: Vec<i64> = ids.iter().step_by(5).rev().copied().collect();
    assert_eq!(item_ids(&likes), like_ids, "{likes}");
    assert!(
        likes["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["kind"] == "like")
    );

    // Read state: unread_only and the `read` flag.
    let read_now = [ids[24], ids[10], ids[0]];
    let answer = mark_read(&stack, &gw, &token, &json!({"ids": read_now})).await?;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    let unread = get_ok(
        &stack,
        &gw,
        &token,
        "/v1/notifications?unread_only=true&limit=100",
    )
    .await?;
    let expected: Vec<i64> = newest_first
        .iter()
        .copied()
        .filter(|id| !read_now.contains(id))
        .collect();
    assert_eq!(item_ids(&unread), expected, "{unread}");
    assert_eq!(unread["next_before"], Value::Null);
    let all = get_ok(&stack, &gw, &token, "/v1/notifications?limit=100").await?;
    assert_eq!(item_ids(&all), newest_first);
    for item in all["items"].as_array().unwrap() {
        let id = item["id"].as_i64().unwrap();
        assert_eq!(item["read"], read_now.contains(&id), "{item}");
    }
    let unread_likes = get_ok(
        &stack,
        &gw,
        &token,
        "/v1/notifications?kind=like&unread_only=true",
    )
    .await?;
    assert_eq!(item_ids(&unread_likes), [ids[20], ids[15], ids[5]]);
    Ok(())
}

#[tokio::test]
async fn the_inbox_pages_newest_first_and_filters_by_kind_and_read_state() -> anyhow::Result<()> {
    inbox_pages_newest_first_and_filters(Backend::Sqlite).await
}

#[tokio::test]
async fn the_inbox_pages_newest_first_and_filters_by_kind_and_read_state_on_postgres()
-> anyhow::Result<()> {
    inbox_pages_newest_first_and_filters(Backend::Postgres).await
}

/// `cursor` is the newest id visible: never below an item of its own page, however
/// busy the writers (read in three statements, ~40 % of the pages read during a stream
/// of posts showed an item above their cursor).
async fn the_cursor_covers_its_page_while_notifications_arrive(
    backend: Backend,
) -> anyhow::Result<()> {
    let stack = Stack::start(backend).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let alice = token_expiring_in("alice", 600);
    let writing = AtomicBool::new(true);
    let writer = async {
        let mut sent = 0;
        while writing.load(Ordering::Relaxed) {
            let body = if sent % 3 == 2 {
                to_all("everyone")
            } else {
                to_users(&["alice"], "for alice")
            };
            stack.notify(&body).await?;
            sent += 1;
        }
        anyhow::Ok(sent)
    };
    let reader = async {
        let mut pages = 0;
        let mut above = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while pages < 200 && Instant::now() < deadline {
            let page = get_ok(&stack, &gw, &alice, "/v1/notifications?limit=5").await;
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    writing.store(false, Ordering::Relaxed);
                    return Err(e);
                }
            };
            let cursor = page["cursor"].as_i64().unwrap_or_default();
            if let Some(newest) = page["items"][0]["id"].as_i64()
                && newest > cursor
            {
                above.push((newest, cursor));
            }
            pages += 1;
        }
        writing.store(false, Ordering::Relaxed);
        anyhow::Ok((pages, above))
    };
    let (sent, read) = tokio::join!(writer, reader);
    let (sent, (pages, above)) = (sent?, read?);
    assert!(
        sent > 20,
        "only {sent} notifications written during the reads"
    );
    assert!(
        above.is_empty(),
        "{} of {pages} pages showed an item above their cursor (item, cursor): {above:?}",
        above.len()
    );
    Ok(())
}

#[tokio::test]
async fn the_cursor_covers_its_page_while_notifications_arrive_on_sqlite() -> anyhow::Result<()> {
    the_cursor_covers_its_page_while_notifications_arrive(Backend::Sqlite).await
}

#[tokio::test]
async fn the_cursor_covers_its_page_while_notifications_arrive_on_postgres() -> anyhow::Result<()> {
    the_cursor_covers_its_page_while_notifications_arrive(Backend::Postgres).await
}

/// A read body is `{"ids": [...]}` or `{"all": true}`; anything else is a 400 naming
/// the field, and nothing is marked. `null` counts as absent, as in the producer's bodies.
#[tokio::test]
async fn a_read_body_that_is_neither_ids_nor_all_is_refused_naming_the_field() -> anyhow::Result<()>
{
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let alice = token_expiring_in("alice", 600);
    let id = stack.notify(&to_users(&["alice"], "one")).await?;
    let too_many: Vec<i64> = (1..=1001).collect();

    for (body, field) in [
        (json!({}), "ids"),
        (json!({"ids": [id], "all": true}), "ids"),
        (json!({"ids": []}), "ids"),
        (json!({"ids": too_many}), "ids"),
        (json!({"ids": [0]}), "ids"),
        (json!({"ids": ["1"]}), "ids"),
        (json!({"ids": id}), "ids"),
        (json!({"all": false}), "all"),
        (json!({"all": "yes"}), "all"),
    ] {
        let answer = mark_read(&stack, &gw, &alice, &body).await?;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            answer.json
        );
        assert_eq!(answer.json["error"]["code"], "invalid_request", "{body}");
        assert_eq!(
            answer.json["error"]["field"], field,
            "{body}: {}",
            answer.json
        );
    }
    assert_eq!(
        unread_count(&stack, &gw, &alice).await?,
        1,
        "nothing was marked"
    );

    let answer = mark_read(&stack, &gw, &alice, &json!({"ids": null, "all": true})).await?;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["unread"]["count"], 0, "{}", answer.json);
    Ok(())
}

#[tokio::test]
async fn reading_and_deleting_lower_the_count_and_foreign_or_unknown_ids_are_not_found()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let alice = stack.token("alice").await?;
    let bob = stack.token("bob").await?;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            stack
                .notify(&to_users(&["alice"], &format!("a{i}")))
                .await?,
        );
    }
    let bobs = stack.notify(&to_users(&["bob"], "bob's")).await?;
    assert_eq!(unread_count(&stack, &gw, &alice).await?, 4);

    // Read one.
    let answer = mark_read(&stack, &gw, &alice, &json!({"ids": [ids[0]]})).await?;
    assert!(answer.status.is_success(), "{answer:?}");
    assert_eq!(unread_count(&stack, &gw, &alice).await?, 3);

    // Delete an unread one: gone from the list and the count.
    let answer = delete(&stack, &gw, &alice, ids[1]).await?;
    assert!(answer.status.is_success(), "{answer:?}");
    assert_eq!(unread_count(&stack, &gw, &alice).await?, 2);
    let list = get_ok(&stack, &gw, &alice, "/v1/notifications").await?;
    assert_eq!(item_ids(&list), [ids[3], ids[2], ids[0]], "{list}");

    // Read all.
    let answer = mark_read(&stack, &gw, &alice, &json!({"all": true})).await?;
    assert!(answer.status.is_success(), "{answer:?}");
    let unread = get_ok(&stack, &gw, &alice, "/v1/unread").await?;
    assert_eq!(unread["count"], 0, "{unread}");
    assert_eq!(unread["by_kind"], json!({}));
    let list = get_ok(&stack, &gw, &alice, "/v1/notifications").await?;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["read"] == true),
        "{list}"
    );

    // Another user's or an unknown id: 404 for DELETE and for read.
    for id in [bobs, bobs + 1000] {
        let answer = delete(&stack, &gw, &alice, id).await?;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "DELETE {id}: {answer:?}"
        );
        let answer = mark_read(&stack, &gw, &alice, &json!({"ids": [id]})).await?;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "read {id}: {answer:?}"
        );
    }
    // Bob's notification is untouched by alice's attempts.
    assert_eq!(unread_count(&stack, &gw, &bob).await?, 1);
    assert_eq!(
        item_ids(&get_ok(&stack, &gw, &bob, "/v1/notifications").await?),
        [bobs]
    );
    Ok(())
}

#[tokio::test]
async fn a_broadcast_reaches_users_first_seen_later_and_read_state_stays_per_user()
-> anyhow::Result<()> {
    broadcast_reaches_users_first_seen_later(Backend::Sqlite).await
}

#[tokio::test]
async fn a_broadcast_reaches_users_first_seen_later_and_read_state_stays_per_user_on_postgres()
-> anyhow::Result<()> {
    broadcast_reaches_users_first_seen_later(Backend::Postgres).await
}

async fn broadcast_reaches_users_first_seen_later(backend: Backend) -> anyhow::Result<()> {
    let stack = Stack::start(backend).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let id = stack.notify(&to_all("maintenance tonight")).await?;

    // carol and dave have never been seen before.
    let carol = stack.token("carol").await?;
    let dave = stack.token("dave").await?;
    for token in [&carol, &dave] {
        let list = get_ok(&stack, &gw, token, "/v1/notifications").await?;
        assert_eq!(item_ids(&list), [id], "{list}");
        assert_eq!(list["items"][0]["audience"], "all");
        assert_eq!(list["items"][0]["read"], false);
        assert_eq!(list["cursor"], id);
        let unread = get_ok(&stack, &gw, token, "/v1/unread").await?;
        assert_eq!(
            unread,
            json!({"count": 1, "by_kind": {"announcement": 1}, "latest_id": id})
        );
    }

    let answer = mark_read(&stack, &gw, &carol, &json!({"ids": [id]})).await?;
    assert!(answer.status.is_success(), "{answer:?}");
    assert_eq!(unread_count(&stack, &gw, &carol).await?, 0);
    assert_eq!(unread_count(&stack, &gw, &dave).await?, 1);
    let daves = get_ok(&stack, &gw, &dave, "/v1/notifications").await?;
    assert_eq!(daves["items"][0]["read"], false, "{daves}");
    let carols = get_ok(&stack, &gw, &carol, "/v1/notifications").await?;
    assert_eq!(carols["items"][0]["read"], true, "{carols}");
    Ok(())
}

#[tokio::test]
async fn an_expired_notification_is_neither_listed_nor_counted_nor_replayed() -> anyhow::Result<()>
{
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    let keep = stack.notify(&to_users(&["alice"], "stays")).await?;
    let expires = chrono::Utc::now() + chrono::Duration::seconds(2);
    let expires_at = expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let short = stack
        .notify(&json!({"to": {"users": ["alice"]}, "kind": "comment",
                        "title": "soon gone", "expires_at": expires_at}))
        .await?;
    let short_broadcast = stack
        .notify(&json!({"to": {"all": true}, "kind": "announcement",
                        "title": "soon gone too", "expires_at": expires_at}))
        .await?;
    let list = get_ok(&stack, &gw, &token, "/v1/notifications").await?;
    assert_eq!(item_ids(&list), [short_broadcast, short, keep], "{list}");
    assert_eq!(unread_count(&stack, &gw, &token).await?, 3);

    // Wait, with a deadline, until the expiry is past.
    eventually(Duration::from_secs(10), "expires_at passed", || async {
        Ok((chrono::Utc::now() > expires + chrono::Duration::milliseconds(100)).then_some(()))
    })
    .await?;

    let list = get_ok(&stack, &gw, &token, "/v1/notifications").await?;
    assert_eq!(item_ids(&list), [keep], "{list}");
    assert_eq!(list["cursor"], keep, "{list}");
    let unread = get_ok(&stack, &gw, &token, "/v1/unread").await?;
    assert_eq!(
        unread,
        json!({"count": 1, "by_kind": {"comment": 1}, "latest_id": keep})
    );
    let replay = get_ok(&stack, &gw, &token, "/v1/poll?cursor=0&timeout=0").await?;
    assert_eq!(polled_ids(&replay), [keep], "{replay}");
    assert_eq!(replay["cursor"], keep);
    // Nothing after `keep` is visible any more: the poll waits and times out.
    let answer = get(
        &stack,
        &gw,
        &token,
        &format!("/v1/poll?cursor={keep}&timeout=1"),
    )
    .await?;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{answer:?}");
    Ok(())
}

/// An open tab's badge drops when a notification it counts expires: the count is
/// pushed again within seconds of the expiry, for one counted at connect (a
/// broadcast) and for one delivered live afterwards. Before, the badge kept counting
/// both until the next read.
#[tokio::test]
async fn open_sessions_get_a_new_count_when_a_counted_notification_expires() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    let in_secs = |s: i64| {
        (chrono::Utc::now() + chrono::Duration::seconds(s))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    stack.notify(&to_users(&["alice"], "stays")).await?;
    stack
        .notify(&json!({"to": {"all": true}, "kind": "announcement",
                        "title": "gone in 2 s", "expires_at": in_secs(2)}))
        .await?;
    let mut sse = gw.sse(&Connect::bearer(&token)).await?;
    let mut ws = gw.ws(&Connect::bearer(&token)).await?;
    assert_eq!(sse.expect("unread", DELIVERY).await?.data["count"], 2);
    assert_eq!(ws.expect("unread", DELIVERY).await?.data["count"], 2);
    let live = stack
        .notify(&json!({"to": {"users": ["alice"]}, "kind": "comment",
                        "title": "gone in 4 s", "expires_at": in_secs(4)}))
        .await?;

    let started = Instant::now();
    let (sse_counts, ws_counts) = tokio::try_join!(
        counts_until_one_comment(&mut sse, live),
        counts_until_one_comment(&mut ws, live)
    )?;
    // The live one expires 4 s after it was posted; recounts are spread over 5 s.
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "took {:?}; counts: SSE {sse_counts:?}, WebSocket {ws_counts:?}",
        started.elapsed()
    );
    Ok(())
}

/// The counts `client` is pushed until one is just the comment `live`, which it covers.
async fn counts_until_one_comment<C: Events>(
    client: &mut C,
    live: i64,
) -> anyhow::Result<Vec<Value>> {
    let mut counts = Vec::new();
    loop {
        let event = client.next(Duration::from_secs(10)).await?;
        if event.kind != "unread" {
            continue;
        }
        counts.push(event.data["count"].clone());
        if event.data["count"] == 1 {
            anyhow::ensure!(
                event.data["by_kind"] == json!({"comment": 1}),
                "{}",
                event.data
            );
            anyhow::ensure!(
                event.data["as_of"].as_i64() >= Some(live),
                "the count covers the live one: {}",
                event.data
            );
            return Ok(counts);
        }
    }
}

#[tokio::test]
async fn a_long_poll_answers_at_once_wakes_on_a_post_and_times_out_with_204() -> anyhow::Result<()>
{
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    let first = stack.notify(&to_users(&["alice"], "first")).await?;

    // Something newer than the cursor exists: answered at once.
    let started = Instant::now();
    let answer = get_ok(&stack, &gw, &token, "/v1/poll?cursor=0&timeout=30").await?;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(polled_ids(&answer), [first], "{answer}");
    assert_eq!(answer["cursor"], first);
    assert_eq!(answer["unread"]["count"], 1, "{answer}");
    assert_eq!(answer["notifications"][0]["title"], "first");

    // The notification is the same JSON text as on the other transports (SSE here).
    let raw_poll = stack
        .http
        .get(gw.url("/v1/poll?cursor=0&timeout=1"))
        .bearer_auth(&token)
        .send()
        .await?
        .text()
        .await?;
    let mut sse = gw.sse(&Connect::bearer(&token).after(0)).await?;
    sse.ids_until(first, DELIVERY).await?;
    let raw_sse = String::from_utf8_lossy(&sse.raw()).into_owned();
    let id_line = format!("id: {first}");
    let sse_json = raw_sse
        .lines()
        .skip_while(|l| *l != id_line)
        .find_map(|l| l.strip_prefix("data: "))
        .ok_or_else(|| anyhow::anyhow!("no data after {id_line} in {raw_sse}"))?;
    assert!(
        raw_poll.contains(sse_json),
        "SSE sent {sse_json}, the long poll {raw_poll}"
    );

    // Nothing newer: a post ~300 ms later wakes the held request.
    let second = {
        let path = format!("/v1/poll?cursor={first}&timeout=20");
        let held = get(&stack, &gw, &token, &path);
        let post = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let id = stack.notify(&to_users(&["alice"], "second")).await?;
            anyhow::Ok((id, Instant::now()))
        };
        let (held, posted) = tokio::join!(held, post);
        let (held, (id, posted_at)) = (held?, posted?);
        let woke_after = posted_at.elapsed();
        assert_eq!(held.status, StatusCode::OK, "{held:?}");
        assert_eq!(polled_ids(&held.json), [id], "{}", held.json);
        assert_eq!(held.json["cursor"], id);
        assert_eq!(held.json["unread"]["count"], 2);
        assert!(
            woke_after < Duration::from_secs(1),
            "the long poll answered {woke_after:?} after the post"
        );
        id
    };

    // Nothing at all: timeout=1 → 204 after about a second.
    let started = Instant::now();
    let answer = get(
        &stack,
        &gw,
        &token,
        &format!("/v1/poll?cursor={second}&timeout=1"),
    )
    .await?;
    let took = started.elapsed();
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{answer:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "204 after {took:?}"
    );

    // No cursor means "from now": old notifications are not returned.
    let answer = get(&stack, &gw, &token, "/v1/poll?timeout=1").await?;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{answer:?}");
    let held = get(&stack, &gw, &token, "/v1/poll?timeout=20");
    let post = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stack.notify(&to_users(&["alice"], "third")).await
    };
    let (held, third) = tokio::join!(held, post);
    let (held, third) = (held?, third?);
    assert_eq!(held.status, StatusCode::OK, "{held:?}");
    assert_eq!(polled_ids(&held.json), [third], "{}", held.json);
    Ok(())
}

#[tokio::test]
async fn short_polling_unread_answers_304_until_something_changes() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;

    let empty = get(&stack, &gw, &token, "/v1/unread").await?;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(
        empty.json,
        json!({"count": 0, "by_kind": {}, "latest_id": 0})
    );

    let id = stack.notify(&to_users(&["alice"], "one")).await?;
    let first = get(&stack, &gw, &token, "/v1/unread").await?;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.json,
        json!({"count": 1, "by_kind": {"comment": 1}, "latest_id": id})
    );
    let etag = first
        .headers
        .get(header::ETAG)
        .expect("an ETag")
        .to_str()?
        .to_owned();
    assert_ne!(
        empty.headers.get(header::ETAG).map(|v| v.to_str().ok()),
        Some(Some(etag.as_str()))
    );

    let conditional = |etag: String| {
        let req = stack
            .http
            .get(gw.url("/v1/unread"))
            .bearer_auth(&token)
            .header(header::IF_NONE_MATCH, etag);
        async move { Answer::from(req.send().await?).await }
    };
    let unchanged = conditional(etag.clone()).await?;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED, "{unchanged:?}");

    let second = stack.notify(&to_users(&["alice"], "two")).await?;
    let changed = conditional(etag.clone()).await?;
    assert_eq!(changed.status, StatusCode::OK, "{changed:?}");
    assert_eq!(changed.json["count"], 2);
    assert_eq!(changed.json["latest_id"], second);
    let new_etag = changed
        .headers
        .get(header::ETAG)
        .expect("an ETag")
        .to_str()?
        .to_owned();
    assert_ne!(new_etag, etag);
    assert_eq!(
        conditional(new_etag.clone()).await?.status,
        StatusCode::NOT_MODIFIED
    );

    // Reading changes it too.
    mark_read(&stack, &gw, &token, &json!({"ids": [second]})).await?;
    let after_read = conditional(new_etag).await?;
    assert_eq!(after_read.status, StatusCode::OK);
    assert_eq!(after_read.json["count"], 1);
    Ok(())
}

/// `GET /v1/unread` with `If-None-Match: etag`.
async fn unread_if_none_match(
    stack: &Stack,
    gw: &Gateway,
    token: &str,
    etag: &str,
) -> anyhow::Result<Answer> {
    let req = stack
        .http
        .get(gw.url("/v1/unread"))
        .bearer_auth(token)
        .header(header::IF_NONE_MATCH, etag);
    Answer::from(req.send().await?).await
}

fn etag_of(answer: &Answer) -> anyhow::Result<String> {
    Ok(answer
        .headers
        .get(header::ETAG)
        .ok_or_else(|| anyhow::anyhow!("no ETag in {answer:?}"))?
        .to_str()?
        .to_owned())
}

/// Unchanged polls are answered from the gateway's memory; this checks that a `304`
/// never hides a notification the producer acknowledged before the poll, over many
/// rounds on both databases (each round: cached 304, then a post, then at once a poll).
#[tokio::test]
async fn short_polling_never_answers_304_after_a_new_notification() -> anyhow::Result<()> {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let stack = Stack::start(backend).await?;
        let gw = Gateway::start(&stack, "node-a").await?;
        let token = stack.token("carol").await?;
        let mut etag = etag_of(&get(&stack, &gw, &token, "/v1/unread").await?)?;
        for round in 1..=15i64 {
            let title = format!("round {round}");
            let body = if round % 3 == 0 {
                to_all(&title)
            } else {
                to_users(&["carol", "dave"], &title)
            };
            // Twice unchanged: the second is surely answered from the cache.
            for _ in 0..2 {
                let same = unread_if_none_match(&stack, &gw, &token, &etag).await?;
                assert_eq!(
                    same.status,
                    StatusCode::NOT_MODIFIED,
                    "round {round}: {same:?}"
                );
            }
            let id = stack.notify(&body).await?;
            let changed = unread_if_none_match(&stack, &gw, &token, &etag).await?;
            assert_eq!(
                changed.status,
                StatusCode::OK,
                "{backend:?} round {round}: a 304 hid notification {id}"
            );
            assert_eq!(changed.json["count"], round, "{backend:?} round {round}");
            assert_eq!(changed.json["latest_id"], id);
            etag = etag_of(&changed)?;
        }
    }
    Ok(())
}

/// Concurrent polls share one watermark read: each must still get her own answer.
/// Twenty users poll at once (twice unchanged, so cached), then a notification to half
/// of them is acknowledged, and at once all twenty poll again: exactly that half sees
/// it, the others stay `304`.
#[tokio::test]
async fn concurrent_short_polls_of_many_users_each_see_only_their_own_changes() -> anyhow::Result<()>
{
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let stack = Stack::start(backend).await?;
        let gw = Gateway::start(&stack, "node-a").await?;
        let users: Vec<String> = (0..20).map(|i| format!("poller.{i}")).collect();
        let mut tokens = Vec::new();
        for user in &users {
            tokens.push(stack.token(user).await?);
        }
        let mut etags = Vec::new();
        for answer in join_all(tokens.iter().map(|t| get(&stack, &gw, t, "/v1/unread"))).await {
            etags.push(etag_of(&answer?)?);
        }
        let poll_all = || {
            join_all(
                tokens
                    .iter()
                    .zip(&etags)
                    .map(|(t, e)| unread_if_none_match(&stack, &gw, t, e)),
            )
        };
        for _ in 0..2 {
            for (user, answer) in users.iter().zip(poll_all().await) {
                let answer = answer?;
                assert_eq!(
                    answer.status,
                    StatusCode::NOT_MODIFIED,
                    "{backend:?} {user}: {answer:?}"
                );
            }
        }
        let half: Vec<&str> = users.iter().take(10).map(String::as_str).collect();
        let id = stack.notify(&to_users(&half, "for half")).await?;
        for (i, (user, answer)) in users.iter().zip(poll_all().await).enumerate() {
            let answer = answer?;
            if i < 10 {
                assert_eq!(
                    answer.status,
                    StatusCode::OK,
                    "{backend:?} {user}: a 304 hid {id}"
                );
                assert_eq!(answer.json["count"], 1, "{backend:?} {user}");
                assert_eq!(answer.json["latest_id"], id, "{backend:?} {user}");
            } else {
                assert_eq!(
                    answer.status,
                    StatusCode::NOT_MODIFIED,
                    "{backend:?} {user}: {answer:?}"
                );
            }
        }
    }
    Ok(())
}

/// A read on another node reaches a poller's cached view through the broker's
/// read-state event; an expiring broadcast ends a cached view at its `expires_at`.
#[tokio::test]
async fn short_polling_sees_reads_on_other_nodes_and_expiry() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let a = Gateway::start(&stack, "node-a").await?;
    let b = Gateway::start(&stack, "node-b").await?;
    let token = stack.token("erin").await?;
    let id = stack
        .notify(&to_users(&["erin"], "read me elsewhere"))
        .await?;
    let expires = chrono::Utc::now() + chrono::Duration::seconds(6);
    let expires_at = expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    stack
        .notify(&json!({"to": {"all": true}, "kind": "flash", "title": "gone soon", "expires_at": expires_at}))
        .await?;

    let first = eventually(DELIVERY, "a cached view on node a", || async {
        let answer = get(&stack, &a, &token, "/v1/unread").await?;
        let etag = etag_of(&answer)?;
        let again = unread_if_none_match(&stack, &a, &token, &etag).await?;
        Ok((again.status == StatusCode::NOT_MODIFIED).then_some((answer.json, etag)))
    })
    .await?;
    assert_eq!(first.0["count"], 2, "{}", first.0);

    let read = mark_read(&stack, &b, &token, &json!({"ids": [id]})).await?;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    let after_read = eventually(
        Duration::from_secs(5),
        "node a sees the read on node b",
        || async {
            let answer = unread_if_none_match(&stack, &a, &token, &first.1).await?;
            Ok((answer.status == StatusCode::OK).then_some(answer))
        },
    )
    .await?;
    assert_eq!(after_read.json["count"], 1, "{}", after_read.json);
    let etag = etag_of(&after_read)?;
    assert_eq!(
        unread_if_none_match(&stack, &a, &token, &etag)
            .await?
            .status,
        StatusCode::NOT_MODIFIED
    );

    tokio::time::sleep_until(
        Instant::now()
            + Duration::from_millis(
                u64::try_from((expires - chrono::Utc::now()).num_milliseconds()).unwrap_or(0) + 50,
            ),
    )
    .await;
    let expired = unread_if_none_match(&stack, &a, &token, &etag).await?;
    assert_eq!(expired.status, StatusCode::OK, "{expired:?}");
    assert_eq!(expired.json["count"], 0, "{}", expired.json);
    Ok(())
}

/// Reads an iframe stream until `done` holds for the body so far, failing after `timeout`.
async fn read_iframe_until(
    res: &mut reqwest::Response,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    let mut body = Vec::new();
    loop {
        if done(&String::from_utf8_lossy(&body)) {
            return Ok(String::from_utf8_lossy(&body).into_owned());
        }
        match tokio::time::timeout_at(deadline, res.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            Ok(Ok(None)) => anyhow::bail!(
                "the stream ended; body so far: {}",
                String::from_utf8_lossy(&body)
            ),
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => anyhow::bail!(
                "not within {timeout:?}; body so far: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
}

#[tokio::test]
async fn the_iframe_stream_posts_escaped_notifications_to_the_allowed_origin_only()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    let title = "</script><script>alert(1)</script>";
    let hostile = stack.notify(&to_users(&["alice"], title)).await?;

    let url = |origin: &str| {
        format!(
            "{}?origin={}&last_event_id=0&access_token={token}",
            gw.url("/v1/iframe"),
            urlencode(origin)
        )
    };
    let mut res = stack.http.get(url(ORIGIN)).send().await?;
    assert_eq!(res.status(), StatusCode::OK);
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");

    let marker = format!("\"id\":{hostile}");
    let body = read_iframe_until(&mut res, DELIVERY, |b| b.contains(&marker)).await?;
    // A live one arrives as well.
    let live = stack.notify(&to_users(&["alice"], "live one")).await?;
    let live_marker = format!("\"id\":{live}");
    let body = format!(
        "{body}{}",
        read_iframe_until(&mut res, DELIVERY, |b| b.contains(&live_marker)).await?
    );

    assert!(!body.contains(title), "unescaped title in {body}");
    assert!(!body.contains("<script>alert"), "{body}");
    // Each event exactly as the contract writes it:
    // `<script>parent.postMessage(<payload>, "<origin>")</script>`.
    let (prefix, suffix) = (
        "<script>parent.postMessage(",
        format!(", {})</script>", json!(ORIGIN)),
    );
    let mut seen = Vec::new();
    for line in body.lines().filter(|l| l.contains("parent.postMessage(")) {
        let payload = line
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(&suffix))
            .unwrap_or_else(|| panic!("not `{prefix}<payload>{suffix}`: {line}"));
        let payload: Value = serde_json::from_str(payload)?;
        if payload["type"] == "notification" {
            seen.push(payload);
        }
    }
    let ids: Vec<i64> = seen.iter().filter_map(|n| n["id"].as_i64()).collect();
    assert_eq!(ids, [hostile, live], "{body}");
    assert_eq!(seen[0]["title"], title);
    assert_eq!(seen[1]["title"], "live one");

    for origin in ["http://evil.test", "*", ""] {
        let res = stack.http.get(url(origin)).send().await?;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "origin {origin:?}");
    }
    Ok(())
}

/// Percent-encodes a query value (enough for origins).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn the_producer_admin_views_equal_what_the_gateway_shows_the_user() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            stack
                .notify(&to_users(&["alice"], &format!("a{i}")))
                .await?,
        );
    }
    ids.push(stack.notify(&to_all("for everyone")).await?);
    stack.notify(&to_users(&["bob"], "bob's")).await?;
    mark_read(&stack, &gw, &token, &json!({"ids": [ids[1], ids[4]]})).await?;

    let admin = |path: &str, key: Option<&str>| {
        let mut req = stack.http.get(stack.producer.url(path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        async move { Answer::from(req.send().await?).await }
    };
    for query in [
        "",
        "?limit=2",
        "?unread_only=true",
        "?limit=2&before=1000000",
    ] {
        let theirs = get_ok(&stack, &gw, &token, &format!("/v1/notifications{query}")).await?;
        let ours = admin(
            &format!("/api/v1/users/alice/notifications{query}"),
            Some(API_KEY),
        )
        .await?;
        assert_eq!(ours.status, StatusCode::OK, "{ours:?}");
        for field in ["items", "next_before", "cursor"] {
            assert_eq!(ours.json[field], theirs[field], "{field} for {query:?}");
        }
    }
    let theirs = get_ok(&stack, &gw, &token, "/v1/unread").await?;
    let ours = admin("/api/v1/users/alice/unread", Some(API_KEY)).await?;
    assert_eq!(ours.status, StatusCode::OK);
    assert_eq!(ours.json, theirs);
    assert_eq!(theirs["count"], 3, "{theirs}");

    for path in [
        "/api/v1/users/alice/notifications",
        "/api/v1/users/alice/unread",
    ] {
        assert_eq!(
            admin(path, None).await?.status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            admin(path, Some("wrong-key")).await?.status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_long_poll_answers_at_most_100_at_a_time_and_resets_beyond_the_replay_cap()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let capped = Gateway::start_with("node-b", stack.env().with("REDDOT_REPLAY_CAP", "3")).await?;
    let token = stack.token("alice").await?;
    let ids = stack.notify_each("alice", "n", 105).await?;

    let first = get_ok(&stack, &gw, &token, "/v1/poll?cursor=0&timeout=0").await?;
    assert_eq!(polled_ids(&first), ids[..100], "{first}");
    assert_eq!(first["cursor"], ids[99]);
    let second = get_ok(
        &stack,
        &gw,
        &token,
        &format!("/v1/poll?cursor={}&timeout=0", ids[99]),
    )
    .await?;
    assert_eq!(polled_ids(&second), ids[100..], "{second}");
    assert_eq!(second["cursor"], ids[104]);
    assert_eq!(second["unread"]["count"], 105);

    // More missed than the cap: reset, with the latest id as the new cursor.
    let reset = get_ok(&stack, &capped, &token, "/v1/poll?cursor=0&timeout=0").await?;
    assert_eq!(reset["reset"], true, "{reset}");
    assert_eq!(reset["cursor"], ids[104], "{reset}");
    let within = get_ok(
        &stack,
        &capped,
        &token,
        &format!("/v1/poll?cursor={}&timeout=0", ids[101]),
    )
    .await?;
    assert_eq!(polled_ids(&within), ids[102..], "{within}");
    assert_ne!(within["reset"], true);
    Ok(())
}

#[tokio::test]
async fn a_long_poll_resumes_like_every_transport_and_its_hold_ends_with_the_token()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    let ids = stack.notify_each("alice", "n", 3).await?;

    // `?last_event_id=` and `Last-Event-ID`, as on SSE, WebSocket and the iframe.
    let by_query = get_ok(
        &stack,
        &gw,
        &token,
        &format!("/v1/poll?last_event_id={}&timeout=0", ids[0]),
    )
    .await?;
    assert_eq!(polled_ids(&by_query), ids[1..], "{by_query}");
    let by_header = stack
        .http
        .get(gw.url("/v1/poll?timeout=0"))
        .bearer_auth(&token)
        .header("Last-Event-ID", ids[1].to_string())
        .send()
        .await?;
    assert_eq!(by_header.status(), StatusCode::OK);
    let by_header: Value = by_header.json().await?;
    assert_eq!(polled_ids(&by_header), ids[2..], "{by_header}");

    // A token that ends during the hold ends the hold: a 401 then, not a 204 after it.
    let short = token_expiring_in("alice", 2);
    let started = Instant::now();
    let held = stack
        .http
        .get(gw.url(&format!("/v1/poll?cursor={}&timeout=30", ids[2])))
        .bearer_auth(&short)
        .send()
        .await?;
    let held_for = started.elapsed();
    assert_eq!(held.status(), StatusCode::UNAUTHORIZED);
    assert!(
        (Duration::from_millis(500)..Duration::from_secs(15)).contains(&held_for),
        "held for {held_for:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_read_on_another_device_answers_a_held_long_poll_with_the_new_count() -> anyhow::Result<()>
{
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    let id = stack.notify(&to_users(&["alice"], "unread one")).await?;

    let started = Instant::now();
    let path = format!("/v1/poll?cursor={id}&timeout=30");
    let held = get(&stack, &gw, &token, &path);
    let read_elsewhere = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        mark_read(&stack, &gw, &token, &json!({"ids": [id]})).await
    };
    let (held, read) = tokio::join!(held, read_elsewhere);
    assert!(read?.status.is_success());
    let held = held?;

    assert_eq!(held.status, StatusCode::OK, "{}", held.json);
    assert_eq!(held.json["notifications"], json!([]), "{}", held.json);
    assert_eq!(held.json["cursor"], id);
    assert_eq!(held.json["unread"]["count"], 0, "{}", held.json);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered after {:?}",
        started.elapsed()
    );
    Ok(())
}

/// A read made between two long polls wakes neither: the next poll sends the `ETag` of
/// the count it has (from `/v1/unread` or the last answer), and a count that moved on
/// is answered at once; a count that did not is held as usual.
#[tokio::test]
async fn a_long_poll_whose_count_moved_on_between_polls_is_answered_at_once() -> anyhow::Result<()>
{
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    let first = stack.notify(&to_users(&["alice"], "one")).await?;
    let newest = stack.notify(&to_users(&["alice"], "two")).await?;
    let poll = |tag: String, timeout: u64| {
        let req = stack
            .http
            .get(gw.url(&format!("/v1/poll?cursor={newest}&timeout={timeout}")))
            .bearer_auth(&token)
            .header(header::IF_NONE_MATCH, tag);
        async move {
            let started = Instant::now();
            let answer = Answer::from(req.send().await?).await?;
            anyhow::Ok((answer, started.elapsed()))
        }
    };
    let unread = get(&stack, &gw, &token, "/v1/unread").await?;
    let tag = unread.headers[header::ETAG].to_str()?.to_owned();

    // Unchanged: held until the timeout.
    let (held, _) = poll(tag.clone(), 1).await?;
    assert_eq!(held.status, StatusCode::NO_CONTENT, "{}", held.json);

    // A read between two polls: the next one answers at once with the new count.
    let read = mark_read(&stack, &gw, &token, &json!({"ids": [first]})).await?;
    assert!(read.status.is_success());
    let (moved, took) = poll(tag.clone(), 20).await?;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.json);
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert_eq!(moved.json["notifications"], json!([]), "{}", moved.json);
    assert_eq!(moved.json["cursor"], newest);
    assert_eq!(moved.json["unread"]["count"], 1, "{}", moved.json);
    let new_tag = moved.headers[header::ETAG].to_str()?.to_owned();
    assert_ne!(new_tag, tag);
    let unread = get(&stack, &gw, &token, "/v1/unread").await?;
    assert_eq!(
        unread.headers[header::ETAG].to_str()?,
        new_tag,
        "the same tag as /v1/unread"
    );

    // With the new tag the poll is held again.
    let (held, _) = poll(new_tag, 1).await?;
    assert_eq!(held.status, StatusCode::NO_CONTENT, "{}", held.json);
    Ok(())
}
