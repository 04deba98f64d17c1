//! The accept loop: bounded connections, bounded header reads, bounded connection lifetimes,
//! a clean stop on the cancellation token.
//!
//! Each connection is served by hyper's HTTP/1.1 server with a header read timeout; at most
//! `max_connections` are served at once (further ones wait in the listen backlog until a slot
//! frees, which an idle or junk connection does within the header timeout). A connection
//! lives at most `connection_lifetime`; then it is closed after its current request.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use tokio_rustls::TlsAcceptor;

use axum::Router;

use crate::body::DEFAULT_BODY_LIMIT;

/// The server's limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The largest request body, bytes.
    pub body_limit: usize,
    /// How long a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long a request may take once its headers are in.
    pub request_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// The longest a connection is kept (keep-alive included).
    pub connection_lifetime: Duration,
    /// How long a stop waits for requests in flight before it drops them.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            body_limit: DEFAULT_BODY_LIMIT,
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_connections: 64,
            connection_lifetime: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled; then stops accepting, lets
/// requests in flight finish within `shutdown_grace`, and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cfg: ServerConfig,
    shutdown: CancellationToken,
) {
    serve_tls(listener, router, cfg, None, shutdown).await
}

/// [`serve`] over TLS when `tls` is given: every connection's handshake must finish within
/// the header read timeout, a failed one closes the connection (logged at debug level: port
/// scans and plain-HTTP clients make many).
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    cfg: ServerConfig,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let service = TowerToHyperService::new(router);
    let slots = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let mut conns = JoinSet::new();
    loop {
        // Reap finished connections so the set stays as small as the slots.
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, never spin or stop.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let shutdown = shutdown.clone();
        let cfg = cfg.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            let _permit = permit;
            match tls {
                None => drive(TokioIo::new(stream), service, &cfg, &shutdown, peer).await,
                Some(acceptor) => {
                    // The handshake gets the header timeout: a client that connects and says
                    // nothing (a port scan, plain HTTP) holds its slot no longer than that.
                    let hs = tokio::time::timeout(cfg.header_read_timeout, acceptor.accept(stream));
                    let tls_stream = tokio::select! {
                        r = hs => match r {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        },
                        _ = shutdown.cancelled() => return,
                    };
                    drive(TokioIo::new(tls_stream), service, &cfg, &shutdown, peer).await
                }
            }
        });
    }
    drop(listener);
    // Every connection has been told to close; give them the grace, then drop the rest.
    let grace = tokio::time::sleep(cfg.shutdown_grace);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            j = conns.join_next() => match j {
                Some(Err(e)) if e.is_panic() => tracing::error!(error = %e, "a connection task panicked"),
                Some(_) => {}
                None => break,
            },
            _ = &mut grace => {
                tracing::warn!(left = conns.len(), "connections still open after the grace; dropped");
                conns.abort_all();
                break;
            }
        }
    }
}

/// Serves one connection (plain or TLS) until it ends, its lifetime is up, or the stop.
async fn drive<I>(
    io: TokioIo<I>,
    service: TowerToHyperService<Router>,
    cfg: &ServerConfig,
    shutdown: &CancellationToken,
    peer: std::net::SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let lifetime = tokio::time::sleep(cfg.connection_lifetime);
    tokio::pin!(lifetime);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                break;
            }
            _ = &mut lifetime => {
                if closing {
                    break;
                }
                closing = true;
                conn.as_mut().graceful_shutdown();
                // Whatever is in flight gets the request timeout, then the socket goes.
                lifetime.as_mut().reset(tokio::time::Instant::now() + cfg.request_timeout);
            }
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
                lifetime.as_mut().reset(tokio::time::Instant::now() + cfg.shutdown_grace);
            }
        }
    }
}
