//! `POST /api/v1/notifications`: validate, store durably (with the outbox row), answer
//! 201. Publishing is the relay's job, never this handler's.

use actix_web::{HttpRequest, HttpResponse, post, web};
use reddot_shared::{
    domain::{Audience, Kind, UserId},
    error::{ApiError, ErrorCode},
    http::{find_nul, read_json},
    store::write::{IdempotencyClaim, NewNotification, Outcome, WriteRequest, stored_answer},
    time::{now_ms, parse_rfc3339},
};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::AppState;
use crate::api_key::Backend;

pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_BODY_CHARS: usize = 10_000;
pub const MAX_DATA_BYTES: usize = 16 * 1024;
pub const MAX_RECIPIENTS: usize = 10_000;
pub const MAX_SENDER_CHARS: usize = 256;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

#[utoipa::path(
    post,
    path = "/api/v1/notifications",
    tag = "producer",
    request_body(content = super::openapi::CreateNotification, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key, 1-255 printable ASCII characters (spaces allowed inside), kept 24 h per API key", pattern = "^[!-~]([ -~]{0,253}[!-~])?$")),
    responses(
        (status = 201, description = "stored durably; published by the outbox", body = super::openapi::CreatedResponse),
        (status = 400, description = "invalid input", body = super::openapi::ErrorResponse),
        (status = 401, description = "missing or wrong API key", body = super::openapi::ErrorResponse),
        (status = 413, description = "body too large", body = super::openapi::ErrorResponse),
        (status = 415, description = "not application/json", body = super::openapi::ErrorResponse),
        (status = 409, description = "a request with this Idempotency-Key is still being handled", body = super::openapi::ErrorResponse),
        (status = 422, description = "Idempotency-Key reused with another body", body = super::openapi::ErrorResponse),
        (status = 503, description = "database unavailable; nothing stored", body = super::openapi::ErrorResponse),
    ),
    security(("api_key" = []))
)]
#[post("/api/v1/notifications")]
pub async fn create_notification(
    backend: Backend,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let idempotency_key = idempotency_key(&req)?;
    let body = read_json(&req, payload, state.max_body_bytes).await?;
    let idempotency = idempotency_key.map(|key| IdempotencyClaim {
        scope: backend.scope.clone(),
        key,
        request_hash: hex::encode(Sha256::digest(body.to_string().as_bytes())),
    });
    let now = now_ms();
    let notification = match validate(&body, now) {
        Ok(notification) => notification,
        // A repeat gets the first answer for 24 h even when its body no longer passes
        // (an `expires_at` that has passed since): the retry must not turn into a 400.
        Err(invalid) => {
            let earlier = match &idempotency {
                Some(claim) => stored_answer(&state.db, claim, now).await.ok().flatten(),
                None => None,
            };
            return match earlier {
                Some(replay @ Outcome::Replay { .. }) => respond(replay),
                _ => Err(invalid),
            };
        }
    };
    let outcome = state
        .writer
        .write(WriteRequest {
            notification,
            idempotency,
        })
        .await?;
    respond(outcome)
}

fn respond(outcome: Outcome) -> Result<HttpResponse, ApiError> {
    match outcome {
        Outcome::Created(created) => {
            metrics::counter!(reddot_shared::metrics::NOTIFICATIONS_CREATED, "audience" => created.audience.as_str())
                .increment(1);
            tracing::info!(
                id = created.id,
                audience = created.audience.as_str(),
                recipients = created.recipients,
                "notification stored"
            );
            Ok(HttpResponse::Created().json(created))
        }
        Outcome::Replay { status, body } => {
            let status = actix_web::http::StatusCode::from_u16(status)
                .unwrap_or(actix_web::http::StatusCode::CREATED);
            Ok(HttpResponse::build(status)
                .content_type("application/json")
                .insert_header(("Idempotent-Replayed", "true"))
                .body(body))
        }
        Outcome::KeyReused => Err(ApiError {
            code: ErrorCode::IdempotencyKeyReused,
            message: "this Idempotency-Key was used with a different request body".into(),
            field: None,
        }),
    }
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(raw) = req.headers().get("Idempotency-Key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::field(
            "Idempotency-Key",
            "the Idempotency-Key header is 1-255 printable ASCII characters",
        )
    };
    let key = raw.to_str().map_err(|_| bad())?.trim();
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(bad());
    }
    Ok(Some(key.to_owned()))
}

/// Checks every rule of the contract and builds what the store needs.
pub fn validate(body: &Value, now_ms: i64) -> Result<NewNotification, ApiError> {
    let Value::Object(obj) = body else {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the body must be a JSON object",
        ));
    };
    if let Some(path) = find_nul(body, "") {
        return Err(ApiError::field(&path, "NUL characters are not allowed"));
    }
    const FIELDS: [&str; 7] = [
        "to",
        "kind",
        "title",
        "body",
        "data",
        "sender",
        "expires_at",
    ];
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::field(
            unknown,
            format!("unknown field '{unknown}'"),
        ));
    }

    let (audience, users) = recipients(obj.get("to"))?;
    let kind = match obj.get("kind") {
        None | Some(Value::Null) => Kind::default(),
        Some(Value::String(s)) => Kind::parse(s).map_err(|e| ApiError::field("kind", e.0))?,
        Some(_) => return Err(ApiError::field("kind", "kind must be a string")),
    };
    let title = match obj.get("title") {
        Some(Value::String(s)) if (1..=MAX_TITLE_CHARS).contains(&s.chars().count()) => s.clone(),
        Some(Value::String(_)) => {
            return Err(ApiError::field("title", "title must be 1-200 characters"));
        }
        None | Some(Value::Null) => return Err(ApiError::field("title", "title is required")),
        Some(_) => return Err(ApiError::field("title", "title must be a string")),
    };
    let text = optional_string(obj, "body", MAX_BODY_CHARS)?.unwrap_or_default();
    let sender = optional_string(obj, "sender", MAX_SENDER_CHARS)?;
    let data = match obj.get("data") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(data @ Value::Object(_)) => {
            let json = data.to_string();
            if json.len() > MAX_DATA_BYTES {
                return Err(ApiError::field(
                    "data",
                    "data must be at most 16 KiB of JSON",
                ));
            }
            json
        }
        Some(_) => return Err(ApiError::field("data", "data must be a JSON object")),
    };
    let expires_at = match obj.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let at = parse_rfc3339(s).ok_or_else(|| {
                ApiError::field("expires_at", "expires_at must be an RFC 3339 timestamp")
            })?;
            if at <= now_ms {
                return Err(ApiError::field("expires_at", "expires_at is in the past"));
            }
            Some(at)
        }
        Some(_) => {
            return Err(ApiError::field(
                "expires_at",
                "expires_at must be an RFC 3339 string",
            ));
        }
    };
    Ok(NewNotification {
        kind,
        title,
        body: text,
        data,
        sender,
        audience,
        users,
        expires_at,
    })
}

fn optional_string(
    obj: &Map<String, Value>,
    field: &str,
    max_chars: usize,
) -> Result<Option<String>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max_chars => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(ApiError::field(
            field,
            format!("{field} must be at most {max_chars} characters"),
        )),
        Some(_) => Err(ApiError::field(field, format!("{field} must be a string"))),
    }
}

/// `{"users": [...]}` (deduplicated, order kept) or `{"all": true}`.
fn recipients(to: Option<&Value>) -> Result<(Audience, Vec<UserId>), ApiError> {
    let Some(Value::Object(to)) = to else {
        return Err(ApiError::field(
            "to",
            "to is required: {\"users\": [...]} or {\"all\": true}",
        ));
    };
    if let Some(unknown) = to.keys().find(|k| *k != "users" && *k != "all") {
        return Err(ApiError::field(
            &format!("to.{unknown}"),
            format!("unknown field 'to.{unknown}'"),
        ));
    }
    // An explicit null is the same as leaving the half out (generated clients send it).
    let given = |name: &str| to.get(name).filter(|v| !v.is_null());
    match (given("users"), given("all")) {
        (Some(_), Some(_)) => Err(ApiError::field(
            "to",
            "give either to.users or to.all, not both",
        )),
        (None, Some(Value::Bool(true))) => Ok((Audience::All, Vec::new())),
        (None, Some(_)) => Err(ApiError::field("to.all", "to.all must be true")),
        (Some(Value::Array(list)), None) => {
            let mut seen = std::collections::HashSet::with_capacity(list.len());
            let mut users = Vec::with_capacity(list.len());
            for (i, item) in list.iter().enumerate() {
                let field = || format!("to.users[{i}]");
                let Value::String(raw) = item else {
                    return Err(ApiError::field(&field(), "user ids are strings"));
                };
                let user = UserId::parse(raw).map_err(|e| ApiError::field(&field(), e.0))?;
                if seen.insert(user.clone()) {
                    users.push(user);
                    if users.len() > MAX_RECIPIENTS {
                        return Err(ApiError::field(
                            "to.users",
                            "at most 10,000 distinct users per notification",
                        ));
                    }
                }
            }
            if users.is_empty() {
                return Err(ApiError::field(
                    "to.users",
                    "to.users needs at least one user id",
                ));
            }
            Ok((Audience::User, users))
        }
        (Some(_), None) => Err(ApiError::field(
            "to.users",
            "to.users must be an array of user ids",
        )),
        (None, None) => Err(ApiError::field("to", "to needs users or all")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_795_420_800_000;

    fn field_of(body: Value) -> Option<String> {
        validate(&body, NOW).err().and_then(|e| e.field)
    }

    #[test]
    fn a_minimal_targeted_notification_gets_defaults() -> anyhow::Result<()> {
        let n = validate(
            &json!({"to": {"users": ["bob", "alice", "bob"]}, "title": "hi"}),
            NOW,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(n.kind.as_str(), "notice");
        assert_eq!(n.data, "{}");
        assert_eq!(
            n.users.iter().map(UserId::as_str).collect::<Vec<_>>(),
            ["bob", "alice"]
        );
        Ok(())
    }

    #[test]
    fn a_null_half_of_to_counts_as_absent() -> anyhow::Result<()> {
        let targeted = validate(
            &json!({"to": {"users": ["bob"], "all": null}, "title": "hi"}),
            NOW,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(targeted.audience, Audience::User);
        let broadcast = validate(
            &json!({"to": {"users": null, "all": true}, "title": "hi"}),
            NOW,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(broadcast.audience, Audience::All);
        assert_eq!(
            field_of(json!({"to": {"users": null, "all": null}, "title": "x"})).as_deref(),
            Some("to")
        );
        Ok(())
    }

    #[test]
    fn each_rule_names_its_field() {
        let to = json!({"users": ["a"]});
        assert_eq!(field_of(json!({"title": "x"})).as_deref(), Some("to"));
        assert_eq!(
            field_of(json!({"to": {"users": []}, "title": "x"})).as_deref(),
            Some("to.users")
        );
        assert_eq!(
            field_of(json!({"to": {"users": ["ok", "no way"]}, "title": "x"})).as_deref(),
            Some("to.users[1]")
        );
        assert_eq!(
            field_of(json!({"to": {"all": false}, "title": "x"})).as_deref(),
            Some("to.all")
        );
        assert_eq!(
            field_of(json!({"to": to, "title": ""})).as_deref(),
            Some("title")
        );
        assert_eq!(
            field_of(json!({"to": to, "title": "t".repeat(201)})).as_deref(),
            Some("title")
        );
        assert_eq!(
            field_of(json!({"to": to, "title": "x", "kind": "Bad"})).as_deref(),
            Some("kind")
        );
        assert_eq!(
            field_of(json!({"to": to, "title": "x", "body": "b".repeat(10_001)})).as_deref(),
            Some("body")
        );
        assert_eq!(
            field_of(json!({"to": to, "title": "x", "data": [1]})).as_deref(),
            Some("data")
        );
        assert_eq!(
            field_of(json!({"to": to, "title": "x", "data": {"k": "v".repeat(17_000)}})).as_deref(),
            Some("data")
        );
        assert_eq!(
            field_of(json!({"to": to, "title": "x", "expires_at": "2020-01-01T00:00:00Z"}))
                .as_deref(),
            Some("expires_at")
        );
        assert_eq!(
            field_of(json!({"to": to, "title": "x\u{0}"})).as_deref(),
            Some("title")
        );
        assert_eq!(
            field_of(json!({"to": to, "title": "x", "data": {"a": {"b": "\u{0}"}}})).as_deref(),
            Some("data.a.b")
        );
        assert_eq!(
            field_of(json!({"to": to, "title": "x", "titel": "y"})).as_deref(),
            Some("titel")
        );
    }

    #[test]
    fn ten_thousand_distinct_users_pass_and_one_more_fails() {
        let users: Vec<String> = (0..10_001).map(|i| format!("u{i}")).collect();
        assert!(
            validate(
                &json!({"to": {"users": &users[..10_000]}, "title": "x"}),
                NOW
            )
            .is_ok()
        );
        assert_eq!(
            field_of(json!({"to": {"users": users}, "title": "x"})).as_deref(),
            Some("to.users")
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Any JSON value: strings with newlines, `\r`, NUL and any Unicode, deep nesting.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,40}".prop_map(Value::String),
            "[\\n\\r\\x00a-z/.@:-]{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("to".to_owned()),
                        Just("users".to_owned()),
                        Just("all".to_owned()),
                        Just("title".to_owned()),
                        Just("data".to_owned()),
                        Just("kind".to_owned()),
                        ".{0,8}".prop_map(|s| s)
                    ],
                    inner,
                    0..8
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the body, validation either accepts it or answers a 4xx, never panics.
        #[test]
        fn validation_never_panics_and_only_refuses_with_4xx(body in json()) {
            if let Err(e) = validate(&body, 1_795_420_800_000) {
                prop_assert!(e.code.status().is_client_error(), "{e}");
            }
        }

        /// An accepted notification holds no NUL, only valid recipients, and a bounded title.
        #[test]
        fn accepted_notifications_respect_every_rule(
            users in prop::collection::vec("[A-Za-z0-9_.:@-]{1,10}|.{0,5}", 1..5),
            title in ".{0,210}",
        ) {
            let body = serde_json::json!({"to": {"users": users}, "title": title});
            if let Ok(n) = validate(&body, 1_795_420_800_000) {
                prop_assert!(!n.title.contains('\0'));
                prop_assert!((1..=MAX_TITLE_CHARS).contains(&n.title.chars().count()));
                prop_assert!(!n.users.is_empty());
            }
        }
    }
}
