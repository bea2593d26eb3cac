//! API keys: a backend without a configured key gets a JSON 401 and stores nothing;
//! every key listed in `REDDOT_API_KEYS` works.

use reddot_tests::{API_KEY, Backend, Stack};
use reqwest::{StatusCode, header::WWW_AUTHENTICATE};
use serde_json::json;

use crate::helpers::{Answer, count_rows, post_json};

const PATH: &str = "/api/v1/notifications";

#[tokio::test]
async fn a_missing_or_wrong_api_key_is_refused_with_a_json_401_and_nothing_is_stored()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let body = json!({"to": {"users": ["alice"]}, "title": "x"});

    let missing = post_json(&stack, PATH, None, &body, None).await?;
    let wrong = post_json(&stack, PATH, Some("not-a-key"), &body, None).await?;
    let prefix_of_a_key = post_json(&stack, PATH, Some(&API_KEY[..4]), &body, None).await?;
    let basic_scheme = Answer::from(
        stack
            .http
            .post(stack.producer.url(PATH))
            .basic_auth(API_KEY, Some(""))
            .json(&body)
            .send()
            .await?,
    )
    .await?;

    for (case, answer) in [
        ("missing", &missing),
        ("wrong", &wrong),
        ("prefix of a key", &prefix_of_a_key),
        ("basic scheme", &basic_scheme),
    ] {
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{case}: {}",
            answer.json
        );
        assert_eq!(answer.code(), "unauthorized", "{case}: {}", answer.json);
        assert!(answer.json["error"]["message"].is_string(), "{case}");
        assert!(answer.headers.contains_key(WWW_AUTHENTICATE), "{case}");
    }
    assert_eq!(count_rows(&stack, "notifications").await?, 0);
    Ok(())
}

#[tokio::test]
async fn every_configured_api_key_is_accepted() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let body = json!({"to": {"users": ["alice"]}, "title": "x"});

    let first = post_json(&stack, PATH, Some(API_KEY), &body, None).await?;
    let second = post_json(&stack, PATH, Some("second-test-key"), &body, None).await?;

    assert_eq!(first.status, StatusCode::CREATED, "{}", first.json);
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.json);
    assert_eq!(count_rows(&stack, "notifications").await?, 2);
    Ok(())
}

#[tokio::test]
async fn the_admin_views_of_a_users_inbox_need_an_api_key() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    stack
        .notify(&json!({"to": {"users": ["alice"]}, "title": "private"}))
        .await?;

    for path in [
        "/api/v1/users/alice/notifications",
        "/api/v1/users/alice/unread",
    ] {
        for (case, key) in [("missing", None), ("wrong", Some("not-a-key"))] {
            let mut req = stack.http.get(stack.producer.url(path));
            if let Some(key) = key {
                req = req.bearer_auth(key);
            }
            let answer = Answer::from(req.send().await?).await?;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}, {case}");
            assert_eq!(answer.code(), "unauthorized", "{path}, {case}");
            assert!(
                !answer.json.to_string().contains("private"),
                "{path}, {case}: {}",
                answer.json
            );
        }
        let ok = stack
            .http
            .get(stack.producer.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await?;
        assert_eq!(ok.status(), StatusCode::OK, "{path} with the key");
    }
    Ok(())
}
