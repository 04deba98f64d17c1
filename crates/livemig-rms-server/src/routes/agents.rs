//! The agents' routes: registration, heartbeats, migration events and reports.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use livemig_api::{AgentEvent, AgentReportPost, Heartbeat, Register, Registered};
use livemig_http::{json, ApiError, Json};
use livemig_rms::{Input, MigrationId, OrchestratorError, VmKind};

use std::net::IpAddr;

use livemig_tls::HOST_VALIDITY;

use super::{refused, App, Shared};
use crate::driver::DriverError;

/// The longest host name.
pub const MAX_HOST_NAME: usize = livemig_api::MAX_NAME;

fn check_host(name: &str) -> Result<(), ApiError> {
    if livemig_api::is_valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(format!(
            "a host name is 1 to {MAX_HOST_NAME} characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

fn check_vm(name: &str) -> Result<(), ApiError> {
    if livemig_api::is_valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(format!(
            "a VM name is 1 to {MAX_HOST_NAME} characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// An agent (re)introduces itself and the VMs it runs. A VM the RMS places elsewhere is not
/// moved by a registration: the location table changes only on a confirmed hand-over.
pub async fn register(State(app): Shared, Json(r): Json<Register>) -> Result<Response, ApiError> {
    check_host(&r.name)?;
    if r.address.parse::<std::net::SocketAddr>().is_err() {
        return Err(ApiError::unprocessable(format!(
            "address `{}` is not IP:PORT",
            r.address
        )));
    }
    if let Some(t) = r.timeout_s {
        if !(t.is_finite() && t > 0.0 && t <= 3600.0) {
            return Err(ApiError::unprocessable(
                "timeout_s must be between 0 and 3600 seconds",
            ));
        }
    }
    // Until hosts prove who they are with certificates, a name is taken at its word: an alive
    // host's name re-registered from another address would divert its migrations (and their
    // keys) there. Refused until the host is lost (its timeout), or comes back from the same
    // address.
    let (name, address) = (r.name.clone(), r.address.clone());
    let clash = app
        .driver
        .read(move |o| {
            o.host(&name)
                .filter(|h| h.is_alive() && h.address != address)
                .map(|h| h.address.clone())
        })
        .await
        .map_err(refused)?;
    if let Some(old) = clash {
        return Err(ApiError::conflict(format!(
            "host `{}` is alive at {old}: registering it from {} is refused until it is lost \
             (stop the other agent, or wait for its timeout)",
            r.name, r.address
        )));
    }
    for vm in &r.vms {
        check_vm(&vm.name)?;
    }
    if app.ca.is_some() {
        claimable(&app, &r).await?;
    }
    let (cert_pem, ca_pem) = issue(&app, &r)?;
    app.driver
        .input(Input::AddHost {
            name: r.name.clone(),
            address: r.address.clone(),
            memory_total_bytes: r.memory_total_bytes,
            timeout_s: r.timeout_s,
        })
        .await
        .map_err(refused)?;
    app.driver
        .input(Input::Heartbeat {
            host: r.name.clone(),
            memory_free_bytes: r.memory_free_bytes,
        })
        .await
        .map_err(refused)?;
    for vm in r.vms {
        let name = vm.name.clone();
        let added = app
            .driver
            .input(Input::AddVm {
                name: vm.name,
                memory_bytes: vm.memory_bytes,
                workload: vm.workload,
                kind: match vm.kind {
                    livemig_api::VmKind::Sim => VmKind::Sim,
                    livemig_api::VmKind::Qemu => VmKind::Qemu,
                },
                host: r.name.clone(),
            })
            .await;
        match added {
            Ok(_) => {}
            Err(DriverError::Refused(OrchestratorError::VmExists(_))) => {
                // Recorded already: fine if here; elsewhere, two hosts may run it.
                let (n, host) = (name.clone(), r.name.clone());
                let elsewhere = app
                    .driver
                    .read(move |o| o.vm(&n).map(|v| v.host.clone()).filter(|h| *h != host))
                    .await
                    .ok()
                    .flatten();
                if let Some(other) = elsewhere {
                    app.actions
                        .location_conflicts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(vm = %name, reported_by = %r.name, recorded_on = %other, "an agent reports running a VM the RMS places on another host: two hosts may run it; an operator must look");
                }
            }
            Err(e) => {
                tracing::warn!(host = %r.name, vm = %name, error = %e, "a VM the agent runs was not recorded")
            }
        }
    }
    tracing::info!(host = %r.name, address = %r.address, certificate = cert_pem.is_some(), "an agent registered");
    Ok(json(
        StatusCode::OK,
        &Registered {
            heartbeat_s: app.heartbeat_s,
            cert_pem,
            ca_pem,
        },
    ))
}

/// With a CA: a certificate for the agent's request, naming its host name, its data IP (what
/// the sources connect to and check) and its API's IP (what the RMS connects to and checks),
/// and the CA certificate. Without a CA: nothing. With a CA, a registration without a
/// request is refused (the RMS could not call an agent without a certificate: its API is
/// HTTPS); a request or a name the CA refuses is a 422 with the reason.
fn issue(app: &App, r: &Register) -> Result<(Option<String>, Option<String>), ApiError> {
    let Some(ca) = app.ca.as_deref() else {
        return Ok((None, None));
    };
    let ca_pem = Some(ca.cert_pem().to_string());
    let Some(csr) = r.csr_pem.as_deref() else {
        return Err(ApiError::unprocessable(
            "this RMS runs TLS: a registration needs a certificate request (csr_pem); \
             start the agent with --ca-file and an https:// --rms URL",
        ));
    };
    let ip: IpAddr = r.data_host.parse().map_err(|_| {
        ApiError::unprocessable(format!(
            "data_host `{}` is not an IP address (the certificate names it)",
            r.data_host
        ))
    })?;
    let mut ips = vec![ip];
    let mut dns = vec![r.name.as_str()];
    // The API's address (HOST:PORT, checked before): its host as the RMS will call it.
    if let Some((host, _port)) = r.address.rsplit_once(':') {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(api) if api != ip => ips.push(api),
            Ok(_) => {}
            Err(_) if host != r.name => dns.push(host),
            Err(_) => {}
        }
    }
    match ca.issue_names(csr, &dns, &ips, HOST_VALIDITY) {
        Ok(cert) => Ok((Some(cert), ca_pem)),
        Err(e) => Err(ApiError::unprocessable(format!(
            "no certificate for `{}`: {}",
            r.name,
            chain(&e)
        ))),
    }
}

/// With a CA, a certificate is a claim on names and addresses: a registration may not name
/// the RMS itself (its certificate's names and IPs), nor an IP another host's API is at.
async fn claimable(app: &App, r: &Register) -> Result<(), ApiError> {
    let mut ips: Vec<IpAddr> = Vec::new();
    if let Ok(a) = r.address.parse::<std::net::SocketAddr>() {
        ips.push(a.ip());
    }
    if let Ok(ip) = r.data_host.parse::<IpAddr>() {
        ips.push(ip);
    }
    if let Some(ip) = ips.iter().find(|ip| app.own.ips.contains(ip)) {
        return Err(ApiError::conflict(format!(
            "{ip} is the RMS's own address: no host may register it"
        )));
    }
    if app.own.dns.iter().any(|d| d.eq_ignore_ascii_case(&r.name)) {
        return Err(ApiError::conflict(format!(
            "`{}` is a name of the RMS itself: no host may register it",
            r.name
        )));
    }
    let name = r.name.clone();
    let taken = app
        .driver
        .read(move |o| {
            o.hosts()
                .filter(|h| h.name != name)
                .find(|h| {
                    h.address
                        .parse::<std::net::SocketAddr>()
                        .is_ok_and(|a| ips.contains(&a.ip()))
                })
                .map(|h| (h.name.clone(), h.address.clone()))
        })
        .await
        .map_err(refused)?;
    match taken {
        Some((other, at)) => Err(ApiError::conflict(format!(
            "host `{other}` is registered at {at}: another host's certificate may not name its address"
        ))),
        None => Ok(()),
    }
}

/// An error and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub async fn heartbeat(State(app): Shared, Json(h): Json<Heartbeat>) -> Result<Response, ApiError> {
    app.driver
        .input(Input::Heartbeat {
            host: h.name,
            memory_free_bytes: h.memory_free_bytes,
        })
        .await
        .map_err(refused)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn event(State(app): Shared, Json(e): Json<AgentEvent>) -> Result<Response, ApiError> {
    let input = Input::AgentEvent {
        migration: MigrationId(e.migration),
        host: e.host.clone(),
        event: e.event,
    };
    match app.driver.input(input).await {
        Ok(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(err) => {
            if matches!(
                err,
                DriverError::Refused(OrchestratorError::Contradicts { .. })
            ) {
                tracing::error!(host = %e.host, migration = e.migration, error = %err, "an agent contradicts the record");
            }
            Err(refused(err))
        }
    }
}

pub async fn report(
    State(app): Shared,
    Json(r): Json<AgentReportPost>,
) -> Result<Response, ApiError> {
    let known = app
        .driver
        .read(move |o| {
            o.migration(MigrationId(r.migration))
                .map(|m| m.source.clone())
        })
        .await
        .map_err(refused)?;
    match known {
        None => {
            return Err(ApiError::not_found(format!(
                "no migration has id {}",
                r.migration
            )))
        }
        Some(source) if source != r.host => {
            return Err(ApiError::conflict(format!(
                "`{}` is not the source of migration {}",
                r.host, r.migration
            )))
        }
        Some(_) => {}
    }
    app.driver
        .input(Input::Report {
            migration: MigrationId(r.migration),
            report: r.report,
        })
        .await
        .map_err(refused)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
