//! The layers every router wears: the bearer token on everything but `/healthz` (and the
//! routes a router declares open: [`Guard::wrap_with_open`]), a timeout on
//! every request, the body cap, and counters of what was refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};

use crate::body::BodyLimit;
use crate::error::{json, ApiError};
use crate::token::Token;

/// The one route open without a token: `GET /healthz` answers `{"status": "ok"}`.
pub const HEALTHZ: &str = "/healthz";

/// Counters the guard keeps (for `/metrics`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests refused for a missing or wrong token.
    pub unauthorized: AtomicU64,
    /// Requests refused for their body (malformed, too large).
    pub bad_requests: AtomicU64,
    /// Requests that ran out of time.
    pub timeouts: AtomicU64,
}

impl Counters {
    /// `(unauthorized, bad_requests, timeouts)`.
    pub fn load(&self) -> (u64, u64, u64) {
        (
            self.unauthorized.load(Ordering::Relaxed),
            self.bad_requests.load(Ordering::Relaxed),
            self.timeouts.load(Ordering::Relaxed),
        )
    }
}

/// What the guard checks and bounds.
#[derive(Debug)]
pub struct Guard {
    pub token: Token,
    /// The largest request body, bytes.
    pub body_limit: usize,
    /// The longest a request may take once its headers are read (503 after it).
    pub request_timeout: Duration,
    pub counters: Counters,
}

impl Guard {
    pub fn new(token: Token, body_limit: usize, request_timeout: Duration) -> Arc<Guard> {
        Arc::new(Guard {
            token,
            body_limit,
            request_timeout,
            counters: Counters::default(),
        })
    }

    /// `api` behind the token, plus an open `GET /healthz`, every request bounded and counted,
    /// unknown routes and methods answered in JSON.
    pub fn wrap<S: Clone + Send + Sync + 'static>(self: &Arc<Guard>, api: Router<S>) -> Router<S> {
        self.wrap_with_open(api, Router::new())
    }

    /// [`Guard::wrap`], plus the routes of `open` served without a token (the RMS's dashboard
    /// page and its static assets, which carry no data: the page asks the API for it with the
    /// token). Only the exact routes of `open` are open; any other path, unknown ones included,
    /// still needs the token.
    pub fn wrap_with_open<S: Clone + Send + Sync + 'static>(
        self: &Arc<Guard>,
        api: Router<S>,
        open: Router<S>,
    ) -> Router<S> {
        let api = api
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(Arc::clone(self), authorize));
        api.route(HEALTHZ, get(healthz))
            .merge(open)
            .layer(middleware::from_fn_with_state(Arc::clone(self), bounded))
            .layer(Extension(BodyLimit(self.body_limit)))
    }
}

/// Refuses a request without the right bearer token: 401, and nothing runs.
async fn authorize(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if g.token.admits(given) {
        return next.run(req).await;
    }
    g.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong token (Authorization: Bearer <token>)",
    )
    .into_response()
}

/// Every request ends within the request timeout (503 after it) and is counted.
async fn bounded(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let limit = g.request_timeout;
    let r = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            g.counters.timeouts.fetch_add(1, Ordering::Relaxed);
            return ApiError::unavailable(format!(
                "the request took longer than {} s",
                limit.as_secs_f64()
            ))
            .into_response();
        }
    };
    if matches!(
        r.status(),
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE
    ) {
        g.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
    }
    r
}

async fn healthz() -> Response {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
}

/// A path parameter, or 400 with the reason.
pub fn path(
    p: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<String, ApiError> {
    p.map(|axum::extract::Path(s)| s)
        .map_err(|e| ApiError::bad_request(format!("invalid path: {e}")))
}
