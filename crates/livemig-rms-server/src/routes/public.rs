//! The operators' routes: hosts, VMs, migrations, metrics.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use livemig_api::VmInfo;
use livemig_http::guard::path;
use livemig_http::{json, ApiError, Json};
use livemig_rms::api::Created;
use livemig_rms::{Input, MigrationId, MigrationRequest, MigrationState, VmKind, VmRequest};
use serde::{Deserialize, Serialize};

use super::listing::{Filter, NEXT_HEADER};
use super::{refused, Shared};
use crate::client::CallError;
use crate::metrics;

/// The longest VM name (the agents' rule).
pub const MAX_VM_NAME: usize = livemig_api::MAX_NAME;

/// The answer to `POST /api/v1/vms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct VmCreated {
    pub name: String,
    pub host: String,
}

/// `POST /api/v1/migrations/{id}/resolve`: the operator found the guest running on `host`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    pub host: String,
}

fn id(p: Result<Path<String>, PathRejection>) -> Result<MigrationId, ApiError> {
    let s = path(p)?;
    s.parse::<u64>()
        .map(MigrationId)
        .map_err(|_| ApiError::bad_request(format!("`{s}` is not a migration id")))
}

fn agent_error(e: CallError) -> ApiError {
    match e {
        CallError::Refused {
            status, message, ..
        } => ApiError::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            format!("the agent refused: {message}"),
        ),
        other => ApiError::new(StatusCode::BAD_GATEWAY, other.to_string()),
    }
}

pub async fn hosts(State(app): Shared) -> Result<Response, ApiError> {
    let v = app.driver.read(|o| o.host_views()).await.map_err(refused)?;
    Ok(json(StatusCode::OK, &v))
}

pub async fn vms(State(app): Shared) -> Result<Response, ApiError> {
    let v: Vec<_> = app
        .driver
        .read(|o| o.vms().cloned().collect::<Vec<_>>())
        .await
        .map_err(refused)?;
    Ok(json(StatusCode::OK, &v))
}

pub async fn vm(
    State(app): Shared,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = path(name)?;
    let n = name.clone();
    let v = app
        .driver
        .read(move |o| o.vm(&n).cloned())
        .await
        .map_err(refused)?
        .ok_or_else(|| ApiError::not_found(format!("no VM is named `{name}`")))?;
    Ok(json(StatusCode::OK, &v))
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if livemig_api::is_valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(format!(
            "a VM name is 1 to {MAX_VM_NAME} characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// Starts the VM on its host's agent, then records it: nothing is recorded unless the agent
/// runs it.
pub async fn create_vm(
    State(app): Shared,
    Json(req): Json<VmRequest>,
) -> Result<Response, ApiError> {
    check_name(&req.name)?;
    if req.memory_bytes == 0 {
        return Err(ApiError::unprocessable("memory_bytes must be positive"));
    }
    let _held = app.names.take(&req.name)?;
    let (name, wanted, memory) = (req.name.clone(), req.host.clone(), req.memory_bytes);
    let placed = app
        .driver
        .read(move |o| {
            if o.vm(&name).is_some() {
                return Err(ApiError::conflict(format!(
                    "a VM named `{name}` exists already"
                )));
            }
            match wanted {
                Some(h) => match o.host(&h) {
                    None => Err(ApiError::not_found(format!("no host is named `{h}`"))),
                    Some(x) if !x.is_alive() => Err(ApiError::conflict(format!(
                        "host `{h}` is lost: it gets no new VMs"
                    ))),
                    Some(x) if x.draining => Err(ApiError::conflict(format!(
                        "host `{h}` is being drained: it gets no new VMs"
                    ))),
                    Some(x) => Ok((x.name.clone(), x.address.clone())),
                },
                None => o
                    .hosts()
                    .filter(|h| h.takes_vms() && h.memory_free_bytes >= memory)
                    .max_by(|a, b| {
                        a.memory_free_bytes
                            .cmp(&b.memory_free_bytes)
                            .then_with(|| b.name.cmp(&a.name))
                    })
                    .map(|h| (h.name.clone(), h.address.clone()))
                    .ok_or_else(|| {
                        ApiError::conflict(format!(
                            "no alive host that is not drained has {memory} bytes free for the VM"
                        ))
                    }),
            }
        })
        .await
        .map_err(refused)??;
    let (host, address) = placed;
    let info = VmInfo {
        name: req.name.clone(),
        memory_bytes: req.memory_bytes,
        workload: req.workload.clone(),
        kind: match req.kind {
            VmKind::Sim => livemig_api::VmKind::Sim,
            VmKind::Qemu => livemig_api::VmKind::Qemu,
        },
        content: req.content.clone(),
    };
    if let Err(e) = app.client.start_vm(&address, &info).await {
        // No answer or a 5xx: the agent may start it all the same. It is not recorded, so
        // stop it (best effort) rather than leave it running unaccounted for.
        if !e.is_refusal() {
            if let Err(stop) = app.client.stop_vm(&address, &req.name).await {
                tracing::error!(vm = %req.name, %host, error = %stop, "a VM whose start got no clear answer may run unrecorded on its agent");
            }
        }
        return Err(agent_error(e));
    }
    let added = app
        .driver
        .input(Input::AddVm {
            name: req.name.clone(),
            memory_bytes: req.memory_bytes,
            workload: req.workload,
            kind: req.kind,
            host: host.clone(),
        })
        .await;
    if let Err(e) = added {
        // Recorded by nobody: stop it again so nothing runs unaccounted for.
        if let Err(stop) = app.client.stop_vm(&address, &req.name).await {
            tracing::error!(vm = %req.name, %host, error = %stop, "a VM the RMS could not record still runs on its agent");
        }
        return Err(refused(e));
    }
    tracing::info!(vm = %req.name, %host, "created a VM");
    Ok(json(
        StatusCode::CREATED,
        &VmCreated {
            name: req.name,
            host,
        },
    ))
}

/// Stops the VM on its agent, then forgets it. Refused while a migration holds it.
pub async fn delete_vm(
    State(app): Shared,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = path(name)?;
    let _held = app.names.take(&name)?;
    let n = name.clone();
    let (vm, address) = app
        .driver
        .read(move |o| {
            let vm = o
                .vm(&n)
                .cloned()
                .ok_or_else(|| ApiError::not_found(format!("no VM is named `{n}`")))?;
            if let Some(m) = o.holding(&n) {
                return Err(ApiError::conflict(format!(
                    "`{n}` is held by migration {} ({}): wait for it or cancel it",
                    m.id,
                    m.state.name()
                )));
            }
            let address = o.host(&vm.host).map(|h| h.address.clone());
            Ok((vm, address))
        })
        .await
        .map_err(refused)??;
    let address = address.ok_or_else(|| ApiError::internal("the VM's host has no address"))?;
    match app.client.stop_vm(&address, &vm.name).await {
        Ok(()) => {}
        // Not there: nothing to stop; the record goes.
        Err(CallError::Refused { status: 404, .. }) => {}
        Err(e) => return Err(agent_error(e)),
    }
    app.driver
        .input(Input::RemoveVm {
            name: vm.name.clone(),
        })
        .await
        .map_err(refused)?;
    tracing::info!(vm = %vm.name, host = %vm.host, "deleted a VM");
    Ok(json(StatusCode::OK, &vm))
}

pub async fn submit(
    State(app): Shared,
    Json(req): Json<MigrationRequest>,
) -> Result<Response, ApiError> {
    // Held while the request is recorded: a delete cannot stop the VM in between.
    let _held = app.names.take(&req.vm)?;
    let step = app
        .driver
        .input(Input::Submit(req))
        .await
        .map_err(refused)?;
    let id = step
        .created
        .ok_or_else(|| ApiError::internal("the migration was not created"))?;
    Ok(json(StatusCode::ACCEPTED, &Created { id }))
}

pub async fn migrations(
    State(app): Shared,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let filter = Filter::parse(query.as_deref())?;
    let limit = filter.limit;
    // One more than asked: whether there is a next page.
    let mut v: Vec<_> = app
        .driver
        .read(move |o| {
            o.migrations()
                .filter(|m| filter.matches(m))
                .take(limit + 1)
                .map(|m| m.view())
                .collect::<Vec<_>>()
        })
        .await
        .map_err(refused)?;
    let more = v.len() > limit;
    v.truncate(limit);
    let mut resp = json(StatusCode::OK, &v);
    if more {
        if let Some(last) = v.last() {
            if let Ok(h) = header::HeaderValue::from_str(&last.id.0.to_string()) {
                resp.headers_mut().insert(NEXT_HEADER, h);
            }
        }
    }
    Ok(resp)
}

async fn view(app: &crate::routes::App, id: MigrationId) -> Result<Response, ApiError> {
    let v = app
        .driver
        .read(move |o| o.migration(id).map(|m| m.view()))
        .await
        .map_err(refused)?
        .ok_or_else(|| ApiError::not_found(format!("no migration has id {id}")))?;
    Ok(json(StatusCode::OK, &v))
}

pub async fn migration(
    State(app): Shared,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    view(&app, id(p)?).await
}

pub async fn cancel(
    State(app): Shared,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let migration = id(p)?;
    app.driver
        .input(Input::Cancel { migration })
        .await
        .map_err(refused)?;
    let mut r = view(&app, migration).await?;
    *r.status_mut() = StatusCode::ACCEPTED;
    Ok(r)
}

pub async fn resolve(
    State(app): Shared,
    p: Result<Path<String>, PathRejection>,
    Json(req): Json<ResolveRequest>,
) -> Result<Response, ApiError> {
    let migration = id(p)?;
    app.driver
        .input(Input::Resolve {
            migration,
            host: req.host,
        })
        .await
        .map_err(refused)?;
    view(&app, migration).await
}

pub async fn metrics(State(app): Shared) -> Result<Response, ApiError> {
    let picture = app
        .driver
        .read(|o| {
            let mut by_state = std::collections::BTreeMap::<&'static str, u64>::new();
            for s in MigrationState::ALL {
                by_state.insert(s.name(), 0);
            }
            for m in o.migrations() {
                *by_state.entry(m.state.name()).or_default() += 1;
            }
            let b = o.budget_view();
            metrics::Picture {
                hosts_alive: o.hosts().filter(|h| h.is_alive()).count() as u64,
                hosts_lost: o.hosts().filter(|h| !h.is_alive()).count() as u64,
                hosts_draining: o.hosts().filter(|h| h.draining).count() as u64,
                vms: o.vms().count() as u64,
                migrations: by_state,
                budget_bytes_per_s: b.uplink_bytes_per_s,
                granted_bytes_per_s: b.granted_bytes_per_s,
                uncapped: b.uncapped as u64,
            }
        })
        .await
        .map_err(refused)?;
    let text = metrics::render(&picture, &app.actions, &app.guard.counters);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response())
}
