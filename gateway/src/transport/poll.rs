//! `GET /v1/unread`: short polling. The answer carries an `ETag` derived from its
//! content; a client sending it back in `If-None-Match` gets `304` while nothing changed.
//! A matching `If-None-Match` is answered from the `UnreadCache` without counting again.

use actix_web::{HttpRequest, HttpResponse, http::header, route, web};
use reddot_shared::error::ApiError;

use crate::{auth::AuthUser, state::GatewayState};

// HEAD too (the count's ETag without the body): monitors and caches ask with it.
#[route("/v1/unread", method = "GET", method = "HEAD")]
pub async fn unread(
    auth: AuthUser,
    req: HttpRequest,
    state: web::Data<GatewayState>,
) -> Result<HttpResponse, ApiError> {
    let client_tag = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    match state.unread_cache.check(&auth.user, client_tag).await? {
        Ok(unchanged) => Ok(not_modified(&unchanged.etag)),
        Err(view) => Ok(HttpResponse::Ok()
            .insert_header((header::ETAG, view.etag))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .content_type("application/json")
            .body(view.body.to_string())),
    }
}

fn not_modified(etag: &str) -> HttpResponse {
    HttpResponse::NotModified()
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .finish()
}
