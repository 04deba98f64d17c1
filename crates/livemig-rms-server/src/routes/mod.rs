//! The RMS's HTTP API: the operators' routes ([`public`]) and the agents' ([`agents`]), all
//! behind the bearer token but `/healthz` and the dashboard's static files ([`OPEN_ROUTES`]).
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
//! | `GET /api/v1/budget` | `BudgetView`: the scheme, the budget, every running migration's grant |
//! | `POST /api/v1/hosts/{name}/drain` | 202 `DrainStarted`: the host takes no new VMs, its VMs are submitted |
//! | `GET /api/v1/hosts/{name}/drain`, `DELETE …/drain` | `DrainProgress` (`DELETE`: takes VMs again) |
//! | `POST /api/v1/agents/{register,heartbeat,events,reports}` | see `livemig_api::agent_to_rms` |
//! | `GET /metrics` | Prometheus text |
//! | `GET /`, `GET /assets/dashboard.{js,css}` | the dashboard (no token: [`crate::dashboard`]) |
//!
//! The whole contract, bodies and statuses, is `docs/openapi/rms.json`, built by `livemig-openapi`:
//! a route added to [`ROUTES`] fails its tests until its table lists it (then
//! `LIVEMIG_BLESS=1 cargo test -p livemig-openapi` rewrites the document).

pub mod agents;
pub mod fleet;
pub mod listing;
pub mod names;
pub mod public;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::{on, MethodFilter};
use axum::Router;
use livemig_http::{ApiError, Guard};
use livemig_rms::OrchestratorError;

use crate::actions::ActionCounters;
use crate::client::AgentClient;
use crate::dashboard;
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
    /// What the RMS's own certificate names (with a CA): no host may claim it.
    pub own: OwnNames,
}

/// The DNS names and IP addresses of the RMS's own certificate.
#[derive(Debug, Clone, Default)]
pub struct OwnNames {
    pub dns: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
}

pub type Shared = axum::extract::State<Arc<App>>;

/// Declares the routes once: [`ROUTES`] and [`OPEN_ROUTES`] list them and `api` and `open`
/// serve them, so the lists and the routers cannot disagree (the OpenAPI document of
/// `livemig-openapi` is checked against both).
macro_rules! routes {
    (
        open { $($omethod:ident $opath:literal => $ohandler:path,)* }
        token { $($method:ident $path:literal => $handler:path,)* }
    ) => {
        /// Every route behind the token, `(method, path)` in axum's syntax. The open
        /// `GET /healthz` is the guard's ([`livemig_http::guard::HEALTHZ`]), the other open
        /// routes are [`OPEN_ROUTES`].
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path),)*];

        /// The routes served without a token: the dashboard's page and its static assets
        /// ([`crate::dashboard`]). They carry no data; the page asks [`ROUTES`] with the token.
        pub const OPEN_ROUTES: &[(&str, &str)] = &[$((stringify!($omethod), $opath),)*];

        fn api() -> Router<Arc<App>> {
            Router::new()$(.route($path, on(MethodFilter::$method, $handler)))*
        }

        fn open() -> Router<Arc<App>> {
            Router::new()$(.route($opath, on(MethodFilter::$omethod, $ohandler)))*
        }
    };
}

routes! {
    open {
        GET "/" => dashboard::page,
        GET "/assets/dashboard.js" => dashboard::script,
        GET "/assets/dashboard.css" => dashboard::style,
    }
    token {
        GET "/api/v1/hosts" => public::hosts,
        GET "/api/v1/vms" => public::vms,
        POST "/api/v1/vms" => public::create_vm,
        GET "/api/v1/vms/{name}" => public::vm,
        DELETE "/api/v1/vms/{name}" => public::delete_vm,
        GET "/api/v1/migrations" => public::migrations,
        POST "/api/v1/migrations" => public::submit,
        GET "/api/v1/migrations/{id}" => public::migration,
        DELETE "/api/v1/migrations/{id}" => public::cancel,
        POST "/api/v1/migrations/{id}/resolve" => public::resolve,
        GET "/api/v1/budget" => fleet::budget,
        POST "/api/v1/hosts/{name}/drain" => fleet::drain,
        GET "/api/v1/hosts/{name}/drain" => fleet::drain_progress,
        DELETE "/api/v1/hosts/{name}/drain" => fleet::undrain,
        POST "/api/v1/agents/register" => agents::register,
        POST "/api/v1/agents/heartbeat" => agents::heartbeat,
        POST "/api/v1/agents/events" => agents::event,
        POST "/api/v1/agents/reports" => agents::report,
        GET "/metrics" => public::metrics,
    }
}

/// The whole API.
pub fn router(app: Arc<App>) -> Router {
    app.guard.wrap_with_open(api(), open()).with_state(app)
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
