//! The RMS's HTTP API: the operators' routes ([`public`]) and the agents' ([`agents`]), all
//! behind the bearer token but `/healthz`.
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/v1/hosts` | `[HostView]` |
//! | `POST /api/v1/vms {name, memory_bytes, workload, kind, host?}` | 201 `{name, host}` |
//! | `GET /api/v1/vms`, `GET /api/v1/vms/{name}` | `[Vm]`, `Vm` |
//! | `DELETE /api/v1/vms/{name}` | 200 `Vm`; 409 while a migration holds it |
//! | `POST /api/v1/migrations {vm, target?, policy?, settings?}` | 202 `{id}` |
//! | `GET /api/v1/migrations?state&vm&after&limit`, `GET /api/v1/migrations/{id}` | `[MigrationView]` (paged: [`listing`]), `MigrationView` |
//! | `DELETE /api/v1/migrations/{id}` | 202 `MigrationView` (cancel asked); 409 too late or over |
//! | `POST /api/v1/migrations/{id}/resolve {host}` | 200 `MigrationView` (an `unknown` settled) |
//! | `POST /api/v1/agents/{register,heartbeat,events,reports}` | see `livemig_api::agent_to_rms` |
//! | `GET /metrics` | Prometheus text |

pub mod agents;
pub mod listing;
pub mod names;
pub mod public;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use livemig_http::{ApiError, Guard};
use livemig_rms::OrchestratorError;

use crate::actions::ActionCounters;
use crate::client::AgentClient;
use crate::driver::{Driver, DriverError};

/// What every handler sees.
#[derive(Debug)]
pub struct App {
    pub driver: Driver,
    pub client: AgentClient,
    pub guard: Arc<Guard>,
    pub actions: Arc<ActionCounters>,
    /// How often agents heartbeat (told at registration).
    pub heartbeat_s: f64,
    /// The installation's CA: registrations get a host certificate, migrations run over TLS.
    /// `None`: no TLS (plain data streams).
    pub ca: Option<Arc<livemig_tls::Ca>>,
    /// VM names with a create or delete in progress.
    pub names: names::NameLocks,
}

pub type Shared = axum::extract::State<Arc<App>>;

/// The whole API.
pub fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/api/v1/hosts", get(public::hosts))
        .route("/api/v1/vms", get(public::vms).post(public::create_vm))
        .route(
            "/api/v1/vms/{name}",
            get(public::vm).delete(public::delete_vm),
        )
        .route(
            "/api/v1/migrations",
            get(public::migrations).post(public::submit),
        )
        .route(
            "/api/v1/migrations/{id}",
            get(public::migration).delete(public::cancel),
        )
        .route("/api/v1/migrations/{id}/resolve", post(public::resolve))
        .route("/api/v1/agents/register", post(agents::register))
        .route("/api/v1/agents/heartbeat", post(agents::heartbeat))
        .route("/api/v1/agents/events", post(agents::event))
        .route("/api/v1/agents/reports", post(agents::report))
        .route("/metrics", get(public::metrics));
    app.guard.wrap(api).with_state(app)
}

/// The status of a refused input (`docs/system.md`).
pub fn refused(e: DriverError) -> ApiError {
    let status = match &e {
        DriverError::Stopped(_) => StatusCode::SERVICE_UNAVAILABLE,
        DriverError::Refused(r) => match r {
            OrchestratorError::UnknownHost(_)
            | OrchestratorError::UnknownVm(_)
            | OrchestratorError::UnknownMigration(_) => StatusCode::NOT_FOUND,
            OrchestratorError::UnknownPolicy(_) | OrchestratorError::TargetIsSource { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            _ => StatusCode::CONFLICT,
        },
    };
    ApiError::new(status, e.to_string())
}
