//! The per-user binding lifecycle on `reddot.direct`: a node's queue is bound for a user
//! exactly while she has at least one session on that node, however sessions come and go.

use std::time::Duration;

use futures_util::future::try_join_all;
use reddot_tests::{
    Backend, Stack, Vhost,
    clients::{Connect, Events},
    gateway::Gateway,
};
use serde_json::json;

const SETTLE: Duration = Duration::from_secs(20);

/// How many bindings on `reddot.direct` carry `user`'s routing key.
async fn bindings_of(vhost: &Vhost, user: &str) -> anyhow::Result<usize> {
    Ok(vhost
        .direct_bindings()
        .await?
        .iter()
        .filter(|k| *k == user)
        .count())
}

/// Polls until `user` has `expected` bindings, failing after [`SETTLE`].
async fn await_bindings(vhost: &Vhost, user: &str, expected: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let now = bindings_of(vhost, user).await?;
        if now == expected {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{user}: {now} bindings, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until the node reports `sessions` open sessions.
async fn await_sessions(gw: &Gateway, sessions: u64) -> anyhow::Result<()> {
    gw.readyz_until(
        SETTLE,
        &format!("{sessions} sessions on {}", gw.node),
        |r| r["sessions"] == sessions,
    )
    .await
    .map(drop)
}

/// A gateway that notices closed SSE connections within about a second (on its next
/// write), so tests need not wait for the default 15 s heartbeat.
async fn quick_gateway(stack: &Stack, node: &str) -> anyhow::Result<Gateway> {
    Gateway::start_with(
        node,
        stack
            .env()
            .with("REDDOT_HEARTBEAT_SECS", "1")
            .with("REDDOT_MAX_SESSIONS_PER_USER", "1000"),
    )
    .await
}

#[tokio::test]
async fn a_users_key_is_bound_while_she_has_a_session_on_the_node_and_unbound_after_her_last()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let a = quick_gateway(&stack, "node-a").await?;
    let b = quick_gateway(&stack, "node-b").await?;
    let token = stack.token("alice").await?;
    assert_eq!(bindings_of(&stack.vhost, "alice").await?, 0);

    // First session: bound once the session is open (it waits for the binding).
    let mut sse = a.sse(&Connect::bearer(&token)).await?;
    assert_eq!(bindings_of(&stack.vhost, "alice").await?, 1);
    // More sessions on the same node share that binding; another node binds its own.
    let ws = a.ws(&Connect::bearer(&token)).await?;
    let mut on_b = b.sse(&Connect::bearer(&token)).await?;
    assert_eq!(bindings_of(&stack.vhost, "alice").await?, 2);

    // Closing one of two sessions on node a keeps the binding.
    sse.expect("unread", SETTLE).await?;
    drop(sse);
    await_sessions(&a, 1).await?;
    assert_eq!(bindings_of(&stack.vhost, "alice").await?, 2);
    let id = stack
        .notify(&json!({"to": {"users": ["alice"]}, "title": "still bound"}))
        .await?;
    assert_eq!(on_b.ids_until(id, SETTLE).await?, [id]);

    // The last session on node a leaves: only node b's binding remains.
    ws.close().await?;
    await_sessions(&a, 0).await?;
    await_bindings(&stack.vhost, "alice", 1).await?;
    drop(on_b);
    await_bindings(&stack.vhost, "alice", 0).await?;
    Ok(())
}

#[tokio::test]
async fn rapid_connects_and_disconnects_from_many_tasks_leave_the_key_bound_iff_a_session_is_open()
-> anyhow::Result<()> {
    const TASKS: usize = 8;
    const CYCLES: usize = 10;
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = quick_gateway(&stack, "node-a").await?;
    let token = stack.token("alice").await?;

    // Every task opens and closes sessions back to back; task 0 keeps its last one.
    let mut kept = try_join_all((0..TASKS).map(|t| {
        let (gw, token) = (&gw, &token);
        async move {
            let mut last = None;
            for c in 0..CYCLES {
                let transport = if (t + c) % 2 == 0 { "sse" } else { "ws" };
                let session = gw.client(transport, &Connect::bearer(token)).await?;
                if t == 0 && c == CYCLES - 1 {
                    last = Some(session);
                } else if let reddot_tests::clients::Client::Ws(ws) = session {
                    ws.close().await?;
                }
            }
            anyhow::Ok(last)
        }
    }))
    .await?
    .into_iter()
    .flatten()
    .collect::<Vec<_>>();
    assert_eq!(kept.len(), 1);

    await_sessions(&gw, 1).await?;
    assert_eq!(bindings_of(&stack.vhost, "alice").await?, 1);
    let id = stack
        .notify(&json!({"to": {"users": ["alice"]}, "title": "after the churn"}))
        .await?;
    assert_eq!(kept[0].ids_until(id, SETTLE).await?, [id]);

    kept.clear();
    await_sessions(&gw, 0).await?;
    await_bindings(&stack.vhost, "alice", 0).await?;

    // And churn that ends with nobody online leaves nothing bound.
    try_join_all((0..TASKS).map(|t| {
        let (gw, token) = (&gw, &token);
        async move {
            for c in 0..CYCLES {
                let transport = if (t + c) % 2 == 0 { "ws" } else { "sse" };
                let session = gw.client(transport, &Connect::bearer(token)).await?;
                if let reddot_tests::clients::Client::Ws(ws) = session {
                    ws.close().await?;
                }
            }
            anyhow::Ok(())
        }
    }))
    .await?;
    await_sessions(&gw, 0).await?;
    await_bindings(&stack.vhost, "alice", 0).await?;
    // A new session after all that is bound and served again.
    let mut fresh = gw.ws(&Connect::bearer(&token)).await?;
    assert_eq!(bindings_of(&stack.vhost, "alice").await?, 1);
    let id = stack
        .notify(&json!({"to": {"users": ["alice"]}, "title": "back"}))
        .await?;
    assert_eq!(fresh.ids_until(id, SETTLE).await?, [id]);
    Ok(())
}

/// A binding outlives the user's last session by `REDDOT_UNBIND_DELAY_SECS`: a client
/// that reconnects within it finds the binding in place (no unbind + bind for the
/// broker), and misses nothing published while it was away; after the delay it goes.
#[tokio::test]
async fn a_binding_outlives_the_last_session_by_the_unbind_delay() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw =
        Gateway::start_with("node-a", stack.env().with("REDDOT_UNBIND_DELAY_SECS", "3")).await?;
    let token = stack.token("gina").await?;
    let ws = gw.ws(&Connect::bearer(&token)).await?;
    assert_eq!(bindings_of(&stack.vhost, "gina").await?, 1);
    ws.close().await?;
    await_sessions(&gw, 0).await?;
    let closed = tokio::time::Instant::now();

    // Published while she is away: reaches her inbox, and her resume.
    let missed = stack
        .notify(&json!({"to": {"users": ["gina"]}, "title": "while away"}))
        .await?;
    assert_eq!(
        bindings_of(&stack.vhost, "gina").await?,
        1,
        "unbound at once"
    );
    let mut back = gw.ws(&Connect::bearer(&token).after(missed - 1)).await?;
    assert_eq!(back.ids_until(missed, SETTLE).await?, [missed]);
    assert_eq!(bindings_of(&stack.vhost, "gina").await?, 1);
    back.close().await?;
    await_sessions(&gw, 0).await?;
    let closed_again = tokio::time::Instant::now();

    await_bindings(&stack.vhost, "gina", 0).await?;
    assert!(
        closed_again.elapsed() >= Duration::from_secs(2),
        "unbound {:?} after the last session (first close {:?} ago)",
        closed_again.elapsed(),
        closed.elapsed()
    );
    Ok(())
}
