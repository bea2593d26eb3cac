//! The 201 answer of `POST /api/v1/notifications` and what it stores: one row per
//! notification, one recipient row per distinct user, none for a broadcast.

use std::collections::BTreeSet;

use reddot_tests::{Backend, Stack};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::count_rows;

fn keys(json: &Value) -> BTreeSet<&str> {
    json.as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

async fn a_created_notification_is_answered_with_its_id_time_audience_and_distinct_recipients(
    backend: Backend,
) -> anyhow::Result<()> {
    let stack = Stack::start(backend).await?;
    let before = chrono::Utc::now();

    let (status, created) = stack
        .post(&json!({
            "to": {"users": ["alice", "bob", "alice"]}, "kind": "comment",
            "title": "New reply", "body": "bob replied to your post",
            "data": {"post_id": 42}, "sender": "bob",
        }))
        .await?;
    let after = chrono::Utc::now();
    let next = stack
        .notify(&json!({"to": {"users": ["carol"]}, "title": "next"}))
        .await?;

    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        keys(&created),
        BTreeSet::from(["id", "created_at", "audience", "recipients"])
    );
    let id = created["id"].as_i64().unwrap_or(0);
    assert!(id > 0, "id must be a positive integer: {created}");
    let created_at =
        chrono::DateTime::parse_from_rfc3339(created["created_at"].as_str().unwrap_or(""))
            .map_err(|e| anyhow::anyhow!("created_at is not RFC 3339: {e}: {created}"))?;
    let slack = chrono::Duration::seconds(1);
    assert!(
        created_at >= before - slack && created_at <= after + slack,
        "created_at {created_at} is not between {before} and {after}"
    );
    assert_eq!(created["audience"], "user");
    assert_eq!(created["recipients"], 2, "duplicates count once");
    assert!(next > id, "ids increase: {next} after {id}");
    assert_eq!(count_rows(&stack, "notifications").await?, 2);
    assert_eq!(
        count_rows(&stack, &format!("recipients WHERE notification_id = {id}")).await?,
        2
    );
    Ok(())
}

#[tokio::test]
async fn sqlite_a_created_notification_is_answered_with_its_id_time_audience_and_distinct_recipients()
-> anyhow::Result<()> {
    a_created_notification_is_answered_with_its_id_time_audience_and_distinct_recipients(
        Backend::Sqlite,
    )
    .await
}

#[tokio::test]
async fn postgres_a_created_notification_is_answered_with_its_id_time_audience_and_distinct_recipients()
-> anyhow::Result<()> {
    a_created_notification_is_answered_with_its_id_time_audience_and_distinct_recipients(
        Backend::Postgres,
    )
    .await
}

async fn a_broadcast_is_answered_with_audience_all_and_null_recipients_and_no_recipient_rows(
    backend: Backend,
) -> anyhow::Result<()> {
    let stack = Stack::start(backend).await?;

    let (status, created) = stack
        .post(&json!({"to": {"all": true}, "title": "Maintenance tonight"}))
        .await?;

    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["audience"], "all");
    assert_eq!(
        created.get("recipients"),
        Some(&Value::Null),
        "recipients is present and null: {created}"
    );
    assert_eq!(count_rows(&stack, "notifications").await?, 1);
    assert_eq!(count_rows(&stack, "recipients").await?, 0);
    Ok(())
}

#[tokio::test]
async fn sqlite_a_broadcast_is_answered_with_audience_all_and_null_recipients_and_no_recipient_rows()
-> anyhow::Result<()> {
    a_broadcast_is_answered_with_audience_all_and_null_recipients_and_no_recipient_rows(
        Backend::Sqlite,
    )
    .await
}

#[tokio::test]
async fn postgres_a_broadcast_is_answered_with_audience_all_and_null_recipients_and_no_recipient_rows()
-> anyhow::Result<()> {
    a_broadcast_is_answered_with_audience_all_and_null_recipients_and_no_recipient_rows(
        Backend::Postgres,
    )
    .await
}
