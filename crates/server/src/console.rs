//! The web console: `GET /` and `GET /console/{file}`, a few static files
//! (`crates/server/console/`) compiled into the binary with `include_str!`,
//! so the service needs nothing beside it and nothing from the network.
//!
//! Every answer carries a strong ETag (a hash of the file; `If-None-Match`
//! gets 304), `Cache-Control: no-cache` (the browser revalidates, so an
//! upgraded binary is seen at once), and a Content-Security-Policy that
//! allows only this origin's scripts, styles and requests: no inline script,
//! no `eval`, no framing. The page itself needs no key (it must load to ask
//! for one: `limits.rs` lets these routes through); every API call it makes
//! sends the key.
//!
//! Serves files; knows nothing of the API it calls.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::OnceLock;

/// The routes the console is served on; they need no key.
pub(crate) const ROUTES: [&str; 2] = ["/", "/console/{file}"];

/// The policy every console answer carries.
pub(crate) const CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file: its name under `/console/`, its type, its bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset { name: $name, content_type: $type, body: include_str!(concat!("../console/", $name)) }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("search.js", JS),
    asset!("documents.js", JS),
    asset!("ingest.js", JS),
    asset!("system.js", JS),
];

/// Each asset's ETag, computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS.iter().map(|a| format!("\"{}\"", &blake3::hash(a.body.as_bytes()).to_hex()[..20])).collect()
    })
}

/// The console's routes (no state: the files are in the binary).
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(ROUTES[0], get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            ROUTES[1],
            get(|Path(file): Path<String>, headers: HeaderMap| async move { serve(&file, &headers) }),
        )
}

/// Whether `If-None-Match` names `etag` (or `*`), weak or strong.
fn matches(headers: &HeaderMap, etag: &str) -> bool {
    headers.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').map(str::trim).any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
    })
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, secure_headers(), "no such console file").into_response();
    };
    let (asset, etag) = (&ASSETS[i], &etags()[i]);
    let cache = [
        (header::ETAG, HeaderValue::from_str(etag).expect("a hex ETag is a valid header")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    if matches(headers, etag) {
        return (StatusCode::NOT_MODIFIED, secure_headers(), cache).into_response();
    }
    (
        secure_headers(),
        cache,
        [(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type))],
        asset.body,
    )
        .into_response()
}

/// The policy, no MIME sniffing, no referrer, no framing.
fn secure_headers() -> [(header::HeaderName, HeaderValue); 4] {
    [
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The console's scripts never turn text into markup or code: ingested
    /// text is untrusted, and the page renders it with `textContent` only.
    #[test]
    fn scripts_never_parse_text_as_html_or_code() {
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                "srcdoc",
            ] {
                assert!(!a.body.contains(banned), "{} uses {banned}", a.name);
            }
        }
        let html = ASSETS.iter().find(|a| a.name == "index.html").unwrap().body;
        // No inline script or handler (` onclick=`): the policy would block it anyway.
        assert!(!html.contains("<script>"), "inline script in index.html");
        let handler = html.match_indices(" on").any(|(i, _)| {
            let name: String = html[i + 3..].chars().take_while(char::is_ascii_alphabetic).collect();
            !name.is_empty() && html[i + 3 + name.len()..].starts_with('=')
        });
        assert!(!handler, "inline event handler in index.html");
        assert!(!html.contains("style="), "inline style in index.html");
    }

    #[test]
    fn if_none_match_is_read_weak_or_strong_and_in_lists() {
        let etag = "\"abc\"";
        let mut h = HeaderMap::new();
        assert!(!matches(&h, etag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\", W/\"abc\""));
        assert!(matches(&h, etag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"abcd\""));
        assert!(!matches(&h, etag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(matches(&h, etag));
    }
}
