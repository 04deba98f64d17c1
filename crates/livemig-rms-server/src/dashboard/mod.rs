//! The dashboard: a web page at `/` showing the hosts with their VMs and free memory, the
//! running migrations with their state and progress, each one's per-round cap and dirty rate
//! as a chart, and the migration bandwidth in use over time.
//!
//! The page, its script and its style sheet are compiled into the binary (no CDN, nothing
//! fetched from elsewhere) and served without a token: they hold no data. The script asks the
//! token-protected API for the data (`/api/v1/hosts`, `/api/v1/vms`,
//! `/api/v1/migrations?state=…`), about once a second, with the token it was given in the
//! URL's fragment (`/#token=…`, never sent to the server) or in the page's form, kept in the
//! tab's `sessionStorage`.
//!
//! Every answer here carries a strict policy: scripts, styles and connections to this origin
//! only, no inline script or style ([`CSP`]), no type sniffing, no caching.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The page.
pub const HTML: &str = include_str!("assets/index.html");
/// Its script: polls the API, draws the tables and the charts (inline SVG).
pub const JS: &str = include_str!("assets/dashboard.js");
/// Its style sheet.
pub const CSS: &str = include_str!("assets/dashboard.css");

/// The `Content-Security-Policy` of every answer here.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                       img-src 'self' data:; connect-src 'self'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub async fn page() -> Response {
    asset(HTML, "text/html; charset=utf-8")
}

/// `GET /assets/dashboard.js`.
pub async fn script() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

/// `GET /assets/dashboard.css`.
pub async fn style() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(HTML.contains(r#"src="/assets/dashboard.js""#));
        assert!(HTML.contains(r#"href="/assets/dashboard.css""#));
        for text in [HTML, JS, CSS] {
            // Nothing from elsewhere (the SVG namespace is a name, never fetched).
            let text = text.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("//cdn") && !text.contains("@import"));
            assert!(!text.contains("innerHTML") && !text.contains("outerHTML"));
        }
        assert!(!HTML.contains("<script>") && !HTML.contains("style="));
    }
}
