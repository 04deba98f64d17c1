//! The data path of a QEMU migration between two agents: a keyed handshake on the
//! per-migration connection (under TLS when asked), then QEMU's own migration stream relayed
//! one way (source QEMU → source agent → destination agent → destination QEMU), then the
//! destination's verdict.
//!
//! Handshake (every byte from the network is checked; every read has a deadline):
//!
//! 1. source → destination: `LMQEMU\0\x01` (8 bytes) and a 32-byte nonce;
//! 2. destination → source: its 32-byte nonce and its proof, HMAC-SHA256 over the transcript
//!    (the engine's [`Key::prove`] with the source's 40 bytes, [`RELAY_VERSION`] and the
//!    destination's nonce);
//! 3. source → destination: its proof over the same transcript.
//!
//! Either side drops the connection on a wrong proof: a stream keyed for another migration
//! never reaches QEMU. The relay then copies bytes until the source closes its writing (QEMU
//! finished or gave up). The destination answers one verdict: `R` (its QEMU runs the guest)
//! or `F` (it does not), each followed by a proof over the transcript under its own
//! version, so a verdict cannot be forged without the key (nor replayed from another
//! migration: the nonces differ).

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use livemig_engine::auth::{Role, Transcript};
use livemig_engine::wire::{MAC_LEN, NONCE_LEN};
use livemig_engine::Key;

/// The first bytes of a relay handshake.
pub const MAGIC: [u8; 8] = *b"LMQEMU\x00\x01";
/// The transcript's version field for the handshake's proofs (apart from the engine's).
pub const RELAY_VERSION: u16 = 0x7101;
/// The transcript's version field for a `resumed` verdict.
pub const RESUMED_VERSION: u16 = 0x7102;
/// The transcript's version field for a `failed` verdict.
pub const FAILED_VERSION: u16 = 0x7103;
/// The source's opening: magic and nonce.
pub const HELLO_LEN: usize = MAGIC.len() + NONCE_LEN;
/// The destination's answer: nonce and proof.
pub const ANSWER_LEN: usize = NONCE_LEN + MAC_LEN;
/// A verdict: one tag byte and a proof.
pub const VERDICT_LEN: usize = 1 + MAC_LEN;
/// Bytes moved per read.
const CHUNK: usize = 64 * 1024;

/// Why a relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the peer is not a livemig QEMU relay (bad magic)")]
    Magic,
    #[error("the peer's proof is wrong: it does not hold this migration's key")]
    Proof,
    #[error("the verdict is malformed or its proof is wrong")]
    Verdict,
    #[error("the peer sent nothing for {0:?}")]
    Idle(Duration),
    #[error("the peer closed the connection early")]
    Closed,
    #[error("the relay was stopped")]
    Stopped,
    #[error("no randomness for a nonce: {0}")]
    Random(String),
    #[error("the connection failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What the destination said about its QEMU once the stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The destination's QEMU runs the guest.
    Resumed,
    /// It does not (it was killed); the source may run the guest again.
    Failed,
}

/// Both ends' view of one handshake: what the proofs and verdicts cover.
#[derive(Debug, Clone)]
pub struct Session {
    hello: [u8; HELLO_LEN],
    dest_nonce: [u8; NONCE_LEN],
}

impl Session {
    fn transcript(&self, version: u16) -> Transcript<'_> {
        Transcript {
            hello: &self.hello,
            version,
            dest_nonce: &self.dest_nonce,
        }
    }

    /// A short id for logs and events (not secret: the session key's id).
    pub fn id(&self, key: &Key) -> String {
        livemig_engine::sender::hex(&key.session(&self.transcript(RELAY_VERSION)).id())
    }

    /// The destination's verdict, proven.
    pub fn verdict(&self, key: &Key, v: Verdict) -> [u8; VERDICT_LEN] {
        let (tag, version) = match v {
            Verdict::Resumed => (b'R', RESUMED_VERSION),
            Verdict::Failed => (b'F', FAILED_VERSION),
        };
        let mut out = [0u8; VERDICT_LEN];
        out[0] = tag;
        out[1..].copy_from_slice(&key.prove(Role::Destination, &self.transcript(version)));
        out
    }

    /// Checks a verdict's tag and proof.
    pub fn check_verdict(&self, key: &Key, b: &[u8; VERDICT_LEN]) -> Result<Verdict, RelayError> {
        let (v, version) = match b[0] {
            b'R' => (Verdict::Resumed, RESUMED_VERSION),
            b'F' => (Verdict::Failed, FAILED_VERSION),
            _ => return Err(RelayError::Verdict),
        };
        if key.verify(Role::Destination, &self.transcript(version), &b[1..]) {
            Ok(v)
        } else {
            Err(RelayError::Verdict)
        }
    }
}

/// The source's opening for `nonce`.
pub fn hello(nonce: &[u8; NONCE_LEN]) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[..MAGIC.len()].copy_from_slice(&MAGIC);
    h[MAGIC.len()..].copy_from_slice(nonce);
    h
}

/// Destination: checks the opening and answers it with `nonce` and its proof.
pub fn answer(
    key: &Key,
    hello: &[u8; HELLO_LEN],
    nonce: &[u8; NONCE_LEN],
) -> Result<(Session, [u8; ANSWER_LEN]), RelayError> {
    if hello[..MAGIC.len()] != MAGIC {
        return Err(RelayError::Magic);
    }
    let session = Session {
        hello: *hello,
        dest_nonce: *nonce,
    };
    let mut out = [0u8; ANSWER_LEN];
    out[..NONCE_LEN].copy_from_slice(nonce);
    out[NONCE_LEN..]
        .copy_from_slice(&key.prove(Role::Destination, &session.transcript(RELAY_VERSION)));
    Ok((session, out))
}

/// Source: checks the destination's answer to `hello`; returns the session and its own proof.
pub fn check_answer(
    key: &Key,
    hello: &[u8; HELLO_LEN],
    answer: &[u8; ANSWER_LEN],
) -> Result<(Session, [u8; MAC_LEN]), RelayError> {
    let mut dest_nonce = [0u8; NONCE_LEN];
    dest_nonce.copy_from_slice(&answer[..NONCE_LEN]);
    let session = Session {
        hello: *hello,
        dest_nonce,
    };
    let t = session.transcript(RELAY_VERSION);
    if !key.verify(Role::Destination, &t, &answer[NONCE_LEN..]) {
        return Err(RelayError::Proof);
    }
    let proof = key.prove(Role::Source, &t);
    Ok((session, proof))
}

/// Destination: checks the source's proof.
pub fn check_proof(key: &Key, session: &Session, proof: &[u8; MAC_LEN]) -> Result<(), RelayError> {
    if key.verify(Role::Source, &session.transcript(RELAY_VERSION), proof) {
        Ok(())
    } else {
        Err(RelayError::Proof)
    }
}

/// Whether an I/O error is only a socket poll running out (the deadline decides).
fn pause(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Reads exactly `buf.len()` bytes before `limit` runs out (the stream's own timeouts are
/// short polls).
pub fn read_full(r: &mut dyn Read, buf: &mut [u8], limit: Duration) -> Result<(), RelayError> {
    let end = Instant::now() + limit;
    let mut at = 0;
    while at < buf.len() {
        match r.read(&mut buf[at..]) {
            Ok(0) => return Err(RelayError::Closed),
            Ok(n) => at += n,
            Err(e) if pause(&e) => {
                if Instant::now() >= end {
                    return Err(RelayError::Idle(limit));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes all of `buf`, the writer making progress at least every `limit`.
pub fn write_full(w: &mut dyn Write, buf: &[u8], limit: Duration) -> Result<(), RelayError> {
    let mut at = 0;
    let mut last = Instant::now();
    while at < buf.len() {
        match w.write(&buf[at..]) {
            Ok(0) => return Err(RelayError::Closed),
            Ok(n) => {
                at += n;
                last = Instant::now();
            }
            Err(e) if pause(&e) => {
                if last.elapsed() >= limit {
                    return Err(RelayError::Idle(limit));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    loop {
        match w.flush() {
            Ok(()) => return Ok(()),
            Err(e) if pause(&e) && last.elapsed() < limit => {}
            Err(e) if pause(&e) => return Err(RelayError::Idle(limit)),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Source: the handshake on a fresh connection; returns the session.
pub fn open(
    s: &mut (impl Read + Write),
    key: &Key,
    limit: Duration,
) -> Result<Session, RelayError> {
    let nonce = livemig_engine::auth::nonce().map_err(|e| RelayError::Random(e.to_string()))?;
    let h = hello(&nonce);
    write_full(s, &h, limit)?;
    let mut a = [0u8; ANSWER_LEN];
    read_full(s, &mut a, limit)?;
    let (session, proof) = check_answer(key, &h, &a)?;
    write_full(s, &proof, limit)?;
    Ok(session)
}

/// Destination: the handshake on an accepted connection; returns the session.
pub fn accept(
    s: &mut (impl Read + Write),
    key: &Key,
    limit: Duration,
) -> Result<Session, RelayError> {
    let mut h = [0u8; HELLO_LEN];
    read_full(s, &mut h, limit)?;
    let nonce = livemig_engine::auth::nonce().map_err(|e| RelayError::Random(e.to_string()))?;
    let (session, a) = answer(key, &h, &nonce)?;
    write_full(s, &a, limit)?;
    let mut proof = [0u8; MAC_LEN];
    read_full(s, &mut proof, limit)?;
    check_proof(key, &session, &proof)?;
    Ok(session)
}

/// Copies `from` into `to` until `from` ends; gives up when either side makes no progress
/// for `idle` or `stop` is set. Returns the bytes copied.
pub fn copy(
    from: &mut dyn Read,
    to: &mut dyn Write,
    idle: Duration,
    stop: &AtomicBool,
) -> Result<u64, RelayError> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    let mut last = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(RelayError::Stopped);
        }
        match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                write_full(to, &buf[..n], idle)?;
                total += n as u64;
                last = Instant::now();
            }
            Err(e) if pause(&e) => {
                if last.elapsed() >= idle {
                    return Err(RelayError::Idle(idle));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key::from_bytes([b; 32])
    }

    #[test]
    fn the_same_key_passes_both_proofs_and_verdicts() {
        let k = key(1);
        let h = hello(&[7; NONCE_LEN]);
        let (dest, a) = answer(&k, &h, &[9; NONCE_LEN]).expect("answer");
        let (src, proof) = check_answer(&k, &h, &a).expect("the destination's proof");
        check_proof(&k, &dest, &proof).expect("the source's proof");
        assert_eq!(src.id(&k), dest.id(&k));
        for v in [Verdict::Resumed, Verdict::Failed] {
            let b = dest.verdict(&k, v);
            assert_eq!(src.check_verdict(&k, &b).expect("verdict"), v);
        }
    }

    #[test]
    fn another_key_fails_every_proof() {
        let (k, other) = (key(1), key(2));
        let h = hello(&[7; NONCE_LEN]);
        let (dest, a) = answer(&other, &h, &[9; NONCE_LEN]).expect("answer");
        assert!(matches!(check_answer(&k, &h, &a), Err(RelayError::Proof)));
        // A source with the wrong key: its proof is refused.
        let (_, proof) = check_answer(&other, &h, &a).expect("own key");
        let (dest_k, _) = answer(&k, &h, &[9; NONCE_LEN]).expect("answer");
        assert!(matches!(
            check_proof(&k, &dest_k, &proof),
            Err(RelayError::Proof)
        ));
        // A verdict under another key, or with its tag flipped, is refused.
        let (src, _) = check_answer(&other, &h, &a).expect("own key");
        let mut b = dest.verdict(&other, Verdict::Failed);
        assert!(src.check_verdict(&k, &b).is_err());
        b[0] = b'R';
        assert!(src.check_verdict(&other, &b).is_err());
        b[0] = b'X';
        assert!(src.check_verdict(&other, &b).is_err());
    }

    #[test]
    fn a_bad_magic_is_refused() {
        let mut h = hello(&[7; NONCE_LEN]);
        h[0] = b'G';
        assert!(matches!(
            answer(&key(1), &h, &[9; NONCE_LEN]),
            Err(RelayError::Magic)
        ));
    }

    #[test]
    fn handshake_and_copy_over_sockets() {
        use std::os::unix::net::UnixStream;
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("t");
        }
        let k = key(3);
        let limit = Duration::from_secs(5);
        let t = std::thread::spawn(move || {
            let s = accept(&mut b, &key(3), limit).expect("accepted");
            let mut out = Vec::new();
            let n = copy(&mut b, &mut out, limit, &AtomicBool::new(false)).expect("copied");
            let v = s.verdict(&key(3), Verdict::Resumed);
            write_full(&mut b, &v, limit).expect("verdict");
            (n, out)
        });
        let s = open(&mut a, &k, limit).expect("opened");
        write_full(&mut a, &[5u8; 100_000], limit).expect("data");
        a.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut v = [0u8; VERDICT_LEN];
        read_full(&mut a, &mut v, limit).expect("verdict");
        assert_eq!(s.check_verdict(&k, &v).expect("proven"), Verdict::Resumed);
        let (n, out) = t.join().expect("thread");
        assert_eq!(n, 100_000);
        assert!(out.iter().all(|&x| x == 5));
    }

    #[test]
    fn a_silent_peer_times_out_and_a_wrong_key_is_refused_on_the_wire() {
        use std::os::unix::net::UnixStream;
        let (mut a, b) = UnixStream::pair().expect("pair");
        a.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("t");
        let e = open(&mut a, &key(1), Duration::from_millis(100)).expect_err("silent");
        assert!(matches!(e, RelayError::Idle(_)), "{e}");
        drop(b);
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        let t = std::thread::spawn(move || accept(&mut b, &key(2), Duration::from_secs(5)));
        let e = open(&mut a, &key(1), Duration::from_secs(5)).expect_err("wrong key");
        assert!(matches!(e, RelayError::Proof), "{e}");
        drop(a);
        assert!(t.join().expect("thread").is_err());
    }
}
