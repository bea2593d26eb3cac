//! `GET /v1/unread`: short polling. The answer carries an `ETag` derived from its
//! content; a client sending it back in `If-None-Match` gets `304` while nothing changed.

use actix_web::{HttpRequest, HttpResponse, get, http::header, web};
use reddot_shared::{error::ApiError, store::inbox, time::now_ms};
use sha2::{Digest, Sha256};

use crate::{auth::AuthUser, state::GatewayState};

#[get("/v1/unread")]
pub async fn unread(
    auth: AuthUser,
    req: HttpRequest,
    state: web::Data<GatewayState>,
) -> Result<HttpResponse, ApiError> {
    let u = inbox::unread(&state.db, &auth.user, now_ms()).await?;
    let body = inbox::unread_view(&u).to_string();
    let etag = format!(
        "\"{}\"",
        hex::encode(&Sha256::digest(body.as_bytes())[..12])
    );
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim().trim_start_matches("W/") == etag || tag.trim() == "*")
        });
    let mut res = if matches {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    Ok(if matches {
        res.finish()
    } else {
        res.content_type("application/json").body(body)
    })
}
