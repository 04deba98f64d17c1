//! Both ends of a TLS connection on the data path: the source's [`Connector`] (connect, wrap,
//! redial for the engine's settling of a lost hand-over) and the destination's [`Acceptor`],
//! the engine's [`Upgrade`] for `serve_with`.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use livemig_engine::net::{self, NetError, Transport, Upgrade, UpgradeError};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

use crate::error::TlsError;
use crate::stream::TlsStream;

/// The client side: connects to servers whose certificate the configuration's CA issued.
#[derive(Debug, Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
}

impl Connector {
    /// A connector with `config` (see [`crate::client_config`]).
    pub fn new(config: ClientConfig) -> Connector {
        Connector {
            config: Arc::new(config),
        }
    }

    /// Runs the client handshake on a connected socket (its timeouts set, e.g. by
    /// [`net::connect`]) within `limit`; the server's certificate must name `server_name` (a
    /// host name or an IP address).
    pub fn wrap(
        &self,
        sock: TcpStream,
        server_name: &str,
        limit: Duration,
    ) -> Result<TlsStream, TlsError> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TlsError::ServerName(server_name.to_string()))?;
        let conn =
            ClientConnection::new(Arc::clone(&self.config), name).map_err(TlsError::Handshake)?;
        TlsStream::handshake(conn, sock, limit)
    }

    /// Connects to `addr` within `timeout` ([`net::connect`]: socket polls of
    /// [`net::poll`]`(timeout)`) and runs the handshake within `timeout`.
    pub fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
        timeout: Duration,
    ) -> Result<TlsStream, TlsError> {
        let sock = net::connect(addr, timeout).map_err(TlsError::Connect)?;
        self.wrap(sock, server_name, timeout)
    }

    /// What the engine's sender calls to reconnect ([`livemig_engine::Redial`]): a fresh
    /// connection under TLS to the same destination.
    pub fn redial<'a>(
        &'a self,
        addr: SocketAddr,
        server_name: &'a str,
        timeout: Duration,
    ) -> impl FnMut() -> Result<Box<dyn Transport + 'a>, NetError> + 'a {
        move || {
            self.connect(addr, server_name, timeout)
                .map(net::boxed)
                .map_err(NetError::from)
        }
    }
}

/// The server side: the engine's [`Upgrade`] (`serve_with`) running the server handshake on
/// every accepted connection.
#[derive(Debug, Clone)]
pub struct Acceptor {
    config: Arc<ServerConfig>,
}

impl Acceptor {
    /// An acceptor with `config` (see [`crate::server_config`]).
    pub fn new(config: ServerConfig) -> Acceptor {
        Acceptor {
            config: Arc::new(config),
        }
    }

    /// Runs the server handshake on an accepted socket (its timeouts set) within `limit`.
    pub fn accept(&self, sock: TcpStream, limit: Duration) -> Result<TlsStream, TlsError> {
        let conn = ServerConnection::new(Arc::clone(&self.config)).map_err(TlsError::Handshake)?;
        TlsStream::handshake(conn, sock, limit)
    }
}

impl Upgrade for Acceptor {
    type Stream = TlsStream;
    fn upgrade(&self, stream: TcpStream, limit: Duration) -> Result<TlsStream, UpgradeError> {
        self.accept(stream, limit).map_err(UpgradeError::from)
    }
}

/// A failed dial as the engine's settling sees it: a connection that could not be made stays
/// a [`NetError::Connect`] (a refused connection tells the sender nothing listens there);
/// anything else is [`NetError::Secure`].
impl From<TlsError> for NetError {
    fn from(e: TlsError) -> NetError {
        match e {
            TlsError::Connect(e) => e,
            e => NetError::Secure(Box::new(e)),
        }
    }
}
