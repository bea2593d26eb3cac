//! The authenticated user, as an extractor: a JWT from `Authorization: Bearer` or, for
//! EventSource / WebSocket / iframe which cannot set headers, `?access_token=`.

use std::{
    collections::HashMap,
    future::{Ready, ready},
};

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use reddot_shared::{
    auth::{self, AuthError},
    domain::UserId,
    error::ApiError,
    http::bearer,
};

use crate::state::GatewayState;

#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user: UserId,
    /// The token's `exp`, Unix seconds: no session outlives it.
    pub expires_at: i64,
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<AuthUser, ApiError> {
    let state = req
        .app_data::<web::Data<GatewayState>>()
        .ok_or_else(ApiError::internal)?;
    let from_query;
    let token = match bearer(req) {
        Some(t) => t,
        None => {
            from_query = query_param(req, "access_token");
            from_query.as_deref().ok_or_else(|| {
                ApiError::unauthorized(
                    "missing token: send 'Authorization: Bearer <jwt>' or ?access_token=",
                )
            })?
        }
    };
    let verified = auth::verify(
        state.jwt_secret.expose(),
        token,
        state.jwt_audience.as_deref(),
    )
    .map_err(|e| match e {
        AuthError::Expired => ApiError::unauthorized("the token has expired"),
        AuthError::BadSubject => ApiError::unauthorized("the token's sub is not a valid user id"),
        AuthError::TooLong => ApiError::unauthorized("the token is too long"),
        AuthError::WrongAudience => ApiError::unauthorized(
            "the token's aud does not name this gateway (REDDOT_JWT_AUDIENCE)",
        ),
        _ => ApiError::unauthorized("invalid token"),
    })?;
    Ok(AuthUser {
        user: verified.user,
        expires_at: verified.expires_at,
    })
}

/// One query parameter, decoded; `None` if absent or the query string is malformed.
pub fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .ok()?
        .0
        .remove(name)
}
