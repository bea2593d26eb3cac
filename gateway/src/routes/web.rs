//! The demo page (`/`) and the browser client (`/reddot.js`), compiled into the binary
//! from `web/` so the gateway serves them with no files to deploy.

use std::sync::LazyLock;

use actix_web::{HttpResponse, http::header, route};
use reddot_shared::http::inline_hashes;

const INDEX: &str = include_str!("../../../web/index.html");
const CLIENT: &str = include_str!("../../../web/reddot.js");

/// The demo page may run its own inline script and style (allowed by hash, so an
/// injected one would not run), load `/reddot.js`, and talk to this gateway only (HTTP,
/// WebSocket, and the iframe transport's frame).
static INDEX_CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src 'self' {}; style-src {}; connect-src 'self'; \
         frame-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'; require-trusted-types-for 'script'",
        inline_hashes(INDEX, "<script>", "</script>"),
        inline_hashes(INDEX, "<style>", "</style>"),
    )
});

// HEAD too: uptime checks and CDNs ask with it.
#[route("/", method = "GET", method = "HEAD")]
pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, INDEX_CSP.as_str()))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(INDEX)
}

#[route("/reddot.js", method = "GET", method = "HEAD")]
pub async fn client() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        // No `*`: CORS (for module imports) is the allowed origins', as on every
        // endpoint (the middleware adds it, with `Vary: Origin`). <script src> needs none.
        .body(CLIENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_page_csp_allows_its_inline_blocks_by_hash_only() {
        assert!(
            INDEX_CSP.contains("script-src 'self' 'sha256-"),
            "{}",
            *INDEX_CSP
        );
        assert!(INDEX_CSP.contains("style-src 'sha256-"), "{}", *INDEX_CSP);
        assert!(!INDEX_CSP.contains("unsafe-inline"));
    }
}
