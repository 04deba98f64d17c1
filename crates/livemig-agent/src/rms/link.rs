//! Registration and heartbeats: register until the RMS answers (never giving up while the
//! agent runs), then heartbeat every `heartbeat_s`; a 404 means the RMS forgot this host, so
//! it registers again. A host holding a certificate registers again every [`RENEW_AFTER`]:
//! each registration issues a fresh certificate, so it never runs out (90 days).

use std::sync::Arc;
use std::time::Duration;

use livemig_api::{Heartbeat, Register, Registered};
use tokio_util::sync::CancellationToken;

use super::client::RmsClient;
use crate::agent::Agent;

/// The first pause between two registration attempts (doubled up to [`MAX_BACKOFF`]).
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest pause between two registration attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// How long a certificate is used before a registration renews it (a third of its validity).
pub const RENEW_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);
/// How soon a failed renewal is tried again.
pub const RENEW_RETRY: Duration = Duration::from_secs(600);
/// The heartbeat period is kept within these bounds whatever the RMS says.
pub const HEARTBEAT_BOUNDS_S: (f64, f64) = (0.1, 300.0);

/// What the agent tells the RMS about itself besides its state.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Where its API listens, as the RMS can reach it (`HOST:PORT`).
    pub address: String,
    /// The IP its migration listeners bind to.
    pub data_host: String,
    /// How long it may stay silent (None: the RMS's default).
    pub timeout_s: Option<f64>,
    /// The heartbeat period when the RMS does not say (it always does) or to override it.
    pub heartbeat_s: Option<f64>,
}

/// Registers, then heartbeats, until `stop`.
pub async fn run_link(
    client: RmsClient,
    agent: Arc<Agent>,
    cfg: LinkConfig,
    stop: CancellationToken,
) {
    let csr = certificate_request(&agent, &cfg);
    'register: loop {
        let mut pause = FIRST_BACKOFF;
        let registered: Registered = loop {
            let body = register_body(&agent, &cfg, csr.clone());
            match client.post_for("/api/v1/agents/register", &body).await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!(error = %e, rms = client.base(), retry_in = ?pause, "cannot register with the RMS");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return,
            }
            pause = (pause * 2).min(MAX_BACKOFF);
        };
        let every = cfg.heartbeat_s.unwrap_or(registered.heartbeat_s);
        let every = if every.is_finite() {
            every.clamp(HEARTBEAT_BOUNDS_S.0, HEARTBEAT_BOUNDS_S.1)
        } else {
            HEARTBEAT_BOUNDS_S.1
        };
        take_certificate(&agent, registered.cert_pem, registered.ca_pem);
        let mut renew_at = agent
            .tls()
            .issued()
            .map(|_| tokio::time::Instant::now() + RENEW_AFTER);
        agent.set_registered(true);
        tracing::info!(
            rms = client.base(),
            heartbeat_s = every,
            "registered with the RMS"
        );
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(every)) => {}
                _ = stop.cancelled() => return,
            }
            if renew_at.is_some_and(|t| tokio::time::Instant::now() >= t) {
                // One attempt; heartbeats go on whatever its outcome (a renewal that keeps
                // failing must not make the host look lost while its certificate is valid).
                let body = register_body(&agent, &cfg, csr.clone());
                let next = match client
                    .post_for::<_, Registered>("/api/v1/agents/register", &body)
                    .await
                {
                    Ok(r) => {
                        take_certificate(&agent, r.cert_pem, r.ca_pem);
                        tracing::info!("renewed the host certificate");
                        RENEW_AFTER
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?RENEW_RETRY, "cannot renew the host certificate");
                        RENEW_RETRY
                    }
                };
                renew_at = Some(tokio::time::Instant::now() + next);
            }
            let info = agent.info();
            let beat = Heartbeat {
                name: info.name,
                memory_free_bytes: info.memory_free_bytes,
            };
            match client.post("/api/v1/agents/heartbeat", &beat).await {
                Ok(_) => {}
                Err(e) if e.status() == Some(404) => {
                    tracing::warn!("the RMS does not know this host any more; registering again");
                    agent.set_registered(false);
                    continue 'register;
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    }
}

/// The host's certificate request (its key stays in memory here), naming its host name and
/// its data IP; none if the request cannot be made (the agent then runs without TLS).
fn certificate_request(agent: &Agent, cfg: &LinkConfig) -> Option<String> {
    let ip = match cfg.data_host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip,
        Err(_) => {
            tracing::warn!(data_host = %cfg.data_host, "the data host is not an IP address: no certificate request");
            return None;
        }
    };
    match agent.tls().request(&agent.name, &[ip]) {
        Ok(csr) => Some(csr),
        Err(e) => {
            let why = crate::migrator::incoming::error_chain(&e);
            tracing::warn!(error = %why, "cannot make a certificate request: migrations here run without TLS");
            None
        }
    }
}

/// Keeps the certificate the RMS issued, if it passes the trust checks.
fn take_certificate(agent: &Agent, cert_pem: Option<String>, ca_pem: Option<String>) {
    let Some(cert) = cert_pem else {
        if ca_pem.is_some() {
            tracing::warn!(
                "the RMS has a CA but issued no certificate: TLS migrations will be refused here"
            );
        }
        return;
    };
    match agent.tls().accept(cert, ca_pem) {
        Ok(()) => tracing::info!("took the host certificate the RMS issued"),
        Err(e) => {
            let why = crate::migrator::incoming::error_chain(&e);
            tracing::error!(error = %why, "refused the certificate the RMS issued: TLS migrations will be refused here");
        }
    }
}

fn register_body(agent: &Agent, cfg: &LinkConfig, csr_pem: Option<String>) -> Register {
    let info = agent.info();
    Register {
        name: info.name,
        address: cfg.address.clone(),
        data_host: cfg.data_host.clone(),
        memory_total_bytes: info.memory_total_bytes,
        memory_free_bytes: info.memory_free_bytes,
        timeout_s: cfg.timeout_s,
        vms: agent.vm_infos(),
        csr_pem,
    }
}
