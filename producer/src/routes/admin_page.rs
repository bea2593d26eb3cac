//! `GET /admin`: a small page to send notifications by hand. It holds no secret: the
//! person using it types the API key, which stays in the page.

use actix_web::{HttpResponse, get, http::header};

const PAGE: &str = include_str!("../../../web/admin.html");

#[get("/admin")]
pub async fn admin_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(PAGE)
}
