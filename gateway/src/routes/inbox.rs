//! The inbox: `GET /v1/notifications` (newest first, paged), `POST
//! /v1/notifications/read`, `DELETE /v1/notifications/{id}`.

use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use reddot_shared::{
    error::ApiError,
    http::read_json,
    store::inbox::{self, ListQuery},
    time::now_ms,
};
use serde_json::{Value, json};

use crate::{
    auth::AuthUser,
    read_actions::{self, MAX_READ_IDS, READ_IDS_RULE},
    state::GatewayState,
};

#[get("/v1/notifications")]
pub async fn list(
    auth: AuthUser,
    req: HttpRequest,
    state: web::Data<GatewayState>,
) -> Result<HttpResponse, ApiError> {
    let query = ListQuery::parse(req.query_string())?;
    let page = inbox::list(&state.db, &auth.user, &query, now_ms()).await?;
    Ok(HttpResponse::Ok().json(page))
}

#[post("/v1/notifications/read")]
pub async fn mark_read(
    auth: AuthUser,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<GatewayState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_json(&req, payload, 64 * 1024).await?;
    // `null` counts as absent, as in the producer's bodies.
    let field = |name| body.get(name).filter(|v| !v.is_null());
    let changed = match (field("ids"), field("all")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field("ids", "give either ids or all, not both"));
        }
        (None, Some(Value::Bool(true))) => read_actions::mark_all_read(&state, &auth.user).await?,
        (None, Some(_)) => return Err(ApiError::field("all", "all must be true")),
        (Some(Value::Array(ids)), None) => {
            if ids.is_empty() || ids.len() > MAX_READ_IDS {
                return Err(ApiError::field("ids", READ_IDS_RULE));
            }
            let ids = ids
                .iter()
                .map(|v| v.as_i64().filter(|n| *n > 0))
                .collect::<Option<Vec<i64>>>()
                .ok_or_else(|| ApiError::field("ids", "ids must be positive integers"))?;
            read_actions::mark_read(&state, &auth.user, &ids).await?
        }
        (Some(_), None) => {
            return Err(ApiError::field(
                "ids",
                "ids must be an array of notification ids",
            ));
        }
        (None, None) => {
            return Err(ApiError::field(
                "ids",
                "send {\"ids\": [...]} or {\"all\": true}",
            ));
        }
    };
    let unread = inbox::unread(&state.db, &auth.user, now_ms()).await?;
    Ok(HttpResponse::Ok().json(json!({"changed": changed, "unread": unread})))
}

#[delete("/v1/notifications/{id}")]
pub async fn delete(
    auth: AuthUser,
    path: web::Path<String>,
    state: web::Data<GatewayState>,
) -> Result<HttpResponse, ApiError> {
    let id = path
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::not_found("no such notification"))?;
    read_actions::delete(&state, &auth.user, id).await?;
    Ok(HttpResponse::NoContent().finish())
}
