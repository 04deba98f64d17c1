//! The shared budget and host drains: `GET /api/v1/budget`, and
//! `POST|GET|DELETE /api/v1/hosts/{name}/drain`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use livemig_http::guard::path;
use livemig_http::{json, ApiError};
use livemig_rms::{Input, MigrationId};
use serde::{Deserialize, Serialize};

use super::{refused, Shared};

/// The answer to `POST /api/v1/hosts/{name}/drain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct DrainStarted {
    pub host: String,
    /// The migrations this call submitted (a VM already being migrated keeps its own).
    pub migrations: Vec<MigrationId>,
    pub progress: livemig_rms::orchestrator::DrainProgress,
}

pub async fn budget(State(app): Shared) -> Result<Response, ApiError> {
    let v = app
        .driver
        .read(|o| o.budget_view())
        .await
        .map_err(refused)?;
    Ok(json(StatusCode::OK, &v))
}

fn host(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let h = path(p)?;
    if !livemig_api::is_valid_name(&h) {
        return Err(ApiError::unprocessable(format!("`{h}` is not a host name")));
    }
    Ok(h)
}

async fn progress(
    app: &Shared,
    h: String,
) -> Result<livemig_rms::orchestrator::DrainProgress, ApiError> {
    let n = h.clone();
    app.0
        .driver
        .read(move |o| o.drain_progress(&n))
        .await
        .map_err(refused)?
        .ok_or_else(|| ApiError::not_found(format!("no host is named `{h}`")))
}

/// Drains the host: it takes no new VMs and each of its VMs is submitted for migration.
pub async fn drain(
    app: Shared,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let h = host(p)?;
    let step = app
        .0
        .driver
        .input(Input::Drain { host: h.clone() })
        .await
        .map_err(refused)?;
    let progress = progress(&app, h.clone()).await?;
    let body = DrainStarted {
        host: h,
        migrations: step.drained,
        progress,
    };
    Ok(json(StatusCode::ACCEPTED, &body))
}

pub async fn drain_progress(
    app: Shared,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let h = host(p)?;
    Ok(json(StatusCode::OK, &progress(&app, h).await?))
}

/// The host takes VMs again; migrations its drain started go on (cancel them apart).
pub async fn undrain(
    app: Shared,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let h = host(p)?;
    app.0
        .driver
        .input(Input::Undrain { host: h.clone() })
        .await
        .map_err(refused)?;
    Ok(json(StatusCode::OK, &progress(&app, h).await?))
}
