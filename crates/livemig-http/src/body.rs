//! Request bodies: JSON read under a size cap, decoded strictly, every failure a JSON reason.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Refuses what no record may hold: a NUL character in a string (PostgreSQL cannot store it)
/// and an integer beyond `i64::MAX` (neither store can). Refused here, at the door, they never
/// reach a store whose failure would stop the service.
fn check(v: &serde_json::Value) -> Result<(), ApiError> {
    use serde_json::Value;
    match v {
        Value::String(s) if s.contains('\0') => Err(ApiError::bad_request(
            "invalid JSON body: a string holds a NUL character",
        )),
        Value::Number(n) if n.is_u64() && n.as_i64().is_none() => Err(ApiError::bad_request(
            format!("invalid JSON body: {n} is larger than {}", i64::MAX),
        )),
        Value::Array(a) => a.iter().try_for_each(check),
        Value::Object(o) => o.iter().try_for_each(|(k, v)| {
            if k.contains('\0') {
                return Err(ApiError::bad_request(
                    "invalid JSON body: a key holds a NUL character",
                ));
            }
            check(v)
        }),
        _ => Ok(()),
    }
}

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
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        check(&value)?;
        T::deserialize(value)
            .map(Json)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}
