//! The operational endpoints: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, and the
//! JSON 404 for everything else.

use reddot_tests::{Backend, Stack};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::get;

#[tokio::test]
async fn healthz_answers_200() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;

    let answer = get(&stack, "/healthz").await?;

    assert_eq!(answer.status, StatusCode::OK);
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

#[tokio::test]
async fn an_unknown_path_is_a_json_404() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;

    let answer = get(&stack, "/api/v1/nothing-here").await?;

    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.code(), "not_found", "{}", answer.json);
    assert!(answer.json["error"]["message"].is_string());
    Ok(())
}
