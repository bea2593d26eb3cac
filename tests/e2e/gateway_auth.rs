//! Who may open a session: a valid HS256 token (header or query) for a valid user id,
//! from an allowed origin; and no session outlives its token.

use std::time::Duration;

use reddot_tests::{
    Backend, Env, JWT_SECRET, ORIGIN, Stack, TestDb, Vhost,
    clients::{Connect, Events, Sse, Ws},
    gateway::{
        Gateway, now_secs, sign, sign_hs512, to_users, token_expiring_in, unsigned_token,
        with_header,
    },
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::stack_with;

const DELIVERY: Duration = Duration::from_secs(20);

/// Tokens the gateway must refuse, with what is wrong with each.
fn bad_tokens() -> Vec<(&'static str, Option<String>)> {
    let in_an_hour = now_secs() + 3600;
    vec![
        ("missing", None),
        (
            "expired beyond the leeway",
            Some(token_expiring_in("alice", -120)),
        ),
        (
            "signed with another secret",
            Some(sign(
                "another-secret-0123456789abcdef",
                &json!({"sub": "alice", "exp": in_an_hour}),
            )),
        ),
        ("alg none", Some(unsigned_token("alice"))),
        (
            "sub not a valid user id",
            Some(sign(
                JWT_SECRET,
                &json!({"sub": "not a user!", "exp": in_an_hour}),
            )),
        ),
        (
            "sub too long",
            Some(sign(
                JWT_SECRET,
                &json!({"sub": "u".repeat(129), "exp": in_an_hour}),
            )),
        ),
        ("no exp", Some(sign(JWT_SECRET, &json!({"sub": "alice"})))),
        (
            "nbf beyond the leeway",
            Some(sign(
                JWT_SECRET,
                &json!({"sub": "alice", "exp": in_an_hour, "nbf": now_secs() + 120}),
            )),
        ),
        (
            "HS512 with the right secret",
            Some(sign_hs512(&json!({"sub": "alice", "exp": in_an_hour}))),
        ),
        (
            "RS256 header over an HS256 signature",
            Some(with_header(
                &token_expiring_in("alice", 3600),
                &json!({"alg": "RS256", "typ": "JWT"}),
            )),
        ),
        (
            "HS256 signature under an alg none header",
            Some(with_header(
                &token_expiring_in("alice", 3600),
                &json!({"alg": "none", "typ": "JWT"}),
            )),
        ),
        (
            "8 KiB long",
            Some(sign(
                JWT_SECRET,
                &json!({"sub": "alice", "exp": in_an_hour, "pad": "x".repeat(8 * 1024)}),
            )),
        ),
        ("not a JWT", Some("not-a-jwt".to_owned())),
    ]
}

fn assert_unauthorized(what: &str, status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
}

#[tokio::test]
async fn invalid_tokens_get_401_with_a_json_error_on_sse_and_websocket() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let http = reqwest::Client::new();

    for (what, token) in bad_tokens() {
        let connects = match &token {
            None => vec![Connect::anonymous()],
            Some(t) => vec![Connect::bearer(t), Connect::query_token(t)],
        };
        for connect in connects {
            let res = Sse::request(&http, &gw.base(), &connect).await?;
            let status = res.status();
            assert!(
                res.headers()[reqwest::header::CONTENT_TYPE]
                    .to_str()?
                    .starts_with("application/json"),
                "{what}"
            );
            let body: Value = res.json().await?;
            assert_unauthorized(&format!("SSE, {what}, {:?}", connect.auth), status, &body);

            match Ws::try_open(&gw.base(), &connect).await? {
                Ok(_) => panic!("WebSocket accepted a token that is {what}"),
                Err(refused) => assert_unauthorized(
                    &format!("WebSocket, {what}, {:?}", connect.auth),
                    refused.status,
                    &refused.body,
                ),
            }
        }
    }

    // The same user with a good token gets in on both.
    let good = stack.token("alice").await?;
    gw.sse(&Connect::bearer(&good))
        .await?
        .expect("unread", DELIVERY)
        .await?;
    gw.ws(&Connect::query_token(&good))
        .await?
        .expect("unread", DELIVERY)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_websocket_upgrade_from_a_foreign_origin_gets_403_and_the_allowed_origin_gets_in()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;

    for origin in ["http://evil.test", "http://app.test.evil.test", "null"] {
        let refused = Ws::try_open(&gw.base(), &Connect::query_token(&token).origin(origin))
            .await?
            .err()
            .ok_or_else(|| anyhow::anyhow!("origin {origin} was let in"))?;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(refused.body["error"]["code"], "forbidden", "{origin}");
    }

    let mut ws = gw.ws(&Connect::query_token(&token).origin(ORIGIN)).await?;
    ws.expect("unread", DELIVERY).await?;
    let id = stack
        .notify(&json!({"to": {"users": ["alice"]}, "title": "from an allowed page"}))
        .await?;
    assert_eq!(ws.ids_until(id, DELIVERY).await?, [id]);
    Ok(())
}

#[tokio::test]
async fn when_the_token_expires_sse_gets_token_expired_and_the_stream_ends() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    // The 30 s leeway applies to accepting the token, not to how long the session lasts.
    let exp = now_secs() + 2;
    let token = sign(JWT_SECRET, &json!({"sub": "alice", "exp": exp}));
    let mut sse = gw.sse(&Connect::query_token(&token)).await?;
    sse.expect("unread", DELIVERY).await?;

    let expired = sse.expect("token_expired", Duration::from_secs(10)).await?;
    let at = chrono::Utc::now().timestamp_millis();

    assert!(
        at >= exp * 1000 - 50,
        "token_expired {} ms early",
        exp * 1000 - at
    );
    assert!(
        at < exp * 1000 + 3000,
        "token_expired {} ms late",
        at - exp * 1000
    );
    assert!(expired.data.is_object());
    assert!(
        sse.next_or_end(Duration::from_secs(5)).await?.is_none(),
        "the stream goes on after token_expired"
    );
    Ok(())
}

#[tokio::test]
async fn when_the_token_expires_a_websocket_gets_token_expired_and_close_code_4001()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let exp = now_secs() + 2;
    let token = sign(JWT_SECRET, &json!({"sub": "alice", "exp": exp}));
    let mut ws = gw.ws(&Connect::bearer(&token)).await?;
    ws.expect("unread", DELIVERY).await?;

    ws.expect("token_expired", Duration::from_secs(10)).await?;
    let at = chrono::Utc::now().timestamp_millis();
    let rest = ws.until_end(Duration::from_secs(5)).await?;

    assert!(
        at >= exp * 1000 - 50,
        "token_expired {} ms early",
        exp * 1000 - at
    );
    assert!(rest.is_empty(), "frames after token_expired: {rest:?}");
    let closed = ws
        .closed()
        .ok_or_else(|| anyhow::anyhow!("no close frame"))?;
    assert_eq!(closed.code, 4001, "{closed:?}");
    Ok(())
}

#[tokio::test]
async fn a_token_expired_within_the_leeway_is_accepted_but_its_session_ends_at_once()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = token_expiring_in("alice", -10);
    // Something to replay: the expired token still gets none of it.
    stack.notify(&to_users(&["alice"], "missed")).await?;

    let mut sse = gw.sse(&Connect::bearer(&token).after(0)).await?;
    sse.expect("unread", DELIVERY).await?;
    sse.expect("token_expired", Duration::from_secs(2)).await?;
    assert!(sse.next_or_end(Duration::from_secs(5)).await?.is_none());

    let mut ws = gw.ws(&Connect::bearer(&token).after(0)).await?;
    ws.expect("unread", DELIVERY).await?;
    ws.expect("token_expired", Duration::from_secs(2)).await?;
    ws.until_end(Duration::from_secs(5)).await?;
    assert_eq!(ws.closed().map(|c| c.code), Some(4001));
    Ok(())
}

#[tokio::test]
async fn a_token_not_yet_valid_within_the_leeway_is_accepted() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    // A backend whose clock runs 10 s ahead of the gateway's.
    let early = sign(
        JWT_SECRET,
        &json!({"sub": "alice", "exp": now_secs() + 3600, "nbf": now_secs() + 10}),
    );

    gw.sse(&Connect::bearer(&early))
        .await?
        .expect("unread", DELIVERY)
        .await?;
    Ok(())
}

/// A backend that mints tokens with `time.time() + 3600` (Python's PyJWT, say): `exp`,
/// `iat` and `nbf` with fractions are NumericDates too (RFC 7519) and must be served.
#[tokio::test]
async fn a_token_whose_times_have_fractions_is_served() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    let token = sign(
        JWT_SECRET,
        &json!({"sub": "alice", "exp": now + 3600.5, "iat": now, "nbf": now - 0.5}),
    );

    let unread = reqwest::Client::new()
        .get(gw.url("/v1/unread"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(unread.status(), StatusCode::OK);
    let mut sse = gw.sse(&Connect::bearer(&token)).await?;
    sse.expect("unread", DELIVERY).await?;
    let sent = stack.notify(&to_users(&["alice"], "fractions")).await?;
    let event = sse.expect("notification", DELIVERY).await?;
    assert_eq!(event.notification_id(), Some(sent));
    Ok(())
}

/// A backend that mints "forever" tokens (an `exp` as far as `i64::MAX`): every transport
/// serves them (the gateway's millisecond arithmetic once overflowed on them).
#[tokio::test]
async fn a_token_with_the_largest_exp_opens_sessions_on_every_transport() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let forever = sign(JWT_SECRET, &json!({"sub": "alice", "exp": i64::MAX}));
    let sent = stack.notify(&to_users(&["alice"], "forever")).await?;

    let mut sse = gw.sse(&Connect::bearer(&forever).after(0)).await?;
    let event = sse.expect("notification", DELIVERY).await?;
    assert_eq!(event.notification_id(), Some(sent));
    let mut ws = gw.ws(&Connect::bearer(&forever).after(0)).await?;
    let event = ws.expect("notification", DELIVERY).await?;
    assert_eq!(event.notification_id(), Some(sent));
    let poll = reqwest::Client::new()
        .get(gw.url("/v1/poll?cursor=0&timeout=1"))
        .bearer_auth(&forever)
        .send()
        .await?;
    assert_eq!(poll.status(), StatusCode::OK);
    let body: Value = poll.json().await?;
    assert_eq!(body["notifications"][0]["id"], sent, "{body}");
    Ok(())
}

#[tokio::test]
async fn a_64_kib_token_is_refused_with_a_4xx_and_the_gateway_keeps_serving() -> anyhow::Result<()>
{
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let huge = sign(
        JWT_SECRET,
        &json!({"sub": "alice", "exp": now_secs() + 3600, "pad": "x".repeat(64 * 1024)}),
    );
    // A URL cannot carry 64 KiB (the client refuses to build it): 30 KiB in the query.
    let long = sign(
        JWT_SECRET,
        &json!({"sub": "alice", "exp": now_secs() + 3600, "pad": "x".repeat(30 * 1024)}),
    );
    let http = reqwest::Client::new();

    for (how, request) in [
        ("header", http.get(gw.url("/v1/stream")).bearer_auth(&huge)),
        (
            "query",
            http.get(gw.url(&format!("/v1/stream?access_token={long}"))),
        ),
    ] {
        // Past the HTTP server's header limit: 431, never a 5xx and never a session.
        let status = request.send().await?.status();
        assert!(
            status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                || status == StatusCode::UNAUTHORIZED,
            "{how}: {status}"
        );
    }
    let good = stack.token("alice").await?;
    gw.sse(&Connect::bearer(&good))
        .await?
        .expect("unread", DELIVERY)
        .await?;
    Ok(())
}

/// `REDDOT_JWT_AUDIENCE` on both services: the producer's tokens name it and open every
/// kind of access; a token of the same secret that does not name it (one the app signed
/// for something else) opens nothing.
#[tokio::test]
async fn with_an_audience_set_only_tokens_naming_it_get_in() -> anyhow::Result<()> {
    const AUDIENCE: &str = "reddot-gateway";
    let with_audience = |db: &TestDb, vhost: &Vhost| {
        Env::new(&db.url, &vhost.url()).with("REDDOT_JWT_AUDIENCE", AUDIENCE)
    };
    let stack = stack_with(Backend::Sqlite, with_audience).await?;
    let gw = Gateway::start_with("node-a", with_audience(&stack.db, &stack.vhost)).await?;
    let http = reqwest::Client::new();
    let in_an_hour = now_secs() + 3600;

    let minted = stack.token("alice").await?;
    let mut expect_audience = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    expect_audience.set_audience(&[AUDIENCE]);
    let claims = jsonwebtoken::decode::<Value>(
        &minted,
        &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &expect_audience,
    )?
    .claims;
    assert_eq!(claims["aud"], AUDIENCE, "{claims}");
    let listed = sign(
        JWT_SECRET,
        &json!({"sub": "alice", "exp": in_an_hour, "aud": ["app", AUDIENCE]}),
    );
    for token in [&minted, &listed] {
        let unread = http
            .get(gw.url("/v1/unread"))
            .bearer_auth(token)
            .send()
            .await?;
        assert_eq!(unread.status(), StatusCode::OK);
    }
    let mut sse = gw.sse(&Connect::bearer(&minted)).await?;
    sse.expect("unread", DELIVERY).await?;
    let sent = stack
        .notify(&to_users(&["alice"], "for the audience"))
        .await?;
    assert_eq!(
        sse.expect("notification", DELIVERY)
            .await?
            .notification_id(),
        Some(sent)
    );

    for (what, claims) in [
        ("no aud", json!({"sub": "alice", "exp": in_an_hour})),
        (
            "another aud",
            json!({"sub": "alice", "exp": in_an_hour, "aud": "app"}),
        ),
        (
            "a list without it",
            json!({"sub": "alice", "exp": in_an_hour, "aud": ["app"]}),
        ),
    ] {
        let token = sign(JWT_SECRET, &claims);
        let res = http
            .get(gw.url("/v1/unread"))
            .bearer_auth(&token)
            .send()
            .await?;
        let status = res.status();
        assert_unauthorized(&format!("/v1/unread, {what}"), status, &res.json().await?);
        let res = Sse::request(&http, &gw.base(), &Connect::query_token(&token)).await?;
        let status = res.status();
        assert_unauthorized(&format!("SSE, {what}"), status, &res.json().await?);
        match Ws::try_open(&gw.base(), &Connect::query_token(&token)).await? {
            Ok(_) => panic!("WebSocket accepted a token with {what}"),
            Err(refused) => {
                assert_unauthorized(&format!("WebSocket, {what}"), refused.status, &refused.body)
            }
        }
    }
    Ok(())
}
