//! The demo page (`/`) and the browser client (`/reddot.js`), compiled into the binary
//! from `web/` so the gateway serves them with no files to deploy.

use actix_web::{HttpResponse, get, http::header};

const INDEX: &str = include_str!("../../../web/index.html");
const CLIENT: &str = include_str!("../../../web/reddot.js");

#[get("/")]
pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, "default-src 'self'; connect-src 'self' ws: wss:; frame-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(INDEX)
}

#[get("/reddot.js")]
pub async fn client() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .body(CLIENT)
}
