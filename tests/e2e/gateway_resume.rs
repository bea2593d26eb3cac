//! Resume: a session opened with a cursor gets exactly the visible notifications after
//! it, in id order, then `unread`, then live ones; past the replay cap it gets `reset`.

use std::{sync::Arc, time::Duration};

use futures_util::future::try_join_all;
use reddot_tests::{
    Backend, Stack,
    clients::{Client, Connect, Events, Sse},
    gateway::{Gateway, to_all, to_users},
};
use serde_json::json;
use tokio::time::Instant;

const DELIVERY: Duration = Duration::from_secs(20);

/// Posts `n` notifications for alice; returns their ids.
async fn post_for_alice(stack: &Stack, n: usize, label: &str) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(
            stack
                .notify(&to_users(&["alice"], &format!("{label} {i}")))
                .await?,
        );
    }
    Ok(ids)
}

/// Expects exactly `ids` as the next notifications, then an `unread` event.
async fn expect_replay_then_unread(
    session: &mut Client,
    ids: &[i64],
) -> anyhow::Result<serde_json::Value> {
    for id in ids {
        let event = session.expect("notification", DELIVERY).await?;
        assert_eq!(
            event.notification_id(),
            Some(*id),
            "{} replay",
            session.transport()
        );
    }
    Ok(session.expect("unread", DELIVERY).await?.data)
}

#[tokio::test]
async fn resuming_by_header_or_query_on_sse_and_websocket_replays_only_later_ids_then_unread_then_live()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    let ids = post_for_alice(&stack, 5, "before").await?;
    let other = stack.notify(&to_users(&["bob"], "not hers")).await?;
    assert!(other > ids[4]);

    let cursor = ids[1];
    let mut sessions = vec![
        gw.client("sse", &Connect::bearer(&token).after(cursor))
            .await?,
        gw.client("sse", &Connect::query_token(&token).after_in_query(cursor))
            .await?,
        gw.client("ws", &Connect::bearer(&token).after(cursor))
            .await?,
        gw.client("ws", &Connect::query_token(&token).after_in_query(cursor))
            .await?,
    ];

    for session in &mut sessions {
        let unread = expect_replay_then_unread(session, &ids[2..]).await?;
        assert_eq!(unread["count"], 5, "{unread}");
        assert_eq!(unread["as_of"], ids[4], "{unread}");
        assert_eq!(unread["by_kind"], json!({"comment": 5}));
    }
    let live = stack.notify(&to_users(&["alice"], "live")).await?;
    for session in &mut sessions {
        let event = session.expect("notification", DELIVERY).await?;
        assert_eq!(
            event.notification_id(),
            Some(live),
            "{}",
            session.transport()
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_last_event_id_header_wins_over_the_query_cursor() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let ids = post_for_alice(&stack, 4, "before").await?;

    // An EventSource reconnecting to a URL that still carries the first cursor.
    let res = reqwest::Client::new()
        .get(gw.url(&format!("/v1/stream?last_event_id={}", ids[0])))
        .bearer_auth(stack.token("alice").await?)
        .header("Last-Event-ID", ids[2].to_string())
        .send()
        .await?;
    let mut sse = Sse::from_response(res.error_for_status()?);

    let event = sse.expect("notification", DELIVERY).await?;
    assert_eq!(event.notification_id(), Some(ids[3]));
    assert_eq!(
        event.id,
        Some(ids[3]),
        "the SSE id: line is the notification id"
    );
    sse.expect("unread", DELIVERY).await?;
    Ok(())
}

#[tokio::test]
async fn without_a_cursor_nothing_is_replayed_and_unread_comes_first() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    let ids = post_for_alice(&stack, 3, "before").await?;

    let mut all = ids;
    for transport in ["sse", "ws"] {
        let mut session = gw.client(transport, &Connect::bearer(&token)).await?;
        let unread = session.expect("unread", DELIVERY).await?;
        assert_eq!(unread.data["count"], all.len(), "{transport}");
        assert_eq!(
            unread.data["as_of"],
            *all.last().unwrap_or(&0),
            "{transport}"
        );
        let live = stack.notify(&to_users(&["alice"], transport)).await?;
        assert_eq!(
            session.ids_until(live, DELIVERY).await?,
            [live],
            "{transport}"
        );
        all.push(live);
    }
    Ok(())
}

/// 8 tasks post 50 notifications each to alice while her client reconnects about every
/// 100 ms with the last id it saw: the stitched sequence has every id once, ascending.
async fn a_client_reconnecting_every_100_ms_during_concurrent_posting_sees_every_id_once_ascending(
    backend: Backend,
) -> anyhow::Result<()> {
    const TASKS: usize = 8;
    const PER_TASK: usize = 50;
    let stack = Arc::new(Stack::start(backend).await?);
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    // The client's first session starts after a cursor of 0: everything counts.
    let mut session = gw.sse(&Connect::bearer(&token).after(0)).await?;

    let posters: Vec<_> = (0..TASKS)
        .map(|t| {
            let stack = stack.clone();
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(PER_TASK);
                for i in 0..PER_TASK {
                    // Spread over ≥ 1 s, so that the posting spans many reconnects: a
                    // fast producer took all 400 in under 0.5 s, fewer than the 5
                    // reconnects the test asserts.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    ids.push(
                        stack
                            .notify(&to_users(&["alice"], &format!("task {t} post {i}")))
                            .await?,
                    );
                }
                anyhow::Ok(ids)
            })
        })
        .collect();

    let mut seen: Vec<i64> = Vec::new();
    let mut reconnects = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.len() < TASKS * PER_TASK {
        anyhow::ensure!(
            Instant::now() < deadline,
            "saw {} of {} after {reconnects} reconnects",
            seen.len(),
            TASKS * PER_TASK
        );
        let window_end = Instant::now() + Duration::from_millis(100);
        loop {
            let left = window_end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match session.next_or_end(left).await {
                Ok(Some(event)) => match event.kind.as_str() {
                    "notification" => seen.extend(event.notification_id()),
                    "unread" => {}
                    other => anyhow::bail!("unexpected `{other}` after {} ids", seen.len()),
                },
                Ok(None) => anyhow::bail!(
                    "the gateway ended a healthy session: {:?}",
                    session.end_error
                ),
                Err(_) if Instant::now() >= window_end => break,
                Err(err) => return Err(err),
            }
        }
        let last = seen.last().copied().unwrap_or(0);
        session = gw.sse(&Connect::bearer(&token).after(last)).await?;
        reconnects += 1;
    }

    let mut posted: Vec<i64> = Vec::new();
    for poster in posters {
        posted.extend(poster.await??);
    }
    posted.sort_unstable();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "not strictly ascending: {seen:?}"
    );
    assert_eq!(seen, posted, "after {reconnects} reconnects");
    assert!(reconnects >= 5, "only {reconnects} reconnects");
    Ok(())
}

#[tokio::test]
async fn sqlite_a_client_reconnecting_every_100_ms_during_concurrent_posting_sees_every_id_once_ascending()
-> anyhow::Result<()> {
    a_client_reconnecting_every_100_ms_during_concurrent_posting_sees_every_id_once_ascending(
        Backend::Sqlite,
    )
    .await
}

#[tokio::test]
async fn postgres_a_client_reconnecting_every_100_ms_during_concurrent_posting_sees_every_id_once_ascending()
-> anyhow::Result<()> {
    a_client_reconnecting_every_100_ms_during_concurrent_posting_sees_every_id_once_ascending(
        Backend::Postgres,
    )
    .await
}

#[tokio::test]
async fn notifications_sent_while_offline_arrive_on_the_next_resume_with_a_matching_unread_count()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    let seen = post_for_alice(&stack, 2, "seen").await?;
    // A first visit: she sees those two, then closes every tab.
    let mut first = gw.sse(&Connect::bearer(&token).after(0)).await?;
    assert_eq!(first.ids_until(seen[1], DELIVERY).await?, seen);
    let cursor = first.last_id().unwrap_or_default();
    drop(first);

    let mut missed = Vec::new();
    for i in 0..7 {
        missed.push(
            stack
                .notify(&to_users(&["alice"], &format!("offline {i}")))
                .await?,
        );
        stack
            .notify(&to_users(&["bob"], &format!("bob {i}")))
            .await?;
    }
    missed.push(stack.notify(&to_all("offline broadcast")).await?);

    for (transport, connect) in [
        ("sse", Connect::bearer(&token).after(cursor)),
        ("ws", Connect::query_token(&token).after_in_query(cursor)),
    ] {
        let mut session = gw.client(transport, &connect).await?;
        let unread = expect_replay_then_unread(&mut session, &missed).await?;
        assert_eq!(unread["count"], 10, "{transport}: {unread}");
        assert_eq!(unread["as_of"], *missed.last().unwrap_or(&0), "{transport}");
        assert_eq!(
            unread["by_kind"],
            json!({"comment": 9, "announcement": 1}),
            "{transport}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_resume_past_the_replay_cap_gets_reset_then_unread_then_live_events() -> anyhow::Result<()>
{
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start_with("node-a", stack.env().with("REDDOT_REPLAY_CAP", "5")).await?;
    let token = stack.token("alice").await?;
    let first = post_for_alice(&stack, 1, "seen").await?[0];
    let mut all = vec![first];
    all.extend(post_for_alice(&stack, 6, "missed").await?);

    for transport in ["sse", "ws"] {
        let mut session = gw
            .client(transport, &Connect::bearer(&token).after(first))
            .await?;
        let reset = session.expect("reset", DELIVERY).await?;
        assert_eq!(reset.data["reason"], "gap_too_large", "{transport}");
        if transport == "sse" {
            // The stream's id moves past the gap: reconnecting before the next
            // notification resumes from there, not into another reset.
            assert_eq!(reset.id, all.last().copied(), "{transport}");
        }
        let unread = session.expect("unread", DELIVERY).await?;
        assert_eq!(unread.data["count"], all.len(), "{transport}");
        assert_eq!(
            unread.data["as_of"],
            *all.last().unwrap_or(&0),
            "{transport}"
        );
        let live = stack.notify(&to_users(&["alice"], transport)).await?;
        assert_eq!(
            session.ids_until(live, DELIVERY).await?,
            [live],
            "{transport}"
        );
        all.push(live);
    }

    // Exactly the cap missed is still replayed.
    let cursor = all[all.len() - 6];
    let mut at_cap = gw.sse(&Connect::bearer(&token).after(cursor)).await?;
    let replayed = at_cap.notifications(5, DELIVERY).await?;
    let replayed: Vec<i64> = replayed
        .iter()
        .filter_map(|e| e.notification_id())
        .collect();
    assert_eq!(replayed, all[all.len() - 5..]);
    at_cap.expect("unread", DELIVERY).await?;
    Ok(())
}

#[tokio::test]
async fn resuming_many_sessions_at_once_replays_the_same_sequence_to_each() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    let ids = post_for_alice(&stack, 20, "burst").await?;

    let sessions = try_join_all((0..10).map(|i| {
        let connect = Connect::bearer(&token).after(ids[i]);
        let gw = &gw;
        async move {
            gw.client(if i % 2 == 0 { "sse" } else { "ws" }, &connect)
                .await
        }
    }))
    .await?;
    for (i, mut session) in sessions.into_iter().enumerate() {
        let last = *ids.last().unwrap_or(&0);
        assert_eq!(session.ids_until(last, DELIVERY).await?, ids[i + 1..]);
        session.expect("unread", DELIVERY).await?;
    }
    Ok(())
}

#[tokio::test]
async fn expired_notifications_are_not_replayed_or_counted() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    let expires = chrono::Utc::now() + chrono::Duration::seconds(2);
    let kept = stack.notify(&to_users(&["alice"], "kept")).await?;
    let expiring = stack
        .notify(&json!({"to": {"users": ["alice"]}, "title": "soon gone",
                        "expires_at": expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)}))
        .await?;
    let broadcast = stack
        .notify(&json!({"to": {"all": true}, "title": "gone too",
                        "expires_at": expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)}))
        .await?;
    let also_kept = stack.notify(&to_users(&["alice"], "also kept")).await?;
    // Before the expiry they are visible like any other.
    let mut before = gw.sse(&Connect::bearer(&token).after(0)).await?;
    assert_eq!(
        before.ids_until(also_kept, DELIVERY).await?,
        [kept, expiring, broadcast, also_kept]
    );

    // The test is about what happens once that moment has passed: wait for it.
    let wait = (expires - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(200)).await;

    for transport in ["sse", "ws"] {
        let mut session = gw
            .client(transport, &Connect::bearer(&token).after(0))
            .await?;
        let unread = expect_replay_then_unread(&mut session, &[kept, also_kept]).await?;
        assert_eq!(unread["count"], 2, "{transport}: {unread}");
        assert_eq!(unread["as_of"], also_kept, "{transport}");
    }
    Ok(())
}

#[tokio::test]
async fn a_malformed_cursor_gets_400_naming_last_event_id() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    let http = reqwest::Client::new();

    for (header, query) in [(Some("abc"), None), (None, Some("-1")), (None, Some("1.5"))] {
        let mut req = http.get(gw.url(&format!(
            "/v1/stream{}",
            query.map(|q| format!("?last_event_id={q}")).unwrap_or_default()
        )));
        if let Some(h) = header {
            req = req.header("Last-Event-ID", h);
        }
        let res = req.bearer_auth(&token).send().await?;
        assert_eq!(res.status(), 400, "{header:?} {query:?}");
        let body: serde_json::Value = res.json().await?;
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        assert_eq!(body["error"]["field"], "last_event_id", "{body}");
    }
    Ok(())
}
