//! The demo page (`/`) and the browser client (`/reddot.js`), compiled into the binary
//! from `web/` so the gateway serves them with no files to deploy.

use std::sync::LazyLock;

use actix_web::{HttpResponse, get, http::header};
use sha2::{Digest, Sha256};

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

#[get("/")]
pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, INDEX_CSP.as_str()))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
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
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn the_demo_page_csp_allows_its_inline_blocks_by_hash_only() {
        assert_eq!(
            inline_hashes("<script>alert(1)</script>", "<script>", "</script>"),
            // printf 'alert(1)' | openssl dgst -sha256 -binary | base64
            "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"
        );
        assert!(
            INDEX_CSP.contains("script-src 'self' 'sha256-"),
            "{}",
            *INDEX_CSP
        );
        assert!(INDEX_CSP.contains("style-src 'sha256-"), "{}", *INDEX_CSP);
        assert!(!INDEX_CSP.contains("unsafe-inline"));
    }
}
