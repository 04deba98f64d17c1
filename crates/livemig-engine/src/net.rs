//! TCP helpers that bound every wait: connect, accept, and read/write timeouts on the socket;
//! the [`Transport`] a migration runs over, and the [`Upgrade`] an accepted connection goes
//! through first (nothing for plain TCP; a TLS handshake in `livemig-tls`).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no source connected within {0:?}")]
    AcceptTimeout(Duration),
    #[error("the socket failed")]
    Io(#[from] std::io::Error),
    /// The connection was made but its upgrade (a TLS handshake) failed.
    #[error("the secure channel could not be set up")]
    Secure(#[source] UpgradeError),
}

/// Why an [`Upgrade`] failed (a TLS handshake's typed error, boxed).
pub type UpgradeError = Box<dyn std::error::Error + Send + Sync>;

/// A byte stream a migration runs over: reads, writes, and ending this side's writing.
pub trait Transport: Read + Write {
    /// Ends this side's writing: the peer reads what was written, then the end of the stream,
    /// at once — rather than waiting for its deadline on a connection we no longer use.
    fn close_write(&mut self) {}
}

impl Transport for TcpStream {
    fn close_write(&mut self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn close_write(&mut self) {
        (**self).close_write();
    }
}

/// A transport boxed, for a [`crate::Redial`] that may return plain or secured streams.
pub fn boxed<'a, T: Transport + 'a>(s: T) -> Box<dyn Transport + 'a> {
    Box::new(s)
}

/// What an accepted connection becomes before the engine's handshake runs on it.
///
/// [`crate::serve::serve_with`] calls it on the connection's own thread, after the socket's
/// timeouts are set; it must finish within `limit` (the receiver's handshake deadline). A
/// failure is logged as a refusal ([`crate::RecvError::Secure`]) and never ends the loop.
pub trait Upgrade: Sync {
    /// The stream the engine then reads and writes.
    type Stream: Transport;
    /// Upgrades `stream` (e.g. the server side of a TLS handshake) within `limit`.
    fn upgrade(&self, stream: TcpStream, limit: Duration) -> Result<Self::Stream, UpgradeError>;
}

/// No upgrade: the engine runs on the TCP stream itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Upgrade for Plain {
    type Stream = TcpStream;
    fn upgrade(&self, stream: TcpStream, _limit: Duration) -> Result<TcpStream, UpgradeError> {
        Ok(stream)
    }
}

/// Sets read and write timeouts (every later wait is bounded by `timeout`) and no-delay.
pub fn prepare(s: &TcpStream, timeout: Duration) -> Result<(), NetError> {
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    Ok(())
}

/// The socket timeout under a deadline of `timeout`: short, so that the protocol's deadlines
/// (checked after every socket call), not the socket, decide when a peer is too slow.
pub fn poll(timeout: Duration) -> Duration {
    timeout.min(Duration::from_millis(250))
}

/// Connects within `timeout` and prepares the socket (timeouts of [`poll`]`(timeout)`).
pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, NetError> {
    let s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| NetError::Connect { addr, source })?;
    prepare(&s, poll(timeout))?;
    Ok(s)
}

/// Waits at most `limit` for one connection and prepares it with `timeout`.
pub fn accept(l: &TcpListener, limit: Duration, timeout: Duration) -> Result<TcpStream, NetError> {
    l.set_nonblocking(true)?;
    let start = Instant::now();
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                prepare(&s, timeout)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() > limit {
                    return Err(NetError::AcceptTimeout(limit));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_gives_up_after_its_limit() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let e = accept(&l, Duration::from_millis(50), Duration::from_secs(1)).expect_err("none");
        assert!(matches!(e, NetError::AcceptTimeout(_)), "{e}");
    }

    #[test]
    fn connect_and_accept_set_timeouts() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let a = connect(addr, Duration::from_secs(3)).expect("connect");
        let b = accept(&l, Duration::from_secs(3), Duration::from_secs(2)).expect("accept");
        // The kernel rounds socket timeouts to its tick (250 ms may read back as 252 ms).
        let t = a.read_timeout().expect("get").expect("set");
        let want = poll(Duration::from_secs(3));
        assert!(t >= want && t < want + Duration::from_millis(20), "{t:?}");
        assert_eq!(
            b.write_timeout().expect("get"),
            Some(Duration::from_secs(2))
        );
    }
}
