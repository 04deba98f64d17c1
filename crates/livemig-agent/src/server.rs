//! The agent's server: `livemig_http`'s accept loop (bounded connections, header and request
//! timeouts, a clean stop on the cancellation token) serving the agent's routes, plus the
//! migrations' part of a stop.

use std::sync::Arc;
use std::time::Duration;

use livemig_http::Guard;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::routes::{router, App};

/// The server's limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The HTTP limits: body cap, header and request timeouts, connections, the stop's grace
    /// for requests in flight.
    pub http: livemig_http::ServerConfig,
    /// How long a stop waits for cancelled migrations to end (those past their commit point
    /// complete on their own threads).
    pub migration_grace: Duration,
    /// Serve the API over HTTPS with the certificate the RMS issues (see `tls`).
    pub https: bool,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            http: livemig_http::ServerConfig::default(),
            migration_grace: Duration::from_secs(20),
            https: false,
        }
    }
}

/// Serves the API on `listener` until `shutdown` is cancelled; then stops accepting, cancels
/// the outgoing migrations not yet committed and the listeners still waiting, lets requests in
/// flight finish within `shutdown_grace` and migrations within `migration_grace`, stops its
/// QEMU VMs (quit, then kill; bounded), and returns.
pub async fn run(
    listener: TcpListener,
    agent: Arc<Agent>,
    cfg: ServerConfig,
    shutdown: CancellationToken,
) {
    let guard = Guard::new(
        agent.token.clone(),
        cfg.http.body_limit,
        cfg.http.request_timeout,
    );
    let app = Arc::new(App {
        agent: Arc::clone(&agent),
        guard,
    });
    let acceptor = if cfg.https {
        match agent.tls().api_acceptor() {
            Ok(a) => Some(a),
            Err(e) => {
                // Never serve in clear what was asked to be HTTPS.
                tracing::error!(error = %e, "cannot build the API's TLS configuration: not serving");
                return;
            }
        }
    } else {
        None
    };
    let serve =
        livemig_http::serve_tls(listener, router(app), cfg.http, acceptor, shutdown.clone());
    // The migrations are stopped as soon as the stop is asked, not after the requests' grace.
    let stop = async {
        shutdown.cancelled().await;
        agent.stop_migrations();
    };
    tokio::join!(serve, stop);
    let until = tokio::time::Instant::now() + cfg.migration_grace;
    // (Samples end at once on the stop; their VMs are released before QEMU VMs stop.)
    while agent.migrating() > 0 || agent.sampling() > 0 {
        if tokio::time::Instant::now() >= until {
            tracing::warn!(
                left = agent.migrating(),
                "migrations still running after the grace"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.stop_qemu_vms().await;
}
