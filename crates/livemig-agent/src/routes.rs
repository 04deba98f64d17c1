//! The HTTP routes: `/healthz` open to all, everything else behind the bearer token (the
//! guard of `livemig_http` checks it, bounds every request and counts refusals).
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | `{"status": "ok"}` (no token) |
//! | `GET /api/v1/info` | [`Info`](crate::api::Info) |
//! | `POST /api/v1/capacity {memory_bytes}` | 200 [`Answer`] (accepted or refused: both are answers) |
//! | `DELETE /api/v1/capacity/{id}` | 200 [`Released`]; 404 |
//! | `GET /api/v1/vms` | `[VmView]` |
//! | `POST /api/v1/vms {name, memory_bytes, workload, kind?}` | 201 [`VmView`]; 409 no room or name taken; 422; 503 QEMU or the guest image missing (kind `qemu`) |
//! | `GET /api/v1/vms/{name}`, `DELETE /api/v1/vms/{name}` | 200 [`VmView`]; 404; 409 (delete) migrating or sampled |
//! | `POST /api/v1/vms/{name}/sample` [`SampleRequest`] | 200 [`VmSample`] (sends nothing; the VM is held meanwhile, [`crate::sample`]); 404 no such VM; 409 migrating or sampled; 422 seconds not in 0.2..=10; 503 stopping, or QEMU's measurement failed |
//! | `POST /api/v1/incoming` [`IncomingRequest`] | 201 [`IncomingReady`]; 404 unknown reservation; 409 VM here or migration known; 422 |
//! | `POST /api/v1/outgoing` [`OutgoingRequest`] | 202 `{migration, state}`; 404 no such VM; 409 VM busy (migrating or sampled); 422 |
//! | `DELETE /api/v1/outgoing/{migration}` | 202 cancel asked; 400 not a number; 404 unknown; 409 past the commit point or ended |
//! | `PUT /api/v1/outgoing/{migration}/grant` [`GrantRequest`] | 200 [`GrantApplied`] (every later cap, stop-and-copy's too, at most the grant); 400 not a number; 404 unknown; 409 incoming, or ended; 422 not finite or <= 0 |
//! | `GET /api/v1/report` | [`RunReport`](livemig_api::RunReport) |
//! | `GET /metrics` | Prometheus text |
//!
//! The whole contract, bodies and statuses, is `docs/openapi/agent.json`, built by `livemig-openapi`:
//! a route added to [`ROUTES`] fails its tests until its table lists it (then
//! `LIVEMIG_BLESS=1 cargo test -p livemig-openapi` rewrites the document).

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;
use livemig_http::guard::path;
use livemig_http::{json, ApiError, Guard, Json};

use crate::agent::Agent;
use crate::api::{
    Answer, CancelAsked, CapacityRequest, OutgoingStarted, Released, VmKind, VmRequest,
};
use crate::capacity::CapacityError;
use crate::metrics::{self, MigrationSample, Sample};
use crate::migrator::{incoming, outgoing, qemu_in};
use livemig_api::{
    GrantApplied, GrantRequest, IncomingRequest, MigrationNo, OutgoingRequest, SampleRequest,
    VmSample,
};

/// What every handler sees.
#[derive(Debug)]
pub struct App {
    pub agent: Arc<Agent>,
    /// The token check, the request timeout and the body cap, with their counters.
    pub guard: Arc<Guard>,
}

type Shared = State<Arc<App>>;

/// Declares the routes once: [`ROUTES`] lists them and `api` serves them, so the two cannot
/// disagree (the OpenAPI document of `livemig-openapi` is checked against [`ROUTES`]).
macro_rules! routes {
    ($($method:ident $path:literal => $handler:path,)*) => {
        /// Every route behind the token, `(method, path)` in axum's syntax. The open
        /// `GET /healthz` is the guard's ([`livemig_http::guard::HEALTHZ`]).
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path),)*];

        fn api() -> Router<Arc<App>> {
            Router::new()$(.route($path, on(MethodFilter::$method, $handler)))*
        }
    };
}

routes! {
    GET "/api/v1/info" => info,
    POST "/api/v1/capacity" => inquire,
    DELETE "/api/v1/capacity/{id}" => release,
    GET "/api/v1/vms" => list_vms,
    POST "/api/v1/vms" => create_vm,
    GET "/api/v1/vms/{name}" => get_vm,
    DELETE "/api/v1/vms/{name}" => delete_vm,
    POST "/api/v1/vms/{name}/sample" => sample_vm,
    POST "/api/v1/incoming" => incoming,
    POST "/api/v1/outgoing" => outgoing,
    DELETE "/api/v1/outgoing/{migration}" => cancel_outgoing,
    PUT "/api/v1/outgoing/{migration}/grant" => grant_outgoing,
    GET "/api/v1/report" => report,
    GET "/metrics" => metrics,
}

/// The whole API, behind the guard (`/healthz` open).
pub fn router(app: Arc<App>) -> Router {
    app.guard.wrap(api()).with_state(app)
}

impl From<CapacityError> for ApiError {
    fn from(e: CapacityError) -> ApiError {
        let status = match e {
            CapacityError::UnknownReservation(_) | CapacityError::UnknownVm(_) => {
                StatusCode::NOT_FOUND
            }
            CapacityError::VmExists(_)
            | CapacityError::NoMemory { .. }
            | CapacityError::TooManyVms(_) => StatusCode::CONFLICT,
            CapacityError::ZeroMemory => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.to_string())
    }
}

async fn info(State(app): Shared) -> Response {
    json(StatusCode::OK, &app.agent.info())
}

async fn inquire(State(app): Shared, Json(req): Json<CapacityRequest>) -> Response {
    let now = app.agent.now();
    let answer: Answer = app.agent.lock().book.inquire(now, req.memory_bytes);
    match &answer {
        Answer::Accepted { reservation } => {
            tracing::info!(id = %reservation.id, memory_bytes = req.memory_bytes, "reserved")
        }
        Answer::Refused { reason } => tracing::info!(%reason, "refused a capacity inquiry"),
    }
    json(StatusCode::OK, &answer)
}

async fn release(
    State(app): Shared,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path(id)?;
    let r = app.agent.lock().book.release(&id)?;
    Ok(json(
        StatusCode::OK,
        &Released {
            released: r.id,
            memory_bytes: r.memory_bytes,
        },
    ))
}

async fn list_vms(State(app): Shared) -> Response {
    json(StatusCode::OK, &app.agent.vm_views())
}

async fn create_vm(State(app): Shared, Json(req): Json<VmRequest>) -> Result<Response, ApiError> {
    // Filling guest memory is slow, blocking work; it finishes (or gives its memory back)
    // even if this request times out, so the book and the VM list always agree.
    let agent = Arc::clone(&app.agent);
    let view = match req.kind {
        // A task of its own for the same reason: QEMU starts (or the memory is given back)
        // whether or not anyone still waits for the answer.
        VmKind::Qemu => tokio::spawn(async move { agent.start_qemu_vm(req).await })
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")))??,
        VmKind::Sim => tokio::task::spawn_blocking(move || agent.start_vm(req))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")))??,
    };
    tracing::info!(vm = %view.name, memory_bytes = view.memory_bytes, "started a VM");
    Ok(json(StatusCode::CREATED, &view))
}

async fn get_vm(
    State(app): Shared,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = path(name)?;
    let view = app
        .agent
        .vm_view(&name)
        .ok_or_else(|| ApiError::not_found(format!("no VM named `{name}` runs here")))?;
    Ok(json(StatusCode::OK, &view))
}

async fn delete_vm(
    State(app): Shared,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = path(name)?;
    let (view, vm) = app.agent.remove_vm(&name)?;
    // A QEMU quits (bounded) before the answer, in a task of its own (it finishes even if
    // the request times out); a simulated guest's writer thread is joined off the async
    // threads.
    let _ = tokio::spawn(vm.shut_down()).await;
    tracing::info!(vm = %name, "stopped a VM");
    Ok(json(StatusCode::OK, &view))
}

async fn incoming(
    State(app): Shared,
    Json(req): Json<IncomingRequest>,
) -> Result<Response, ApiError> {
    let agent = Arc::clone(&app.agent);
    let ready = match req.vm.kind {
        // Starts the destination QEMU (async), then binds and hands over to a thread.
        // (A task of its own: the table and the reservation are settled even if the request
        // times out meanwhile.)
        livemig_api::VmKind::Qemu => {
            tokio::spawn(async move { qemu_in::prepare(&agent, req).await })
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")))??
        }
        // Binding a socket and starting a thread: quick, but not async work.
        livemig_api::VmKind::Sim => {
            tokio::task::spawn_blocking(move || incoming::prepare(&agent, req))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")))??
        }
    };
    Ok(json(StatusCode::CREATED, &ready))
}

async fn outgoing(
    State(app): Shared,
    Json(req): Json<OutgoingRequest>,
) -> Result<Response, ApiError> {
    let agent = Arc::clone(&app.agent);
    let id = req.migration;
    tokio::task::spawn_blocking(move || outgoing::start(&agent, req))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")))??;
    Ok(json(
        StatusCode::ACCEPTED,
        &OutgoingStarted {
            migration: id,
            state: "migrating".to_string(),
        },
    ))
}

/// A migration's number from the path, or 400.
fn migration_no(id: Result<Path<String>, PathRejection>) -> Result<MigrationNo, ApiError> {
    let raw = path(id)?;
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("`{raw}` is not a migration number")))
}

async fn cancel_outgoing(
    State(app): Shared,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = migration_no(id)?;
    outgoing::cancel(&app.agent, id)?;
    Ok(json(
        StatusCode::ACCEPTED,
        &CancelAsked {
            migration: id,
            cancel: "asked".to_string(),
        },
    ))
}

async fn grant_outgoing(
    State(app): Shared,
    id: Result<Path<String>, PathRejection>,
    Json(req): Json<GrantRequest>,
) -> Result<Response, ApiError> {
    let id = migration_no(id)?;
    outgoing::grant(&app.agent, id, req.bytes_per_s)?;
    Ok(json(
        StatusCode::OK,
        &GrantApplied {
            migration: id,
            bytes_per_s: req.bytes_per_s,
        },
    ))
}

async fn sample_vm(
    State(app): Shared,
    name: Result<Path<String>, PathRejection>,
    Json(req): Json<SampleRequest>,
) -> Result<Response, ApiError> {
    let name = path(name)?;
    let sample: VmSample = crate::sample::take(&app.agent, name, req).await?;
    Ok(json(StatusCode::OK, &sample))
}

async fn report(State(app): Shared) -> Response {
    json(StatusCode::OK, &app.agent.run_report())
}

async fn metrics(State(app): Shared) -> Response {
    let info = app.agent.info();
    let (unauthorized, bad_requests, timeouts) = app.guard.counters.load();
    let text = metrics::render(&Sample {
        memory_total_bytes: info.memory_total_bytes,
        memory_free_bytes: info.memory_free_bytes,
        memory_reserved_bytes: info.memory_reserved_bytes,
        vms: info.vms.len(),
        reservations: info.reservations,
        unauthorized,
        bad_requests,
        timeouts,
        migrations: migration_samples(&app.agent),
        events_dropped: app.agent.outbox().map_or(0, |o| o.dropped()),
        registered: app.agent.is_registered(),
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

fn migration_samples(agent: &Agent) -> Vec<MigrationSample> {
    agent
        .lock()
        .migrations
        .iter()
        .map(|(id, m)| MigrationSample {
            id: *id,
            role: match m.role {
                livemig_api::Role::Source => "source",
                livemig_api::Role::Destination => "destination",
            },
            rounds: m.stats.rounds,
            bytes: m.stats.bytes,
            cap_bytes_per_s: m.stats.cap_bytes_per_s,
            avg_dirty_factor: m.stats.avg_dirty_factor,
            downtime_s: m.stats.downtime_s,
        })
        .collect()
}
