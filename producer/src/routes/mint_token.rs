//! `POST /api/v1/tokens`: mints a gateway JWT for a user, so backends need no JWT library.

use actix_web::{HttpRequest, HttpResponse, post, web};
use reddot_shared::{
    auth,
    domain::UserId,
    error::{ApiError, ErrorCode},
    http::read_json,
    time::rfc3339,
};
use serde_json::{Value, json};

use super::AppState;
use crate::api_key::Backend;

pub const DEFAULT_TTL_SECS: i64 = 3600;
pub const MIN_TTL_SECS: i64 = 60;
pub const MAX_TTL_SECS: i64 = 86_400;

#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "producer",
    request_body(content = super::openapi::MintToken, content_type = "application/json"),
    responses(
        (status = 200, description = "a gateway token", body = super::openapi::TokenResponse),
        (status = 400, description = "invalid user id or ttl", body = super::openapi::ErrorResponse),
        (status = 401, description = "missing or wrong API key", body = super::openapi::ErrorResponse),
        (status = 413, description = "body too large", body = super::openapi::ErrorResponse),
        (status = 415, description = "not application/json", body = super::openapi::ErrorResponse),
    ),
    security(("api_key" = []))
)]
#[post("/api/v1/tokens")]
pub async fn mint_token(
    _backend: Backend,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_json(&req, payload, 64 * 1024).await?;
    let Value::Object(obj) = &body else {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the body must be a JSON object",
        ));
    };
    if let Some(unknown) = obj.keys().find(|k| *k != "user_id" && *k != "ttl_seconds") {
        return Err(ApiError::field(
            unknown,
            format!("unknown field '{unknown}'"),
        ));
    }
    let user = match obj.get("user_id") {
        Some(Value::String(s)) => UserId::parse(s).map_err(|e| ApiError::field("user_id", e.0))?,
        _ => {
            return Err(ApiError::field(
                "user_id",
                "user_id is required and must be a string",
            ));
        }
    };
    let ttl = match obj.get("ttl_seconds") {
        None | Some(Value::Null) => DEFAULT_TTL_SECS,
        Some(v) => v
            .as_i64()
            // 3600.0 is a whole number too; JSON does not tell the two apart.
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() <= MAX_TTL_SECS as f64)
                    .map(|f| f as i64)
            })
            .filter(|t| (MIN_TTL_SECS..=MAX_TTL_SECS).contains(t))
            .ok_or_else(|| {
                ApiError::field(
                    "ttl_seconds",
                    "ttl_seconds is a whole number from 60 to 86400",
                )
            })?,
    };
    let (token, exp) = auth::mint(
        state.jwt_secret.expose(),
        &user,
        ttl,
        state.jwt_audience.as_deref(),
    )
    .map_err(|_| ApiError::internal())?;
    Ok(HttpResponse::Ok().json(json!({"token": token, "expires_at": rfc3339(exp * 1000)})))
}
