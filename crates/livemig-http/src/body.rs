//! Request bodies: JSON read under a size cap, decoded strictly, every failure a JSON reason.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The default cap on a request body, bytes.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// The cap in force, set per router as an `Extension` (see [`crate::guard::Guard::wrap`]).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A JSON body of type `T`: at most [`BodyLimit`] bytes (413 beyond, before reading it all
/// when `Content-Length` says so), valid JSON of the right shape (400 with serde's reason).
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(DEFAULT_BODY_LIMIT, |l| l.0);
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {limit} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let body: Body = req.into_body();
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "cannot read the request body: {e}"
                )))
            }
        };
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}
