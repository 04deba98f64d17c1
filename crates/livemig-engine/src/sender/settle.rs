//! Settling a hand-over whose last messages were lost: the source reconnects
//! ([`Mode::Resolve`]), tells the destination what it decided and learns what it did.

use std::time::{Duration, Instant};

use crate::auth::Key;
use crate::net::{NetError, Transport};
use crate::wire::{Message, Mode, ResolveDecision, ResolveStatus, Versions, SESSION_ID_LEN};

use super::link::{handshake, Link};
use super::{SendError, SenderPhase, REDIAL_EVERY};

/// Reconnects to the destination (a fresh connection, timeouts set, upgraded as the first
/// one was: e.g. under TLS) to settle a hand-over. Plain TCP:
/// `|| net::connect(addr, timeout).map(net::boxed)`.
pub type Redial<'a> = dyn FnMut() -> Result<Box<dyn Transport + 'a>, NetError> + 'a;

/// A session id as hex.
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Settles session `id` with the destination: reconnects with `dial` (an authenticated
/// [`Mode::Resolve`] handshake), tells it `decision` and returns what it did, retrying until
/// `until` while the destination is unreachable or still has the session's connection open.
pub fn resolve(
    dial: &mut Redial<'_>,
    key: &Key,
    id: &[u8; SESSION_ID_LEN],
    decision: ResolveDecision,
    timeout: Duration,
    until: Instant,
) -> Result<ResolveStatus, SendError> {
    loop {
        let r = dial()
            .map_err(SendError::from)
            .and_then(|mut s| resolve_once(&mut s, key, id, decision, timeout, until));
        // Telling a destination to discard: if nothing listens there any more, no process
        // holds a copy to discard (a hold file it may have saved is for an operator).
        let gone = matches!(
            &r,
            Err(SendError::Dial(NetError::Connect { source, .. }))
                if source.kind() == std::io::ErrorKind::ConnectionRefused
        );
        match r {
            Err(_) if gone && decision == ResolveDecision::Abort => return r,
            Ok(ResolveStatus::Pending) | Err(_) if Instant::now() + REDIAL_EVERY < until => {
                std::thread::sleep(REDIAL_EVERY);
            }
            r => return r,
        }
    }
}

fn resolve_once<S: Transport>(
    stream: &mut S,
    key: &Key,
    id: &[u8; SESSION_ID_LEN],
    decision: ResolveDecision,
    timeout: Duration,
    until: Instant,
) -> Result<ResolveStatus, SendError> {
    let mut link = Link::new(stream, timeout);
    link.phase = SenderPhase::Handshake;
    link.outer = Some((until, timeout));
    let chan = handshake(
        &mut link,
        key,
        0,
        false,
        Mode::Resolve,
        Versions::THIS_BUILD,
    )?;
    link.chan = Some(chan);
    link.send(&Message::Resolve {
        session: *id,
        decision,
    })?;
    match link.recv()? {
        Message::Resolved { status } => {
            if status == ResolveStatus::Running {
                // Best effort: the destination stops waiting for our questions.
                let _ = link.send(&Message::Done);
            }
            Ok(status)
        }
        m => Err(link.unexpected(&m)),
    }
}
