//! The gateway when things go wrong: its RabbitMQ connection is cut, a node is killed,
//! a client stops reading. Sessions resume and miss nothing; a stalled reader is cut
//! loose without holding back anyone else.

use std::time::Duration;

use futures_util::future::try_join_all;
use reddot_tests::{
    Backend, Env, Proxy, Stack, amqp_addr,
    clients::{Client, Connect, Events, StalledSse},
    gateway::{Gateway, to_all, to_users},
};
use serde_json::json;

use crate::helpers::{count_rows, eventually, host_port};

const DELIVERY: Duration = Duration::from_secs(20);

/// Posts `n` notifications alternating between alice and bob, then a broadcast; returns
/// (alice's ids, bob's ids, the broadcast id), the broadcast included in both lists.
async fn post_round(
    stack: &Stack,
    n: usize,
    label: &str,
) -> anyhow::Result<(Vec<i64>, Vec<i64>, i64)> {
    let (mut alice, mut bob) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (user, ids) = if i % 3 == 2 {
            ("bob", &mut bob)
        } else {
            ("alice", &mut alice)
        };
        ids.push(
            stack
                .notify(&to_users(&[user], &format!("{label} {i}")))
                .await?,
        );
    }
    let broadcast = stack.notify(&to_all(&format!("{label} end"))).await?;
    alice.push(broadcast);
    bob.push(broadcast);
    Ok((alice, bob, broadcast))
}

/// Node `node` of `stack`, reaching RabbitMQ through `proxy`, once it consumes.
async fn node_via(stack: &Stack, proxy: &Proxy, node: &str) -> anyhow::Result<Gateway> {
    let env = Env::new(&stack.db.url, &stack.vhost.url_via(&proxy.addr));
    let gw = Gateway::start_with(node, env).await?;
    gw.readyz_until(DELIVERY, "consuming from RabbitMQ", |r| {
        r["rabbitmq"] == "ok"
    })
    .await?;
    Ok(gw)
}

/// Nodes a and b of `stack`, reaching RabbitMQ through `proxy`, once both consume.
async fn two_nodes_via(stack: &Stack, proxy: &Proxy) -> anyhow::Result<(Gateway, Gateway)> {
    let a = node_via(stack, proxy, "node-a").await?;
    let b = node_via(stack, proxy, "node-b").await?;
    Ok((a, b))
}

async fn sessions_miss_nothing_when_the_gateways_rabbitmq_connection_is_cut_and_restored(
    backend: Backend,
) -> anyhow::Result<()> {
    // Arrange: two nodes reach RabbitMQ through a proxy; the producer reaches it directly.
    let proxy = Proxy::start(&amqp_addr()).await?;
    let stack = Stack::start(backend).await?;
    let (a, b) = two_nodes_via(&stack, &proxy).await?;
    // Older notifications: sessions opened without a cursor must never be sent them.
    let old = stack.notify(&to_users(&["alice", "bob"], "old")).await?;
    let (alice, bob) = (stack.token("alice").await?, stack.token("bob").await?);
    let mut alice_sessions: Vec<Client> = vec![
        a.client("sse", &Connect::bearer(&alice)).await?,
        a.client("ws", &Connect::query_token(&alice).after_in_query(old))
            .await?,
        b.client("sse", &Connect::query_token(&alice).after_in_query(old))
            .await?,
        b.client("ws", &Connect::bearer(&alice)).await?,
    ];
    let mut bob_sessions: Vec<Client> = vec![a.client("sse", &Connect::bearer(&bob)).await?];
    let (hers, his, end) = post_round(&stack, 3, "before").await?;
    for s in &mut alice_sessions {
        assert_eq!(
            s.ids_until(end, DELIVERY).await?,
            hers,
            "{} before",
            s.transport()
        );
    }
    assert_eq!(bob_sessions[0].ids_until(end, DELIVERY).await?, his);

    // Act: cut both nodes off RabbitMQ, post, restore, post again.
    proxy.cut();
    for gw in [&a, &b] {
        gw.readyz_until(DELIVERY, "RabbitMQ reported down", |r| {
            r["rabbitmq"] == "down"
        })
        .await?;
    }
    let (mut hers, mut his, _) = post_round(&stack, 10, "during").await?;
    proxy.restore();
    let (after_hers, after_his, end) = post_round(&stack, 3, "after").await?;
    hers.extend(after_hers);
    his.extend(after_his);

    // Assert: every session has all of it, once, in order.
    let got = try_join_all(
        alice_sessions
            .iter_mut()
            .map(|s| s.ids_until(end, DELIVERY)),
    )
    .await?;
    for (ids, s) in got.iter().zip(&alice_sessions) {
        assert_eq!(ids, &hers, "alice's {} session", s.transport());
    }
    assert_eq!(bob_sessions[0].ids_until(end, DELIVERY).await?, his);
    for gw in [&a, &b] {
        gw.readyz_until(DELIVERY, "consuming again", |r| r["rabbitmq"] == "ok")
            .await?;
    }
    // Live delivery works again (not only the catch-up).
    let live = stack.notify(&to_users(&["alice"], "live again")).await?;
    for s in &mut alice_sessions {
        assert_eq!(
            s.ids_until(live, DELIVERY).await?,
            [live],
            "{}",
            s.transport()
        );
    }
    // Read-state events go through RabbitMQ as well: the nodes publish them again.
    let Client::Ws(ws) = &mut alice_sessions[1] else {
        anyhow::bail!("session 1 is the WebSocket on node a");
    };
    ws.send(&json!({"type": "read_all"})).await?;
    for s in &mut alice_sessions {
        s.unread_count(0, DELIVERY).await?;
    }
    Ok(())
}

#[tokio::test]
async fn sqlite_sessions_miss_nothing_when_the_gateways_rabbitmq_connection_is_cut_and_restored()
-> anyhow::Result<()> {
    sessions_miss_nothing_when_the_gateways_rabbitmq_connection_is_cut_and_restored(Backend::Sqlite)
        .await
}

#[tokio::test]
async fn postgres_sessions_miss_nothing_when_the_gateways_rabbitmq_connection_is_cut_and_restored()
-> anyhow::Result<()> {
    sessions_miss_nothing_when_the_gateways_rabbitmq_connection_is_cut_and_restored(
        Backend::Postgres,
    )
    .await
}

#[tokio::test]
async fn a_session_opened_without_a_cursor_is_not_sent_older_notifications_after_a_rabbitmq_reconnect()
-> anyhow::Result<()> {
    let proxy = Proxy::start(&amqp_addr()).await?;
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = node_via(&stack, &proxy, "node-a").await?;
    let older = [
        stack.notify(&to_users(&["erin"], "older 1")).await?,
        stack.notify(&to_users(&["erin"], "older 2")).await?,
    ];
    let mut erin = gw
        .sse(&Connect::bearer(&stack.token("erin").await?))
        .await?;
    let unread = erin.expect("unread", DELIVERY).await?;
    assert_eq!(unread.data["as_of"], older[1]);

    proxy.cut();
    gw.readyz_until(DELIVERY, "RabbitMQ reported down", |r| {
        r["rabbitmq"] == "down"
    })
    .await?;
    let during = stack.notify(&to_users(&["erin"], "during")).await?;
    proxy.restore();

    // The catch-up after the reconnect starts at the unread count's `as_of`, not at 0.
    let event = erin.expect("notification", DELIVERY).await?;
    assert_eq!(event.notification_id(), Some(during));
    Ok(())
}

/// RabbitMQ's address answers nothing while the gateway reconnects (a hung endpoint,
/// which accepts the connection and never speaks): the attempt times out, and the next
/// one, once the broker is back, reconnects and catches the session up. Without a
/// timeout the node stayed "reconnecting" for good, heartbeating its sessions with
/// nothing.
#[tokio::test]
async fn a_reconnect_that_reaches_a_hung_endpoint_gives_up_and_tries_again() -> anyhow::Result<()> {
    let proxy = Proxy::start(&amqp_addr()).await?;
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = node_via(&stack, &proxy, "node-a").await?;
    let mut erin = gw
        .sse(&Connect::bearer(&stack.token("erin").await?))
        .await?;
    erin.expect("unread", DELIVERY).await?;

    proxy.sink();
    proxy.cut();
    let hung_from = proxy.attempts();
    eventually(
        DELIVERY,
        "a reconnect attempt into the black hole",
        || async { Ok((proxy.attempts() > hung_from).then_some(())) },
    )
    .await?;
    let during = stack.notify(&to_users(&["erin"], "during")).await?;
    proxy.restore();

    // Within the connect timeout (10 s) and a backoff step: caught up, then live.
    let event = erin.expect("notification", Duration::from_secs(30)).await?;
    assert_eq!(event.notification_id(), Some(during));
    erin.expect("unread", DELIVERY).await?;
    let after = stack.notify(&to_users(&["erin"], "after")).await?;
    let event = erin.expect("notification", DELIVERY).await?;
    assert_eq!(event.notification_id(), Some(after));
    Ok(())
}

#[tokio::test]
async fn clients_of_a_killed_node_resume_on_the_other_node_and_miss_nothing() -> anyhow::Result<()>
{
    let stack = Stack::start(Backend::Sqlite).await?;
    let mut a = Gateway::start(&stack, "node-a").await?;
    let b = Gateway::start(&stack, "node-b").await?;
    let alice = stack.token("alice").await?;
    // (transport, connect) per session on node a, which is about to die.
    let on_a = [
        ("sse", Connect::bearer(&alice)),
        ("ws", Connect::query_token(&alice)),
        ("sse", Connect::query_token(&alice)),
    ];
    let mut sessions = Vec::new();
    for (transport, connect) in &on_a {
        sessions.push(a.client(transport, connect).await?);
    }
    let mut control = b.client("ws", &Connect::bearer(&alice)).await?;
    let (mut hers, _, end) = post_round(&stack, 5, "before").await?;
    for s in &mut sessions {
        assert_eq!(s.ids_until(end, DELIVERY).await?, hers);
    }

    a.kill();
    let (during, _, _) = post_round(&stack, 5, "during").await?;
    hers.extend(&during);
    let mut stitched: Vec<Vec<i64>> = Vec::new();
    for (s, (transport, connect)) in sessions.iter_mut().zip(&on_a) {
        // What reached the client before the connection died, then a resume on node b.
        let mut ids: Vec<i64> = hers[..hers.len() - during.len()].to_vec();
        let tail = s.until_end(DELIVERY).await?;
        ids.extend(tail.iter().filter_map(|e| e.notification_id()));
        // Browsers' WebSocket cannot set headers: it resumes with the query cursor.
        let resume = if *transport == "ws" {
            connect.clone().after_in_query(s.last_id().unwrap_or(end))
        } else {
            connect.clone().resume_from(s.last_id())
        };
        *s = b.client(transport, &resume).await?;
        stitched.push(ids);
    }
    let (after, _, end) = post_round(&stack, 5, "after").await?;
    hers.extend(&after);
    for (s, mut ids) in sessions.iter_mut().zip(stitched) {
        ids.extend(s.ids_until(end, DELIVERY).await?);
        assert_eq!(ids, hers, "{} session resumed on node b", s.transport());
    }
    assert_eq!(
        control.ids_until(end, DELIVERY).await?,
        hers,
        "the session on node b was unaffected"
    );
    Ok(())
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_while_another_session_of_the_user_gets_everything()
-> anyhow::Result<()> {
    const POSTS: usize = 250;
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start_with("node-a", stack.env().with("REDDOT_SESSION_BUFFER", "8")).await?;
    let token = stack.token("alice").await?;
    let mut healthy = gw.sse(&Connect::bearer(&token)).await?;
    let stalled = StalledSse::open(gw.port(), &token).await?;
    let reader = tokio::spawn(async move {
        let got = healthy
            .notifications(POSTS, Duration::from_secs(120))
            .await?;
        anyhow::Ok(
            got.iter()
                .filter_map(|e| e.notification_id())
                .collect::<Vec<_>>(),
        )
    });

    // ~22 KB each, ~5.5 MB in all: more than the socket buffers between the gateway and
    // the stalled client hold (loopback send buffers grow to a few MB).
    let body = "b".repeat(10_000);
    let data = json!({"pad": "d".repeat(12_000)});
    let mut posted = Vec::with_capacity(POSTS);
    for i in 0..POSTS {
        let n = json!({"to": {"users": ["alice"]}, "title": format!("n{i}"), "body": body, "data": data});
        posted.push(stack.notify(&n).await?);
    }

    assert_eq!(
        reader.await??,
        posted,
        "the reading session got everything in order"
    );
    let drained = stalled.drain(DELIVERY).await?;
    assert!(drained.ended, "the stalled session was not closed");
    let got: Vec<i64> = drained
        .events
        .iter()
        .filter_map(|e| e.notification_id())
        .collect();
    assert!(got.len() < POSTS, "the stalled session was never cut off");
    assert_eq!(
        got,
        posted[..got.len()],
        "what it got is an in-order prefix"
    );

    // The cut-off client resumes from its last id and catches up.
    let mut resumed = gw
        .sse(&Connect::bearer(&token).resume_from(got.last().copied()))
        .await?;
    let last = *posted.last().unwrap_or(&0);
    assert_eq!(
        resumed.ids_until(last, DELIVERY).await?,
        posted[got.len()..]
    );
    Ok(())
}

/// The gateway's database cut (the producer's is not): open sessions keep receiving
/// live notifications (they come from the broker), a new session cannot be served
/// meanwhile (503, never a session that silently misses its replay), and once the
/// database is back a resume replays everything after the client's last id.
#[tokio::test]
async fn while_the_gateways_database_is_cut_live_streams_flow_and_resumes_return_after()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Postgres).await?;
    let proxy = Proxy::start(host_port(&stack.db.url)).await?;
    let proxied = stack
        .db
        .url
        .replacen(host_port(&stack.db.url), &proxy.addr, 1);
    let gw = Gateway::start_with("node-a", Env::new(&proxied, &stack.vhost.url())).await?;
    let token = stack.token("alice").await?;
    let mut live = gw.sse(&Connect::bearer(&token)).await?;
    live.expect("unread", DELIVERY).await?;

    proxy.cut();
    let mut during = stack.notify_each("alice", "cut ", 5).await?;
    during.push(stack.notify(&to_all("cut broadcast")).await?);
    let last = *during.last().unwrap_or(&0);
    assert_eq!(
        live.ids_until(last, DELIVERY).await?,
        during,
        "live stream during the cut"
    );
    let refused = gw.sse(&Connect::bearer(&token).after(during[0])).await;
    let err = refused.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(err.contains("503"), "a resume during the cut: {err:?}");

    proxy.restore();
    let mut resumed = eventually(
        Duration::from_secs(30),
        "a resume succeeds again",
        || async { Ok(gw.sse(&Connect::bearer(&token).after(during[0])).await.ok()) },
    )
    .await?;
    assert_eq!(resumed.ids_until(last, DELIVERY).await?, during[1..]);
    Ok(())
}

/// RabbitMQ unreachable for 10 s, for the producer and both gateway nodes, while
/// notifications keep being posted (~25/s): every acknowledged notification reaches
/// every online session of its user exactly once, in id order.
#[tokio::test]
async fn rabbitmq_down_for_10_s_under_steady_load_loses_and_repeats_nothing() -> anyhow::Result<()>
{
    let proxy = Proxy::start(&amqp_addr()).await?;
    let stack = crate::helpers::stack_with(Backend::Postgres, |db, vhost| {
        Env::new(&db.url, &vhost.url_via(&proxy.addr))
    })
    .await?;
    let (a, b) = two_nodes_via(&stack, &proxy).await?;
    let (alice, bob) = (stack.token("alice").await?, stack.token("bob").await?);
    let mut alice_sessions: Vec<Client> = vec![
        a.client("sse", &Connect::bearer(&alice)).await?,
        b.client("ws", &Connect::bearer(&alice)).await?,
    ];
    let mut bob_sessions: Vec<Client> = vec![
        a.client("ws", &Connect::bearer(&bob)).await?,
        b.client("sse", &Connect::bearer(&bob)).await?,
    ];

    // Steady posting: 2 s before the cut, 10 s of outage, 2 s after.
    let started = tokio::time::Instant::now();
    let (mut hers, mut his) = (Vec::new(), Vec::new());
    let mut cut = false;
    let mut restored = false;
    let mut i = 0u32;
    while started.elapsed() < Duration::from_secs(14) {
        if !cut && started.elapsed() >= Duration::from_secs(2) {
            proxy.cut();
            cut = true;
        }
        if cut && !restored && started.elapsed() >= Duration::from_secs(12) {
            proxy.restore();
            restored = true;
        }
        let title = format!("steady {i}");
        match i % 10 {
            9 => {
                let id = stack.notify(&to_all(&title)).await?;
                hers.push(id);
                his.push(id);
            }
            n if n % 2 == 0 => hers.push(stack.notify(&to_users(&["alice"], &title)).await?),
            _ => his.push(stack.notify(&to_users(&["bob"], &title)).await?),
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let end = stack.notify(&to_all("the end")).await?;
    hers.push(end);
    his.push(end);

    for (sessions, expected, user) in [
        (&mut alice_sessions, &hers, "alice"),
        (&mut bob_sessions, &his, "bob"),
    ] {
        let got = try_join_all(
            sessions
                .iter_mut()
                .map(|s| s.ids_until(end, Duration::from_secs(60))),
        )
        .await?;
        for (ids, s) in got.iter().zip(sessions.iter()) {
            assert_eq!(ids, expected, "{user}'s {} session", s.transport());
        }
    }
    Ok(())
}

/// A node carrying 1,000 sessions (100 users × 10, SSE and WebSocket) is SIGKILLed
/// while notifications keep coming: every session resumes on the other node from its
/// last id and ends with exactly its user's notifications, once each, in order.
#[tokio::test]
async fn a_thousand_sessions_of_a_killed_node_resume_on_another_and_miss_nothing()
-> anyhow::Result<()> {
    const USERS: usize = 100;
    const PER_USER: usize = 10;
    let stack = Stack::start(Backend::Sqlite).await?;
    let env = || stack.env().with("REDDOT_MAX_SESSIONS_PER_USER", "100");
    let mut a = Gateway::start_with("node-a", env()).await?;
    let b = Gateway::start_with("node-b", env()).await?;
    let users: Vec<String> = (0..USERS).map(|u| format!("user{u}")).collect();
    let mut tokens = Vec::with_capacity(USERS);
    for user in &users {
        tokens.push(stack.token(user).await?);
    }
    let to_everyone =
        |title: &str| json!({"to": {"users": users}, "kind": "comment", "title": title});
    // (user index, transport) of each session; half SSE, half WebSocket.
    let plan: Vec<(usize, &str)> = (0..USERS * PER_USER)
        .map(|i| (i % USERS, if i % 2 == 0 { "sse" } else { "ws" }))
        .collect();
    let mut sessions: Vec<Client> = Vec::with_capacity(plan.len());
    for chunk in plan.chunks(50) {
        sessions.extend(
            try_join_all(chunk.iter().map(|(u, t)| {
                let connect = Connect::query_token(&tokens[*u]).after_in_query(0);
                let a = &a;
                async move { a.client(t, &connect).await }
            }))
            .await?,
        );
    }
    let mut expected = vec![stack.notify(&to_everyone("before")).await?];
    expected.push(stack.notify(&to_all("before, to all")).await?);
    let before_end = expected[1];
    try_join_all(
        sessions
            .iter_mut()
            .map(|s| s.ids_until(before_end, DELIVERY)),
    )
    .await?;

    a.kill();
    for i in 0..3 {
        expected.push(stack.notify(&to_everyone(&format!("during {i}"))).await?);
    }
    expected.push(stack.notify(&to_all("during, to all")).await?);

    // Each session: what it read before the connection died, then a resume on node b.
    let mut resumed: Vec<(Vec<i64>, Client)> = Vec::with_capacity(sessions.len());
    let mut old = sessions.into_iter().zip(&plan).collect::<Vec<_>>();
    while !old.is_empty() {
        let chunk: Vec<_> = old.drain(..old.len().min(50)).collect();
        resumed.extend(
            try_join_all(chunk.into_iter().map(|(mut s, (u, t))| {
                let (b, token, head) = (&b, &tokens[*u], expected[..2].to_vec());
                async move {
                    let mut ids = head;
                    let tail = s.until_end(DELIVERY).await?;
                    ids.extend(tail.iter().filter_map(|e| e.notification_id()));
                    let last = ids.last().copied().unwrap_or(0);
                    let connect = Connect::query_token(token).after_in_query(last);
                    anyhow::Ok((ids, b.client(t, &connect).await?))
                }
            }))
            .await?,
        );
    }
    expected.push(stack.notify(&to_everyone("after")).await?);
    let end = *expected.last().unwrap_or(&0);
    let finished = try_join_all(resumed.into_iter().map(|(mut ids, mut s)| async move {
        ids.extend(s.ids_until(end, DELIVERY).await?);
        anyhow::Ok((ids, s.transport()))
    }))
    .await?;
    for (i, (ids, transport)) in finished.iter().enumerate() {
        assert_eq!(
            ids, &expected,
            "session {i} ({transport}) of user{}",
            plan[i].0
        );
    }
    Ok(())
}

/// SIGTERM drains a node: it ends every session at once (SSE stream closed, WebSocket
/// close 1001 "reconnect and resume") and exits 0 within 5 s even with 200 open
/// sessions; the clients resume elsewhere and miss nothing.
#[tokio::test]
async fn sigterm_ends_every_session_and_exits_within_5_s() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let mut a = Gateway::start_with(
        "node-a",
        stack.env().with("REDDOT_MAX_SESSIONS_PER_USER", "300"),
    )
    .await?;
    let b = Gateway::start(&stack, "node-b").await?;
    let token = stack.token("hana").await?;
    let mut sessions = Vec::new();
    for i in 0..200 {
        let transport = if i % 2 == 0 { "sse" } else { "ws" };
        sessions.push(a.client(transport, &Connect::query_token(&token)).await?);
    }
    let first = stack
        .notify(&to_users(&["hana"], "before the stop"))
        .await?;
    try_join_all(sessions.iter_mut().map(|s| s.ids_until(first, DELIVERY))).await?;

    let stopping = tokio::time::Instant::now();
    let clean = a.service.terminate(Duration::from_secs(5)).await?;
    let took = stopping.elapsed();
    assert!(clean, "the node did not exit 0 within 5 s ({took:?})");
    // Every session was ended by the node, not left hanging.
    try_join_all(sessions.iter_mut().map(|s| s.until_end(DELIVERY))).await?;

    let missed = stack.notify(&to_users(&["hana"], "while moving")).await?;
    let mut moved = b
        .client("sse", &Connect::query_token(&token).after_in_query(first))
        .await?;
    assert_eq!(moved.ids_until(missed, DELIVERY).await?, [missed]);
    Ok(())
}

/// A session whose binding the broker confirms only after the session's wait for it
/// (250 ms: a storm of reconnects that all need new bindings, a stalled link) opens
/// unbound. A broadcast reaching it before the confirmation must not make it skip the
/// notifications for its user that went past the node meanwhile.
#[tokio::test]
async fn a_session_bound_late_still_gets_what_went_past_the_node_before_its_binding()
-> anyhow::Result<()> {
    // Arrange: the node reaches RabbitMQ through a proxy; the producer directly.
    let proxy = Proxy::start(&amqp_addr()).await?;
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = node_via(&stack, &proxy, "node-a").await?;
    let token = stack.token("ivy").await?;

    // Act: the link stalls, so her bind request waits in the proxy and the session
    // opens unbound; a notification for her goes past the node (no binding yet), then a
    // broadcast is queued for the node. The link resumes: the broker sends the queued
    // broadcast before it even reads the bind request.
    proxy.pause();
    let mut sse = gw.client("sse", &Connect::bearer(&token)).await?;
    // Sent once the open gave up waiting for the binding and read the database.
    sse.unread_count(0, DELIVERY).await?;
    let hers = stack.notify(&to_users(&["ivy"], "while unbound")).await?;
    let everyone = stack.notify(&to_all("after it")).await?;
    // Both published (the relay deletes an outbox row once the broker confirmed it).
    eventually(DELIVERY, "the outbox to empty", || async {
        Ok((count_rows(&stack, "outbox").await? == 0).then_some(()))
    })
    .await?;
    proxy.resume();

    // Assert: both, in order, once.
    assert_eq!(sse.ids_until(everyone, DELIVERY).await?, [hers, everyone]);
    let later = stack.notify(&to_users(&["ivy"], "bound now")).await?;
    assert_eq!(sse.ids_until(later, DELIVERY).await?, [later]);
    Ok(())
}
