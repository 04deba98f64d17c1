//! The RMS as one process: load the store, start the driver and the dispatcher, recover what
//! was unfinished, serve the API until the shutdown token is cancelled, then stop in order.

use std::sync::Arc;
use std::time::Duration;

use std::net::IpAddr;

use livemig_http::{Guard, Secret, ServerConfig, TlsAcceptor, Token};
use livemig_rms::{Config, Input};
use livemig_store::lease::{self, Leadership};
use livemig_store::{Store, StoreError};
use livemig_tls::{Ca, Identity, TlsError, HOST_VALIDITY};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::actions::{self, ActionCounters};
use crate::client::{AgentClient, CallError};
use crate::driver::{self, Clock, Leading, Stop};
use crate::recover;
use crate::routes::{router, App, OwnNames};

/// The RMS's settings (no live handles).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RmsConfig {
    pub orchestrator: Config,
    /// How often the orchestrator's clock ticks (ask timeouts, reservation expiry, liveness).
    pub tick: Duration,
    /// The deadline of every call to an agent.
    pub agent_timeout: Duration,
    /// How often agents heartbeat (told at registration).
    pub heartbeat_s: f64,
}

impl Default for RmsConfig {
    fn default() -> RmsConfig {
        RmsConfig {
            orchestrator: Config::default(),
            tick: Duration::from_millis(250),
            agent_timeout: Duration::from_secs(5),
            heartbeat_s: 1.0,
        }
    }
}

/// The RMS's TLS: the installation's CA (it issues agents' certificates and is the only
/// anchor the RMS trusts when it calls agents) and the RMS's own certificate, which its API
/// presents (HTTPS).
#[derive(Debug, Clone)]
pub struct RmsTls {
    pub ca: Arc<Ca>,
    pub identity: Identity,
    /// What the RMS's certificate names: no host may register these.
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl RmsTls {
    /// The RMS's own certificate, issued now by `ca` for `dns_names` (the first is the common
    /// name) and `ips`, valid for [`HOST_VALIDITY`] (a new one at every start).
    pub fn issue(ca: Arc<Ca>, dns_names: &[&str], ips: &[IpAddr]) -> Result<RmsTls, TlsError> {
        let identity = ca.issue_identity(dns_names, ips, HOST_VALIDITY)?;
        Ok(RmsTls {
            ca,
            identity,
            dns_names: dns_names.iter().map(|s| s.to_string()).collect(),
            ips: ips.to_vec(),
        })
    }

    fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let cfg =
            livemig_tls::server_config(&self.identity.cert_chain_pem, &self.identity.key, None)?;
        Ok(TlsAcceptor::from(Arc::new(cfg)))
    }
}

/// Why the RMS could not run.
#[derive(Debug, thiserror::Error)]
pub enum RmsError {
    #[error("cannot read the store")]
    Load(#[source] StoreError),
    #[error("the RMS stopped")]
    Stopped(#[source] Stop),
    #[error("cannot take the lease")]
    Lease(#[source] StoreError),
    #[error("cannot build the API's TLS configuration")]
    Tls(#[source] livemig_tls::TlsError),
    #[error("cannot build the agent client")]
    Client(#[source] CallError),
    #[error("cannot start the driver thread")]
    Thread(#[source] std::io::Error),
    #[error("the driver thread panicked")]
    Panicked,
}

/// Drops a store on a blocking thread (a PostgreSQL client may not be dropped on an async one).
async fn drop_off_async(store: Box<dyn Store>) {
    let _ = tokio::task::spawn_blocking(move || drop(store)).await;
}

/// Waits until this RMS holds the store's lease as `holder` (a standby polls every
/// [`lease::RENEW_EVERY`]); `None` when `shutdown` came first.
pub async fn await_leadership(
    mut store: Box<dyn Store>,
    holder: &str,
    shutdown: &CancellationToken,
) -> Result<Option<(Box<dyn Store>, Leading)>, RmsError> {
    let mut last_seen: Option<(String, u64)> = None;
    loop {
        let h = holder.to_string();
        let asked = std::time::Instant::now();
        let (back, r) = tokio::task::spawn_blocking(move || {
            let r = store.lead(&h, lease::TTL);
            (store, r)
        })
        .await
        .map_err(|_| RmsError::Panicked)?;
        store = back;
        match r {
            Ok(Leadership::Leader { epoch }) => {
                tracing::info!(%holder, epoch, "this RMS leads");
                let leading = Leading {
                    holder: holder.to_string(),
                    epoch,
                    granted: asked,
                };
                return Ok(Some((store, leading)));
            }
            Ok(Leadership::Follower {
                holder: other,
                epoch,
                expires_in,
            }) => {
                if last_seen.as_ref() != Some(&(other.clone(), epoch)) {
                    tracing::warn!(leader = %other, epoch, expires_in_s = expires_in.as_secs_f64(), "standby: another RMS leads; waiting for its lease to lapse");
                    last_seen = Some((other, epoch));
                }
            }
            Err(e @ StoreError::BadLease(_)) => {
                drop_off_async(store).await;
                return Err(RmsError::Lease(e));
            }
            Err(e) => tracing::warn!(error = %e, "cannot reach the store for the lease; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                drop_off_async(store).await;
                return Ok(None);
            }
            _ = tokio::time::sleep(lease::RENEW_EVERY) => {}
        }
    }
}

/// Serves the RMS on `listener` until `shutdown` (or until it loses its lease or its store:
/// then it stops and says why).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    listener: TcpListener,
    store: Box<dyn Store>,
    leading: Option<Leading>,
    token: Token,
    secret: Secret,
    cfg: RmsConfig,
    server: ServerConfig,
    clock: Clock,
    tls: Option<RmsTls>,
    shutdown: CancellationToken,
) -> Result<(), RmsError> {
    // The store is synchronous (PostgreSQL's client blocks on a runtime of its own): every
    // call of it stays off the async threads.
    let (store, loaded) = tokio::task::spawn_blocking(move || {
        let r = store.load();
        (store, r)
    })
    .await
    .map_err(|_| RmsError::Panicked)?;
    let snapshot = match loaded {
        Ok(s) => s,
        Err(e) => {
            drop_off_async(store).await;
            return Err(RmsError::Load(e));
        }
    };
    let known: Vec<(String, String)> = snapshot
        .hosts
        .iter()
        .map(|h| (h.name.clone(), h.address.clone()))
        .collect();
    let unfinished = snapshot
        .migrations
        .iter()
        .filter(|m| !m.state.is_terminal())
        .count();
    tracing::info!(
        hosts = known.len(),
        vms = snapshot.vms.len(),
        migrations = snapshot.migrations.len(),
        unfinished,
        "loaded the store"
    );
    let orchestrator = snapshot.restore(cfg.orchestrator.clone(), clock());
    let (jobs_tx, jobs_rx) = tokio::sync::mpsc::unbounded_channel();
    let running = driver::start(orchestrator, store, clock, cfg.tick, leading, jobs_tx)
        .map_err(RmsError::Thread)?;
    // A driver that stops (lost lease, failed store) stops the whole process.
    let thread = running.thread;
    let on_end = shutdown.clone();
    let joiner = tokio::task::spawn_blocking(move || {
        let r = thread.join();
        on_end.cancel();
        r
    });
    let ca = tls.as_ref().map(|t| Arc::clone(&t.ca));
    let acceptor = match &tls {
        Some(t) => Some(t.acceptor().map_err(RmsError::Tls)?),
        None => None,
    };
    let client = AgentClient::new(
        &secret,
        cfg.agent_timeout,
        ca.as_deref().map(|c| c.cert_pem()),
    )
    .map_err(RmsError::Client)?;
    let counters = Arc::new(ActionCounters::default());
    let dispatcher = tokio::spawn(actions::dispatch(
        jobs_rx,
        running.driver.clone(),
        client.clone(),
        Arc::clone(&counters),
        ca.is_some(),
        shutdown.clone(),
    ));
    // Recovery before serving: every unfinished migration is decided from what the agents
    // say they run, not from events that may have been lost while the RMS was down.
    let reports = recover::ask_all(&client, known).await;
    match running.driver.input(Input::Restarted { reports }).await {
        Ok(step) => tracing::info!(effects = step.effects.len(), "recovered after the restart"),
        Err(e) => tracing::error!(error = %e, "recovery was refused"),
    }
    let guard = Guard::new(token, server.body_limit, server.request_timeout);
    let app = Arc::new(App {
        driver: running.driver.clone(),
        client,
        guard,
        actions: counters,
        heartbeat_s: cfg.heartbeat_s,
        ca,
        names: Default::default(),
        own: tls
            .as_ref()
            .map(|t| OwnNames {
                dns: t.dns_names.clone(),
                ips: t.ips.clone(),
            })
            .unwrap_or_default(),
    });
    livemig_http::serve_tls(
        listener,
        router(Arc::clone(&app)),
        server,
        acceptor,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    if let Err(e) = dispatcher.await {
        tracing::error!(error = %e, "the dispatcher failed");
    }
    drop(app);
    drop(running.driver);
    match joiner.await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(stop))) => Err(RmsError::Stopped(stop)),
        _ => Err(RmsError::Panicked),
    }
}
