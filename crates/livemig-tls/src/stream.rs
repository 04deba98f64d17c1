//! [`TlsStream`]: a TLS connection over a TCP socket as the engine's
//! [`Transport`](livemig_engine::net::Transport), with every wait bounded like the socket's.
//!
//! The socket keeps its timeouts (a short poll); a timeout surfaces as `WouldBlock` with
//! nothing lost (partial records stay buffered in rustls), so the engine's frame deadlines
//! decide, exactly as over plain TCP. Writes are encrypted into rustls's buffer (64 KiB at
//! most) and pushed out before more is accepted; reads go through a 64 KiB buffer (rustls
//! asks for 4 KiB at a time).

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use rustls::Connection;

use crate::error::TlsError;

/// Bytes read from the socket at once.
const READ_BUFFER: usize = 64 * 1024;

/// The socket, reads buffered.
#[derive(Debug)]
struct Sock(BufReader<TcpStream>);

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.get_mut().write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.get_mut().write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS connection (client or server side) whose handshake is complete.
#[derive(Debug)]
pub struct TlsStream {
    conn: Connection,
    sock: Sock,
}

impl TlsStream {
    /// Runs the handshake of `conn` on `sock` within `limit` (the socket's timeouts are polls).
    pub(crate) fn handshake(
        conn: impl Into<Connection>,
        sock: TcpStream,
        limit: Duration,
    ) -> Result<TlsStream, TlsError> {
        let mut s = TlsStream {
            conn: conn.into(),
            sock: Sock(BufReader::with_capacity(READ_BUFFER, sock)),
        };
        let end = Instant::now() + limit;
        while s.conn.is_handshaking() {
            match s.conn.complete_io(&mut s.sock) {
                Ok(_) => {}
                Err(e) if pause(&e) => {
                    if Instant::now() >= end {
                        return Err(TlsError::HandshakeTimeout(limit));
                    }
                }
                Err(e) => return Err(handshake_error(e)),
            }
        }
        // The last flight (a client's Finished) goes out now, within the same limit.
        while s.conn.wants_write() {
            match s.conn.write_tls(&mut s.sock) {
                Ok(_) => {}
                Err(e) if pause(&e) && Instant::now() < end => {}
                Err(e) if pause(&e) => return Err(TlsError::HandshakeTimeout(limit)),
                Err(e) => return Err(TlsError::Io(e)),
            }
        }
        Ok(s)
    }

    /// The peer's certificate chain (its own first), when it presented one.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// The negotiated cipher suite's name (e.g. `TLS13_AES_256_GCM_SHA384`).
    pub fn cipher_suite(&self) -> Option<String> {
        self.conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
    }

    /// The underlying socket (for its address, or to shut it down from another thread via
    /// `try_clone`).
    pub fn socket(&self) -> &TcpStream {
        self.sock.0.get_ref()
    }

    /// Pushes what rustls holds encrypted to the socket; a socket timeout is returned as is
    /// (what was not written stays buffered).
    fn push(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.sock)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }
}

/// Whether a socket error is only a poll (a timeout) or an interruption.
fn pause(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// A failed handshake: rustls's own error when there is one (a certificate refused, an
/// alert), else the socket's.
fn handshake_error(e: io::Error) -> TlsError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return TlsError::HandshakeEof;
    }
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(t) => TlsError::Handshake(t.clone()),
        None => TlsError::Io(e),
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            // Alerts or key updates rustls wants to send go first.
            self.push()?;
            match self.conn.reader().read(buf) {
                // Data, or 0: the peer closed the session cleanly (close_notify).
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // An end of the socket without close_notify (UnexpectedEof), or worse.
                Err(e) => return Err(e),
            }
            // No plaintext buffered: read records (a socket timeout goes to the caller).
            self.conn.read_tls(&mut self.sock)?;
            if let Err(e) = self.conn.process_new_packets() {
                // Tell the peer (the alert rustls queued), best effort.
                let _ = self.push();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // What was accepted before goes out first: rustls's buffer then takes up to its limit
        // (never 0 bytes of a non-empty `buf`, which the engine would read as a closed peer).
        self.push()?;
        let n = self.conn.writer().write(buf)?;
        // Out now if the socket takes it; a timeout here is seen by the next write or flush.
        if let Err(e) = self.push() {
            if !pause(&e) {
                return Err(e);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.writer().flush()?;
        self.push()
    }
}

impl livemig_engine::net::Transport for TlsStream {
    /// Ends the TLS session (close_notify, best effort) and this side's writing.
    fn close_write(&mut self) {
        self.conn.send_close_notify();
        let _ = self.push();
        let _ = self.sock.0.get_ref().shutdown(Shutdown::Write);
    }
}
