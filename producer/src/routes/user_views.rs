//! Admin read views for backends: a user's inbox and unread count, exactly as the
//! gateway shows them to that user (same parsing, same queries, from `shared`).

use actix_web::{HttpRequest, HttpResponse, get, web};
use reddot_shared::{
    domain::UserId,
    error::ApiError,
    store::inbox::{self, ListQuery},
    time::now_ms,
};

use super::AppState;
use crate::api_key::Backend;

fn user(path: &str) -> Result<UserId, ApiError> {
    UserId::parse(path).map_err(|e| ApiError::field("user_id", e.0))
}

#[utoipa::path(get, path = "/api/v1/users/{user_id}/notifications", tag = "admin",
    params(("user_id" = String, Path),
           ("before" = Option<i64>, Query, description = "only ids below this (the previous page's `next_before`)", minimum = 1),
           ("limit" = Option<u64>, Query, description = "items per page, default 20", minimum = 1, maximum = 100),
           ("unread_only" = Option<bool>, Query), ("kind" = Option<String>, Query)),
    responses(
        (status = 200, description = "the user's inbox, newest first", body = super::openapi::InboxPage),
        (status = 400, description = "invalid user id or query", body = super::openapi::ErrorResponse),
        (status = 401, description = "missing or wrong API key", body = super::openapi::ErrorResponse),
        (status = 503, description = "the database is unreachable", body = super::openapi::ErrorResponse),
    ),
    security(("api_key" = [])))]
#[get("/api/v1/users/{user_id}/notifications")]
pub async fn user_notifications(
    _backend: Backend,
    path: web::Path<String>,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let user = user(&path)?;
    let query = ListQuery::parse(req.query_string())?;
    Ok(HttpResponse::Ok().json(inbox::list(&state.db, &user, &query, now_ms()).await?))
}

#[utoipa::path(get, path = "/api/v1/users/{user_id}/unread", tag = "admin",
    params(("user_id" = String, Path)),
    responses(
        (status = 200, description = "the user's unread count", body = super::openapi::UnreadView),
        (status = 400, description = "invalid user id", body = super::openapi::ErrorResponse),
        (status = 401, description = "missing or wrong API key", body = super::openapi::ErrorResponse),
        (status = 503, description = "the database is unreachable", body = super::openapi::ErrorResponse),
    ),
    security(("api_key" = [])))]
#[get("/api/v1/users/{user_id}/unread")]
pub async fn user_unread(
    _backend: Backend,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let user = user(&path)?;
    let unread = inbox::unread(&state.db, &user, now_ms()).await?;
    Ok(HttpResponse::Ok().json(inbox::unread_view(&unread)))
}
