//! `GET /admin`: a small page to send notifications by hand. It holds no secret: the
//! person using it types the API key, which stays in the page (sessionStorage at most).

use std::sync::LazyLock;

use actix_web::{HttpResponse, get, http::header};
use reddot_shared::http::inline_hashes;

const PAGE: &str = include_str!("../../../web/admin.html");

/// The page may run its own inline script and style (allowed by hash, so an injected
/// one would not run) and call this producer only.
static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
         img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
         require-trusted-types-for 'script'",
        inline_hashes(PAGE, "<script>", "</script>"),
        inline_hashes(PAGE, "<style>", "</style>"),
    )
});

#[get("/admin")]
pub async fn admin_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP.as_str()))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_page_csp_allows_its_inline_blocks_by_hash_only() {
        assert!(CSP.contains("script-src 'sha256-"), "{}", *CSP);
        assert!(CSP.contains("style-src 'sha256-"), "{}", *CSP);
        assert!(!CSP.contains("unsafe-inline"));
    }
}
