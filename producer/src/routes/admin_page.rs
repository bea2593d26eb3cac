//! `GET /admin`: a small page to send notifications by hand. It holds no secret: the
//! person using it types the API key, which stays in the page (sessionStorage at most).

use std::sync::LazyLock;

use actix_web::{HttpResponse, get, http::header};
use sha2::{Digest, Sha256};

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

/// CSP sources (`'sha256-…'`) for every attribute-less inline `open … close` block of
/// `page`, or `'none'`.
fn inline_hashes(page: &str, open: &str, close: &str) -> String {
    let mut sources = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(close) else { break };
        let digest = Sha256::digest(&after.as_bytes()[..end]);
        sources.push(format!("'sha256-{}'", base64(&digest)));
        rest = &after[end + close.len()..];
    }
    if sources.is_empty() {
        "'none'".to_owned()
    } else {
        sources.join(" ")
    }
}

/// Standard base64 with padding (what CSP hashes use).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_page_csp_allows_its_inline_blocks_by_hash_only() {
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(
            inline_hashes("<style>a{}</style>", "<style>", "</style>"),
            format!("'sha256-{}'", base64(&Sha256::digest(b"a{}")))
        );
        assert!(CSP.contains("script-src 'sha256-"), "{}", *CSP);
        assert!(CSP.contains("style-src 'sha256-"), "{}", *CSP);
        assert!(!CSP.contains("unsafe-inline"));
    }
}
