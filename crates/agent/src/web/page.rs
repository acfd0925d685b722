//! `/`: the node page for browsers, a short plain-text index for everything else (`curl`).
//!
//! The page (`page/`: html, css, js) is one self-contained document — inline CSS, JS and SVG, no external
//! asset, so it works on an air-gapped node — compiled into the binary. Its script reads
//! `/api/v1/verdict`, `/api/v1/timeline` and `/api/v1/incidents` on the same origin (a browser
//! that logged in for `/` sends the same basic-auth credentials there) and builds the DOM with
//! `textContent` only: process and container names are attacker-controlled text.
//!
//! Defence in depth for that last point: the page is served with a Content-Security-Policy
//! that allows exactly its own inline script and style (by SHA-256 hash, computed once from
//! the embedded text) and network requests to its own origin, so even a rendering bug that
//! let markup through could not run script or load anything.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::AppState;

/// The page, as shipped: `page/page.html` with `page.css` and `page.js` inlined (three files
/// to edit, one document to serve), assembled once.
pub fn page() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| {
        include_str!("page/page.html")
            .replacen(
                "<style>\n</style>",
                &format!("<style>\n{}</style>", include_str!("page/page.css")),
                1,
            )
            .replacen(
                "<script>\n</script>",
                &format!("<script>\n{}</script>", include_str!("page/page.js")),
                1,
            )
    })
}

/// `Accept` asks for HTML: a browser's `text/html,application/xhtml+xml,…`. `curl` sends
/// `*/*` and scripts often send nothing; they get the plain-text index.
pub fn wants_html(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let q_zero = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (media.eq_ignore_ascii_case("text/html")
                || media.eq_ignore_ascii_case("application/xhtml+xml"))
                && !q_zero
        })
    })
}

pub async fn index(State(st): State<std::sync::Arc<AppState>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    // The answer depends on `Accept`: caches must key on it, and nothing here is for keeping.
    let common = [
        (header::VARY, HeaderValue::from_static("Accept")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if wants_html(accept) {
        let csp = HeaderValue::from_str(csp()).unwrap_or(HeaderValue::from_static(
            "default-src 'none'; script-src 'none'",
        ));
        (
            common,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                ),
                (header::CONTENT_SECURITY_POLICY, csp),
                (
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                ),
                (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            ],
            page(),
        )
            .into_response()
    } else {
        (
            common,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            text_index(&st.telemetry_path),
        )
            .into_response()
    }
}

/// What `curl http://node:10139/` prints: where everything is.
fn text_index(telemetry_path: &str) -> String {
    let metrics = if telemetry_path.starts_with('/') {
        telemetry_path.to_string()
    } else {
        format!("/{telemetry_path}")
    };
    format!(
        "stallwatch {}: is this node stalled on I/O, who is stuck, and why.\n\n\
         {:<22}the node page (open this address in a browser)\n\
         {metrics:<22}Prometheus metrics\n\
         {:<22}health of the samplers\n\
         {:<22}the verdict now, JSON (`stallwatch why` prints it)\n\
         {:<22}the last 15 minutes at 1 s, JSON\n\
         {:<22}recent incidents, JSON (`stallwatch incidents`)\n",
        env!("CARGO_PKG_VERSION"),
        "/",
        "/healthz",
        "/api/v1/verdict",
        "/api/v1/timeline",
        "/api/v1/incidents",
    )
}

/// The page's Content-Security-Policy, with the hashes of its inline `<script>` and `<style>`.
fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = |tag: &str| {
            let body = inline(page(), tag).unwrap_or("");
            format!("'sha256-{}'", base64(&Sha256::digest(body.as_bytes())))
        };
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash("script"),
            hash("style")
        )
    })
}

/// The text between the first `<tag>` and its `</tag>`: what the browser hashes for CSP.
fn inline<'a>(html: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = html.find(&open)? + open.len();
    let len = html[start..].find(&format!("</{tag}>"))?;
    Some(&html[start..start + len])
}

/// Standard-alphabet base64 with padding (RFC 4648 §4): CSP hashes and the CLI's basic-auth
/// header. Small enough to not warrant a dependency.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
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
    fn browsers_get_html_curl_gets_text() {
        // Chromium's and Firefox's navigation Accept headers.
        assert!(wants_html(Some(
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,\
             image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
        )));
        assert!(wants_html(Some(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(wants_html(Some("TEXT/HTML")));
        // curl, wget, a script, and someone who explicitly refuses HTML.
        assert!(!wants_html(Some("*/*")));
        assert!(!wants_html(None));
        assert!(!wants_html(Some("text/plain")));
        assert!(!wants_html(Some("text/html;q=0, text/plain")));
        assert!(!wants_html(Some("application/json")));
    }

    #[test]
    fn base64_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn the_page_is_self_contained() {
        // Air-gapped nodes: nothing may be loaded from anywhere else. (The SVG namespace is a
        // name, not a fetch.)
        let page = page().replace("\"http://www.w3.org/2000/svg\"", "");
        for needle in ["http://", "https://", "src=", "<link", "@import", "url("] {
            assert!(!page.contains(needle), "page.html contains {needle:?}");
        }
        // One inline script and one inline style, both hashed into the CSP.
        assert_eq!(page.matches("<script>").count(), 1);
        assert_eq!(page.matches("<style>").count(), 1);
        // The parts were inlined.
        assert!(page.contains("const REFRESH_MS = 2000;"), "page.js inlined");
        assert!(page.contains(".sparks {"), "page.css inlined");
        let csp = csp();
        assert!(csp.contains("script-src 'sha256-"), "{csp}");
        assert!(csp.contains("style-src 'sha256-"), "{csp}");
        // Untrusted text must never become markup: the script builds the DOM from nodes.
        let script = inline(&page, "script").unwrap();
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!script.contains(sink), "page script uses {sink}");
        }
    }

    #[test]
    fn csp_hash_is_of_the_exact_inline_text() {
        let html = "<style>a{}</style><script>x()</script>";
        assert_eq!(inline(html, "script"), Some("x()"));
        assert_eq!(inline(html, "style"), Some("a{}"));
        assert_eq!(inline("<script>", "script"), None);
    }
}
