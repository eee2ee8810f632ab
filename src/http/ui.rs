//! The dashboard at `/` (and `/ui/...`): one HTML page, its stylesheet,
//! script and icon, compiled into the binary (`src/http/ui/`), so it works
//! offline and needs no build step.
//!
//! The page holds no data: it is served without a token, and its script
//! reads the API (`/stats`, `/health`, `/consumers`, `/events`,
//! `/events/stream`, `/alerts`, `/admin/*`) with the operator's token,
//! which keeps every data endpoint's own access rule. Every answer carries
//! a `Content-Security-Policy` of `default-src 'self'` (no inline script
//! or style, no other origin), a strong `ETag` with `Cache-Control:
//! no-cache` (the browser revalidates and gets a `304` until the binary
//! changes), and `X-Content-Type-Options: nosniff`.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use super::error::Problem;

/// The policy every dashboard answer carries.
pub const CSP: &str = "default-src 'self'; object-src 'none'; base-uri 'none'; \
                       frame-ancestors 'none'; form-action 'self'";

/// One compiled-in file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("ui/index.html"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("ui/app.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("ui/app.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("ui/favicon.svg"),
    },
];

/// Each asset's ETag (a quoted SHA-256 prefix of its bytes), computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", &hex::encode(Sha256::digest(a.body))[..32]))
            .collect()
    })
}

/// The dashboard's routes, merged beside the API (no state: they serve
/// constants).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{file}", get(file))
        .route("/favicon.ico", get(favicon))
}

async fn index(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

async fn favicon(headers: HeaderMap) -> Response {
    serve(3, &headers)
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.name == name) {
        Some(i) => serve(i, &headers),
        None => Problem::not_found(format!("no dashboard file /ui/{name}")).into_response(),
    }
}

/// The asset `i`, or `304` when `If-None-Match` names its ETag.
fn serve(i: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[i];
    let etag = &etags()[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut res = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut res = asset.body.into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        res
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_hold_no_inline_script_or_style() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert!(!html.contains(" style="), "a style attribute in index.html");
        assert!(
            !html.contains("<style"),
            "an inline stylesheet in index.html"
        );
        for (i, part) in html.split("<script").enumerate().skip(1) {
            let tag = part.split('>').next().unwrap();
            assert!(tag.contains("src="), "inline script #{i} in index.html");
        }
        for word in html.split_whitespace() {
            let handler = word.starts_with("on") && word.contains('=');
            assert!(!handler, "an inline event handler in index.html: {word}");
        }
        let js = std::str::from_utf8(ASSETS[2].body).unwrap();
        assert!(!js.contains("innerHTML"), "app.js must not use innerHTML");
    }

    #[test]
    fn every_dashboard_path_is_open_to_the_access_policy() {
        for a in ASSETS {
            let path = format!("/ui/{}", a.name);
            assert!(crate::auth::policy::is_dashboard_page(&path), "{path}");
        }
        for path in ["/", "/ui", "/ui/", "/favicon.ico"] {
            assert!(crate::auth::policy::is_dashboard_page(path), "{path}");
        }
    }

    #[test]
    fn every_asset_has_a_distinct_etag() {
        let tags = etags();
        assert_eq!(tags.len(), ASSETS.len());
        for (i, t) in tags.iter().enumerate() {
            assert!(t.starts_with('"') && t.ends_with('"'));
            assert!(!tags[..i].contains(t));
        }
    }
}
