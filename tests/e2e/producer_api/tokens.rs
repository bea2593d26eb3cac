//! `POST /api/v1/tokens`: a gateway JWT (HS256 with the shared secret, `sub` = the user,
//! `exp` = now + ttl) for backends that have no JWT library.

use reddot_tests::{API_KEY, Backend, JWT_SECRET, Stack};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Answer, post_json};

const PATH: &str = "/api/v1/tokens";

/// An answer of the token endpoint and the Unix seconds around the request.
struct Minted {
    answer: Answer,
    sent_at: i64,
    answered_at: i64,
}

async fn mint(stack: &Stack, body: &Value) -> anyhow::Result<Minted> {
    let sent_at = chrono::Utc::now().timestamp();
    let answer = post_json(stack, PATH, Some(API_KEY), body, None).await?;
    Ok(Minted {
        answer,
        sent_at,
        answered_at: chrono::Utc::now().timestamp(),
    })
}

/// Verifies the token as the gateway does: signature, algorithm and `exp`.
fn claims_of(token: &str) -> anyhow::Result<Value> {
    let data = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    )?;
    Ok(data.claims)
}

/// Asserts the answer carries a valid token for `user` that expires `ttl` seconds after
/// it was minted.
fn assert_token_for(minted: &Minted, user: &str, ttl: i64) -> anyhow::Result<()> {
    let answer = &minted.answer;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    let token = answer.json["token"].as_str().unwrap_or_default();
    let claims = claims_of(token)?;
    let exp = claims["exp"].as_i64().unwrap_or_default();
    assert_eq!(claims["sub"], user);
    assert!(
        (minted.sent_at + ttl..=minted.answered_at + ttl).contains(&exp),
        "exp {exp} is not {ttl} s after the request ({}..={})",
        minted.sent_at,
        minted.answered_at
    );
    let expires_at = answer.json["expires_at"].as_str().unwrap_or_default();
    let expires_at = chrono::DateTime::parse_from_rfc3339(expires_at)
        .map_err(|e| anyhow::anyhow!("expires_at is not RFC 3339: {e}: {}", answer.json))?;
    assert_eq!(expires_at.timestamp(), exp, "expires_at matches exp");
    Ok(())
}

#[tokio::test]
async fn a_minted_token_is_an_hs256_jwt_for_the_user_that_expires_after_the_ttl()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;

    let minted = mint(
        &stack,
        &json!({"user_id": "alice@example.com", "ttl_seconds": 600}),
    )
    .await?;
    let wrong_secret = jsonwebtoken::decode::<Value>(
        minted.answer.json["token"].as_str().unwrap_or_default(),
        &jsonwebtoken::DecodingKey::from_secret(b"another-secret"),
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    );

    assert_token_for(&minted, "alice@example.com", 600)?;
    assert!(wrong_secret.is_err(), "the token is signed with the secret");
    Ok(())
}

#[tokio::test]
async fn tokens_last_an_hour_by_default_and_60_to_86400_seconds_on_request() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;

    let default = mint(&stack, &json!({"user_id": "alice"})).await?;
    let shortest = mint(&stack, &json!({"user_id": "alice", "ttl_seconds": 60})).await?;
    let longest = mint(&stack, &json!({"user_id": "alice", "ttl_seconds": 86_400})).await?;

    assert_token_for(&default, "alice", 3600)?;
    assert_token_for(&shortest, "alice", 60)?;
    assert_token_for(&longest, "alice", 86_400)?;
    Ok(())
}

#[tokio::test]
async fn a_ttl_outside_60_to_86400_or_not_a_whole_number_is_refused() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let ttls = [
        json!(59),
        json!(86_401),
        json!(0),
        json!(-3600),
        json!(3600.5),
        json!("3600"),
        json!(true),
    ];

    for ttl in ttls {
        let answer = mint(&stack, &json!({"user_id": "alice", "ttl_seconds": ttl}))
            .await?
            .answer;

        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "ttl {ttl}: {}",
            answer.json
        );
        assert_eq!(answer.code(), "invalid_request", "ttl {ttl}");
        assert_eq!(answer.field(), Some("ttl_seconds"), "ttl {ttl}");
    }
    Ok(())
}

#[tokio::test]
async fn a_token_for_an_invalid_user_id_is_refused() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let user_ids = [
        json!(""),
        json!("no way"),
        json!("a/b"),
        json!("u".repeat(129)),
        json!(42),
        json!(null),
    ];

    for user_id in user_ids {
        let answer = mint(&stack, &json!({"user_id": user_id})).await?.answer;

        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{user_id}: {}",
            answer.json
        );
        assert_eq!(answer.field(), Some("user_id"), "{user_id}");
    }
    let missing = mint(&stack, &json!({})).await?.answer;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST, "{}", missing.json);
    assert_eq!(missing.field(), Some("user_id"));
    Ok(())
}

#[tokio::test]
async fn minting_a_token_needs_an_api_key() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let body = json!({"user_id": "alice"});

    let missing = post_json(&stack, PATH, None, &body, None).await?;
    let wrong = post_json(&stack, PATH, Some("not-a-key"), &body, None).await?;

    for answer in [&missing, &wrong] {
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.json);
        assert_eq!(answer.code(), "unauthorized");
        assert!(answer.json.get("token").is_none());
    }
    Ok(())
}
