//! Every validation rule of `POST /api/v1/notifications`: a 400 naming the field to
//! blame (or 400/413/415 for a body that is not a JSON request at all), nothing stored;
//! and values exactly at each limit accepted.

use reddot_tests::{API_KEY, Backend, Env, Stack};
use reqwest::{StatusCode, header::CONTENT_TYPE};
use serde_json::{Value, json};

use crate::helpers::{Answer, count_rows, post_json, stack_with};

const PATH: &str = "/api/v1/notifications";

fn in_one_hour() -> String {
    (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()
}

/// A `data` object whose serialized JSON is exactly `bytes` long.
fn data_of_size(bytes: usize) -> Value {
    // `{"k":"…"}` is 8 bytes around the string.
    json!({"k": "v".repeat(bytes - 8)})
}

/// POST with raw bytes and an optional content type.
async fn post_raw(
    stack: &Stack,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> anyhow::Result<Answer> {
    let mut req = stack
        .http
        .post(stack.producer.url(PATH))
        .bearer_auth(API_KEY)
        .body(body);
    if let Some(content_type) = content_type {
        req = req.header(CONTENT_TYPE, content_type);
    }
    Answer::from(req.send().await?).await
}

#[tokio::test]
async fn each_invalid_field_is_refused_with_400_naming_that_field_and_nothing_is_stored()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let to = json!({"users": ["alice"]});
    let cases: Vec<(&str, Value, &str)> = vec![
        ("missing to", json!({"title": "x"}), "to"),
        (
            "to is not an object",
            json!({"to": ["alice"], "title": "x"}),
            "to",
        ),
        ("to is empty", json!({"to": {}, "title": "x"}), "to"),
        (
            "empty users",
            json!({"to": {"users": []}, "title": "x"}),
            "to.users",
        ),
        (
            "users not a list",
            json!({"to": {"users": "alice"}, "title": "x"}),
            "to.users",
        ),
        (
            "user id with a space",
            json!({"to": {"users": ["ok", "no way"]}, "title": "x"}),
            "to.users[1]",
        ),
        (
            "empty user id",
            json!({"to": {"users": [""]}, "title": "x"}),
            "to.users[0]",
        ),
        (
            "129-char user id",
            json!({"to": {"users": ["u".repeat(129)]}, "title": "x"}),
            "to.users[0]",
        ),
        (
            "user id not a string",
            json!({"to": {"users": [42]}, "title": "x"}),
            "to.users[0]",
        ),
        (
            "all false",
            json!({"to": {"all": false}, "title": "x"}),
            "to.all",
        ),
        (
            "users and all",
            json!({"to": {"users": ["alice"], "all": true}, "title": "x"}),
            "to",
        ),
        (
            "upper-case kind",
            json!({"to": to, "title": "x", "kind": "Comment"}),
            "kind",
        ),
        (
            "65-char kind",
            json!({"to": to, "title": "x", "kind": "k".repeat(65)}),
            "kind",
        ),
        (
            "empty kind",
            json!({"to": to, "title": "x", "kind": ""}),
            "kind",
        ),
        (
            "kind not a string",
            json!({"to": to, "title": "x", "kind": 7}),
            "kind",
        ),
        ("missing title", json!({"to": to}), "title"),
        ("empty title", json!({"to": to, "title": ""}), "title"),
        (
            "201-char title",
            json!({"to": to, "title": "t".repeat(201)}),
            "title",
        ),
        ("title not a string", json!({"to": to, "title": 5}), "title"),
        (
            "10,001-char body",
            json!({"to": to, "title": "x", "body": "b".repeat(10_001)}),
            "body",
        ),
        (
            "data is a list",
            json!({"to": to, "title": "x", "data": [1]}),
            "data",
        ),
        (
            "data is a string",
            json!({"to": to, "title": "x", "data": "{}"}),
            "data",
        ),
        (
            "data one byte over 16 KiB",
            json!({"to": to, "title": "x", "data": data_of_size(16 * 1024 + 1)}),
            "data",
        ),
        (
            "expires_at in the past",
            json!({"to": to, "title": "x", "expires_at": "2020-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            "expires_at not RFC 3339",
            json!({"to": to, "title": "x", "expires_at": "tomorrow"}),
            "expires_at",
        ),
        (
            "NUL in the title",
            json!({"to": to, "title": "x\u{0}y"}),
            "title",
        ),
        (
            "NUL in the body",
            json!({"to": to, "title": "x", "body": "\u{0}"}),
            "body",
        ),
        (
            "NUL in a user id",
            json!({"to": {"users": ["al\u{0}ice"]}, "title": "x"}),
            "to.users[0]",
        ),
        (
            "NUL nested in data",
            json!({"to": to, "title": "x", "data": {"a": {"b": "\u{0}"}}}),
            "data.a.b",
        ),
        (
            "NUL in a list in data",
            json!({"to": to, "title": "x", "data": {"a": ["ok", "\u{0}"]}}),
            "data.a[1]",
        ),
    ];

    let mut wrong = Vec::new();
    for (case, body, field) in &cases {
        let answer = post_json(&stack, PATH, Some(API_KEY), body, None).await?;
        let ok = answer.status == StatusCode::BAD_REQUEST
            && answer.code() == "invalid_request"
            && answer.field() == Some(*field)
            && answer.json["error"]["message"].is_string()
            && answer.json["error"]["hint"].is_string();
        if !ok {
            wrong.push(format!(
                "{case}: expected 400 invalid_request on '{field}', got {} {}",
                answer.status, answer.json
            ));
        }
    }

    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(count_rows(&stack, "notifications").await?, 0);
    Ok(())
}

#[tokio::test]
async fn values_exactly_at_every_limit_are_accepted() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let to = json!({"users": ["alice"]});
    let cases: Vec<(&str, Value)> = vec![
        (
            "200-char title of multi-byte characters",
            json!({"to": to, "title": "é".repeat(200)}),
        ),
        (
            "10,000-char body",
            json!({"to": to, "title": "x", "body": "b".repeat(10_000)}),
        ),
        (
            "data of exactly 16 KiB",
            json!({"to": to, "title": "x", "data": data_of_size(16 * 1024)}),
        ),
        (
            "64-char kind",
            json!({"to": to, "title": "x", "kind": "k".repeat(64)}),
        ),
        (
            "kind with every allowed character",
            json!({"to": to, "title": "x", "kind": "a-z_0.9"}),
        ),
        (
            "128-char user id",
            json!({"to": {"users": ["u".repeat(128)]}, "title": "x"}),
        ),
        (
            "user id with every allowed punctuation",
            json!({"to": {"users": ["A.b_c:d@e-f"]}, "title": "x"}),
        ),
        (
            "expires_at in the future",
            json!({"to": to, "title": "x", "expires_at": in_one_hour()}),
        ),
        (
            "empty data object and null optionals",
            json!({"to": to, "title": "x", "data": {}, "kind": null, "body": null, "sender": null, "expires_at": null}),
        ),
    ];

    let mut wrong = Vec::new();
    for (case, body) in &cases {
        let answer = post_json(&stack, PATH, Some(API_KEY), body, None).await?;
        if answer.status != StatusCode::CREATED {
            wrong.push(format!(
                "{case}: expected 201, got {} {}",
                answer.status, answer.json
            ));
        }
    }

    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        count_rows(&stack, "notifications").await?,
        cases.len() as i64
    );
    Ok(())
}

#[tokio::test]
async fn ten_thousand_distinct_users_are_accepted_and_one_more_is_refused() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let distinct: Vec<String> = (0..10_001).map(|i| format!("user{i}")).collect();
    // 10,000 distinct ids, 500 of them listed twice: duplicates do not count.
    let mut with_repeats = distinct[..10_000].to_vec();
    with_repeats.extend_from_slice(&distinct[..500]);

    let accepted = stack
        .post(&json!({"to": {"users": with_repeats}, "title": "x"}))
        .await?;
    let refused = post_json(
        &stack,
        PATH,
        Some(API_KEY),
        &json!({"to": {"users": distinct}, "title": "x"}),
        None,
    )
    .await?;

    assert_eq!(accepted.0, StatusCode::CREATED, "{}", accepted.1);
    assert_eq!(accepted.1["recipients"], 10_000);
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.json);
    assert_eq!(refused.field(), Some("to.users"));
    assert_eq!(count_rows(&stack, "notifications").await?, 1);
    assert_eq!(count_rows(&stack, "recipients").await?, 10_000);
    Ok(())
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused_with_invalid_json() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;

    let broken = post_raw(
        &stack,
        Some("application/json"),
        r#"{"to": {"users": ["a"]"#,
    )
    .await?;
    let empty = post_raw(&stack, Some("application/json"), "").await?;
    let not_an_object = post_raw(&stack, Some("application/json"), "[1, 2]").await?;

    for answer in [&broken, &empty] {
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.json);
        assert_eq!(answer.code(), "invalid_json", "{}", answer.json);
    }
    assert_eq!(not_an_object.status, StatusCode::BAD_REQUEST);
    assert_eq!(not_an_object.code(), "invalid_request");
    assert_eq!(count_rows(&stack, "notifications").await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_body_not_declared_as_json_is_refused_with_415() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let valid = json!({"to": {"users": ["alice"]}, "title": "x"}).to_string();

    let plain = post_raw(&stack, Some("text/plain"), valid.clone()).await?;
    let form = post_raw(
        &stack,
        Some("application/x-www-form-urlencoded"),
        valid.clone(),
    )
    .await?;
    let undeclared = post_raw(&stack, None, valid.clone()).await?;
    let with_charset = post_raw(&stack, Some("application/json; charset=utf-8"), valid).await?;

    for answer in [&plain, &form, &undeclared] {
        assert_eq!(
            answer.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{}",
            answer.json
        );
        assert_eq!(answer.code(), "unsupported_media_type");
    }
    assert_eq!(
        with_charset.status,
        StatusCode::CREATED,
        "{}",
        with_charset.json
    );
    assert_eq!(count_rows(&stack, "notifications").await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_body_over_the_configured_limit_is_refused_with_413() -> anyhow::Result<()> {
    let stack = stack_with(Backend::Sqlite, |db, vhost| {
        Env::new(&db.url, &vhost.url()).with("REDDOT_MAX_BODY_BYTES", "1024")
    })
    .await?;
    let body_of = |len: usize| {
        let padding = len
            - json!({"to": {"users": ["alice"]}, "title": "x", "body": ""})
                .to_string()
                .len();
        json!({"to": {"users": ["alice"]}, "title": "x", "body": "b".repeat(padding)}).to_string()
    };
    let chunked = |text: String| {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = text
            .as_bytes()
            .chunks(256)
            .map(|c| Ok(c.to_vec()))
            .collect();
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
    };

    let at_limit = post_raw(&stack, Some("application/json"), body_of(1024)).await?;
    let over = post_raw(&stack, Some("application/json"), body_of(1025)).await?;
    let over_chunked = post_raw(&stack, Some("application/json"), chunked(body_of(4096))).await?;

    assert_eq!(at_limit.status, StatusCode::CREATED, "{}", at_limit.json);
    for answer in [&over, &over_chunked] {
        assert_eq!(
            answer.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{}",
            answer.json
        );
        assert_eq!(answer.code(), "payload_too_large");
    }
    assert_eq!(count_rows(&stack, "notifications").await?, 1);
    Ok(())
}
