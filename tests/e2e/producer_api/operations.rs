//! The operational endpoints: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, and the
//! JSON 404 for everything else.

use anyhow::Context;
use reddot_tests::{API_KEY, Backend, Stack};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{get, post_json};

#[tokio::test]
async fn healthz_answers_200() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;

    let answer = get(&stack, "/healthz").await?;
    // Load balancers probe with HEAD too.
    let head = stack
        .http
        .head(stack.producer.url("/healthz"))
        .send()
        .await?;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(head.status(), StatusCode::OK);
    Ok(())
}

async fn readyz_reports_the_database_ok_and_a_numeric_outbox_lag(
    backend: Backend,
) -> anyhow::Result<()> {
    let stack = Stack::start(backend).await?;

    let answer = get(&stack, "/readyz").await?;

    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["database"], "ok", "{}", answer.json);
    assert!(
        matches!(answer.json["rabbitmq"].as_str(), Some("ok" | "down")),
        "{}",
        answer.json
    );
    assert!(
        answer.json["outbox_lag"].as_i64().is_some_and(|n| n >= 0),
        "outbox_lag is a count: {}",
        answer.json
    );
    Ok(())
}

#[tokio::test]
async fn sqlite_readyz_reports_the_database_ok_and_a_numeric_outbox_lag() -> anyhow::Result<()> {
    readyz_reports_the_database_ok_and_a_numeric_outbox_lag(Backend::Sqlite).await
}

#[tokio::test]
async fn postgres_readyz_reports_the_database_ok_and_a_numeric_outbox_lag() -> anyhow::Result<()> {
    readyz_reports_the_database_ok_and_a_numeric_outbox_lag(Backend::Postgres).await
}

#[tokio::test]
async fn metrics_count_created_notifications() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    stack
        .notify(&json!({"to": {"users": ["alice"]}, "title": "x"}))
        .await?;

    let res = stack
        .http
        .get(stack.producer.url("/metrics"))
        .send()
        .await?;
    let status = res.status();
    let text = res.text().await?;

    assert_eq!(status, StatusCode::OK);
    let created: f64 = text
        .lines()
        .filter(|l| l.starts_with("reddot_notifications_created_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(created, 1.0, "one notification counted in:\n{text}");
    Ok(())
}

#[tokio::test]
async fn openapi_describes_the_notification_and_token_endpoints() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;

    let answer = get(&stack, "/openapi.json").await?;

    assert_eq!(answer.status, StatusCode::OK);
    let paths = &answer.json["paths"];
    assert!(
        paths["/api/v1/notifications"]["post"].is_object(),
        "{paths}"
    );
    assert!(paths["/api/v1/tokens"]["post"].is_object(), "{paths}");
    Ok(())
}

/// A limit of the spec, as a number.
fn limit(schema: &Value, keyword: &str) -> anyhow::Result<u64> {
    schema[keyword]
        .as_u64()
        .with_context(|| format!("no {keyword} in {schema}"))
}

/// A client generated from the spec and the server agree: at each limit the spec gives,
/// the API accepts; one past it, it refuses with a 400 naming the field.
#[tokio::test]
async fn the_openapi_limits_are_the_limits_the_api_enforces() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let spec = get(&stack, "/openapi.json").await?.json;
    let schemas = &spec["components"]["schemas"];
    let create = &schemas["CreateNotification"];
    assert_eq!(create["additionalProperties"], false, "{create}");
    assert_eq!(
        schemas["Recipients"]["oneOf"].as_array().map(Vec::len),
        Some(2),
        "{}",
        schemas["Recipients"]
    );

    let stack = &stack;
    let post = |body: Value| async move {
        post_json(stack, "/api/v1/notifications", Some(API_KEY), &body, None).await
    };
    let base = json!({"to": {"users": ["alice"]}, "title": "t"});
    for field in ["title", "body", "sender", "kind"] {
        let max = limit(&create["properties"][field], "maxLength")? as usize;
        let mut at = base.clone();
        at[field] = json!("a".repeat(max));
        let answer = post(at).await?;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{field}: {}",
            answer.json
        );
        let mut past = base.clone();
        past[field] = json!("a".repeat(max + 1));
        let answer = post(past).await?;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{field}");
        assert_eq!(answer.json["error"]["field"], field, "{}", answer.json);
    }
    let max_users = limit(&schemas["ToUsers"]["properties"]["users"], "maxItems")? as usize;
    let users = |n: usize| (0..n).map(|i| format!("u{i}")).collect::<Vec<_>>();
    let answer = post(json!({"to": {"users": users(max_users)}, "title": "t"})).await?;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    let answer = post(json!({"to": {"users": users(max_users + 1)}, "title": "t"})).await?;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.json);

    let ttl = &schemas["MintToken"]["properties"]["ttl_seconds"];
    let (min, max) = (limit(ttl, "minimum")?, limit(ttl, "maximum")?);
    for (seconds, accepted) in [(min - 1, false), (min, true), (max, true), (max + 1, false)] {
        let body = json!({"user_id": "alice", "ttl_seconds": seconds});
        let answer = post_json(stack, "/api/v1/tokens", Some(API_KEY), &body, None).await?;
        assert_eq!(
            answer.status.is_success(),
            accepted,
            "{seconds}: {}",
            answer.json
        );
    }

    let params = &spec["paths"]["/api/v1/users/{user_id}/notifications"]["get"]["parameters"];
    let page = params
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "limit"))
        .with_context(|| format!("no limit parameter in {params}"))?;
    let (min, max) = (
        limit(&page["schema"], "minimum")?,
        limit(&page["schema"], "maximum")?,
    );
    for (n, accepted) in [(min - 1, false), (min, true), (max, true), (max + 1, false)] {
        let answer = stack
            .http
            .get(
                stack
                    .producer
                    .url(&format!("/api/v1/users/alice/notifications?limit={n}")),
            )
            .bearer_auth(API_KEY)
            .send()
            .await?;
        assert_eq!(answer.status().is_success(), accepted, "limit={n}");
    }
    Ok(())
}

#[tokio::test]
async fn an_unknown_path_is_a_json_404() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;

    let answer = get(&stack, "/api/v1/nothing-here").await?;

    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.code(), "not_found", "{}", answer.json);
    assert!(answer.json["error"]["message"].is_string());
    Ok(())
}
