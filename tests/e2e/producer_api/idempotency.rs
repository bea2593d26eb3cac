//! `Idempotency-Key`: a repeat gets the first answer and stores nothing new; another
//! body with the same key is refused; keys are scoped per API key; concurrent repeats
//! still create one notification.

use reddot_tests::{API_KEY, Backend, Stack};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{count_rows, post_json};

const PATH: &str = "/api/v1/notifications";
const REPLAYED: &str = "Idempotent-Replayed";

async fn a_repeat_with_the_same_key_gets_the_first_answer_and_stores_nothing_new(
    backend: Backend,
) -> anyhow::Result<()> {
    let stack = Stack::start(backend).await?;
    let body = json!({"to": {"users": ["alice", "bob"]}, "title": "Invoice ready"});

    let first = post_json(&stack, PATH, Some(API_KEY), &body, Some("invoice-17")).await?;
    let repeat = post_json(&stack, PATH, Some(API_KEY), &body, Some("invoice-17")).await?;

    assert_eq!(first.status, StatusCode::CREATED, "{}", first.json);
    assert!(!first.headers.contains_key(REPLAYED));
    assert_eq!(repeat.status, StatusCode::CREATED, "{}", repeat.json);
    assert_eq!(repeat.json, first.json);
    assert_eq!(
        repeat.headers.get(REPLAYED).and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(count_rows(&stack, "notifications").await?, 1);
    Ok(())
}

#[tokio::test]
async fn sqlite_a_repeat_with_the_same_key_gets_the_first_answer_and_stores_nothing_new()
-> anyhow::Result<()> {
    a_repeat_with_the_same_key_gets_the_first_answer_and_stores_nothing_new(Backend::Sqlite).await
}

#[tokio::test]
async fn postgres_a_repeat_with_the_same_key_gets_the_first_answer_and_stores_nothing_new()
-> anyhow::Result<()> {
    a_repeat_with_the_same_key_gets_the_first_answer_and_stores_nothing_new(Backend::Postgres).await
}

/// The repeat of a request whose `expires_at` has passed since its first try is still
/// a repeat: the first answer, not a 400 for the past `expires_at`.
async fn a_repeat_after_its_expires_at_passed_still_gets_the_first_answer(
    backend: Backend,
) -> anyhow::Result<()> {
    let stack = Stack::start(backend).await?;
    let expires_at = reddot_shared::time::rfc3339(reddot_shared::time::now_ms() + 1_500);
    let body = json!({"to": {"users": ["alice"]}, "title": "Flash sale", "expires_at": expires_at});

    let first = post_json(&stack, PATH, Some(API_KEY), &body, Some("sale-1")).await?;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.json);
    tokio::time::sleep(std::time::Duration::from_millis(2_000)).await;
    let repeat = post_json(&stack, PATH, Some(API_KEY), &body, Some("sale-1")).await?;
    let fresh = post_json(&stack, PATH, Some(API_KEY), &body, Some("sale-2")).await?;

    assert_eq!(repeat.status, StatusCode::CREATED, "{}", repeat.json);
    assert_eq!(repeat.json, first.json);
    assert_eq!(
        fresh.status,
        StatusCode::BAD_REQUEST,
        "a new key is validated: {}",
        fresh.json
    );
    assert_eq!(fresh.json["error"]["field"], "expires_at");
    assert_eq!(count_rows(&stack, "notifications").await?, 1);
    Ok(())
}

#[tokio::test]
async fn sqlite_a_repeat_after_its_expires_at_passed_still_gets_the_first_answer()
-> anyhow::Result<()> {
    a_repeat_after_its_expires_at_passed_still_gets_the_first_answer(Backend::Sqlite).await
}

#[tokio::test]
async fn postgres_a_repeat_after_its_expires_at_passed_still_gets_the_first_answer()
-> anyhow::Result<()> {
    a_repeat_after_its_expires_at_passed_still_gets_the_first_answer(Backend::Postgres).await
}

async fn the_same_key_with_a_different_body_is_refused_with_422(
    backend: Backend,
) -> anyhow::Result<()> {
    let stack = Stack::start(backend).await?;
    let body = json!({"to": {"users": ["alice"]}, "title": "Invoice ready"});
    let other = json!({"to": {"users": ["alice"]}, "title": "Invoice paid"});

    let first = post_json(&stack, PATH, Some(API_KEY), &body, Some("invoice-17")).await?;
    let reused = post_json(&stack, PATH, Some(API_KEY), &other, Some("invoice-17")).await?;

    assert_eq!(first.status, StatusCode::CREATED, "{}", first.json);
    assert_eq!(
        reused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reused.json
    );
    assert_eq!(reused.code(), "idempotency_key_reused");
    assert_eq!(count_rows(&stack, "notifications").await?, 1);
    Ok(())
}

#[tokio::test]
async fn sqlite_the_same_key_with_a_different_body_is_refused_with_422() -> anyhow::Result<()> {
    the_same_key_with_a_different_body_is_refused_with_422(Backend::Sqlite).await
}

#[tokio::test]
async fn postgres_the_same_key_with_a_different_body_is_refused_with_422() -> anyhow::Result<()> {
    the_same_key_with_a_different_body_is_refused_with_422(Backend::Postgres).await
}

async fn the_same_key_from_another_api_key_creates_a_new_notification(
    backend: Backend,
) -> anyhow::Result<()> {
    let stack = Stack::start(backend).await?;
    let body = json!({"to": {"users": ["alice"]}, "title": "Invoice ready"});

    let mine = post_json(&stack, PATH, Some(API_KEY), &body, Some("invoice-17")).await?;
    let theirs = post_json(
        &stack,
        PATH,
        Some("second-test-key"),
        &body,
        Some("invoice-17"),
    )
    .await?;
    let theirs_again = post_json(
        &stack,
        PATH,
        Some("second-test-key"),
        &body,
        Some("invoice-17"),
    )
    .await?;

    assert_eq!(mine.status, StatusCode::CREATED, "{}", mine.json);
    assert_eq!(theirs.status, StatusCode::CREATED, "{}", theirs.json);
    assert!(!theirs.headers.contains_key(REPLAYED));
    assert_ne!(theirs.json["id"], mine.json["id"]);
    assert_eq!(theirs_again.json["id"], theirs.json["id"]);
    assert_eq!(count_rows(&stack, "notifications").await?, 2);
    Ok(())
}

#[tokio::test]
async fn sqlite_the_same_key_from_another_api_key_creates_a_new_notification() -> anyhow::Result<()>
{
    the_same_key_from_another_api_key_creates_a_new_notification(Backend::Sqlite).await
}

#[tokio::test]
async fn postgres_the_same_key_from_another_api_key_creates_a_new_notification()
-> anyhow::Result<()> {
    the_same_key_from_another_api_key_creates_a_new_notification(Backend::Postgres).await
}

async fn twenty_concurrent_requests_with_one_key_create_one_notification(
    backend: Backend,
) -> anyhow::Result<()> {
    let stack = Stack::start(backend).await?;
    let body = json!({"to": {"users": ["alice"]}, "title": "Only once"});

    let answers = futures_util::future::try_join_all(
        (0..20).map(|_| post_json(&stack, PATH, Some(API_KEY), &body, Some("only-once"))),
    )
    .await?;

    let created: Vec<_> = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .collect();
    assert!(!created.is_empty(), "no request got 201: {answers:?}");
    for answer in &answers {
        let ok = (answer.status == StatusCode::CREATED
            && answer.json["id"] == created[0].json["id"])
            || (answer.status == StatusCode::CONFLICT && answer.code() == "request_in_progress");
        assert!(ok, "unexpected answer {} {}", answer.status, answer.json);
    }
    assert_eq!(count_rows(&stack, "notifications").await?, 1);
    Ok(())
}

#[tokio::test]
async fn sqlite_twenty_concurrent_requests_with_one_key_create_one_notification()
-> anyhow::Result<()> {
    twenty_concurrent_requests_with_one_key_create_one_notification(Backend::Sqlite).await
}

#[tokio::test]
async fn postgres_twenty_concurrent_requests_with_one_key_create_one_notification()
-> anyhow::Result<()> {
    twenty_concurrent_requests_with_one_key_create_one_notification(Backend::Postgres).await
}

#[tokio::test]
async fn an_idempotency_key_over_255_characters_is_refused_with_400() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let body = json!({"to": {"users": ["alice"]}, "title": "x"});

    let longest = post_json(&stack, PATH, Some(API_KEY), &body, Some(&"k".repeat(255))).await?;
    let too_long = post_json(&stack, PATH, Some(API_KEY), &body, Some(&"k".repeat(256))).await?;

    assert_eq!(longest.status, StatusCode::CREATED, "{}", longest.json);
    assert_eq!(
        too_long.status,
        StatusCode::BAD_REQUEST,
        "{}",
        too_long.json
    );
    assert_eq!(too_long.code(), "invalid_request");
    assert_eq!(too_long.field(), Some("Idempotency-Key"));
    assert_eq!(count_rows(&stack, "notifications").await?, 1);
    Ok(())
}
