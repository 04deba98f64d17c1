//! Where the sender is, why it failed, and what it tells its observer.

use std::time::Duration;

use livemig_policy::pilot::{Overdue, PilotError};

use crate::auth::{Forged, KeyError};
use crate::memory::MemoryError;
use crate::net::NetError;
use crate::wire::{self, ResolveStatus, WireError};

/// Where the sender is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderPhase {
    Connected,
    Handshake,
    PreCopy { round: u32 },
    StopCopy,
    AwaitConfirm,
    Committed,
    HandedOver,
    Failed,
}

impl SenderPhase {
    /// The phase as the error messages name it.
    pub fn name(self) -> &'static str {
        match self {
            SenderPhase::Connected => "connected",
            SenderPhase::Handshake => "handshake",
            SenderPhase::PreCopy { .. } => "pre-copy",
            SenderPhase::StopCopy => "stop-and-copy",
            SenderPhase::AwaitConfirm => "waiting for the destination's confirmation",
            SenderPhase::Committed => "waiting for the destination to run the guest",
            SenderPhase::HandedOver => "handed over",
            SenderPhase::Failed => "failed",
        }
    }

    /// Moves to `next` if the protocol allows it.
    pub fn advance(&mut self, next: SenderPhase) -> Result<(), TransitionError> {
        use SenderPhase::*;
        let ok = match (*self, next) {
            (_, Failed) => !matches!(*self, HandedOver | Committed),
            (Connected, Handshake) => true,
            (Handshake, PreCopy { round: 1 }) => true,
            (PreCopy { round: a }, PreCopy { round: b }) => b == a + 1,
            (PreCopy { .. }, StopCopy) => true,
            (StopCopy, AwaitConfirm) => true,
            (AwaitConfirm, Committed) => true,
            (Committed, HandedOver) => true,
            _ => false,
        };
        if ok {
            *self = next;
            Ok(())
        } else {
            Err(TransitionError {
                from: self.name(),
                to: next.name(),
            })
        }
    }
}

/// A state change the protocol does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the sender cannot go from `{from}` to `{to}`")]
pub struct TransitionError {
    pub from: &'static str,
    pub to: &'static str,
}

/// Why a migration did not hand over. Every variant but [`SendError::InDoubt`] leaves the guest
/// running on the source.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the connection failed during {phase}")]
    Wire {
        phase: &'static str,
        #[source]
        source: WireError,
    },
    #[error("the destination refused during {phase}: {message} (code {code})")]
    Refused {
        phase: &'static str,
        code: u16,
        message: String,
    },
    #[error("the destination could not prove it holds the shared key (wrong key, or the handshake was altered on the way)")]
    Auth,
    #[error("the destination sent `{got:?}` during {phase}")]
    Unexpected {
        phase: &'static str,
        got: wire::MsgType,
    },
    #[error("the destination sent {0} keep-alives in a row without progress")]
    Stalled(u32),
    #[error("during {phase}")]
    Forged {
        phase: &'static str,
        #[source]
        source: Forged,
    },
    #[error("the destination's memory digest {dest:016x} does not match the source's {source_digest:016x}")]
    Verify { source_digest: u64, dest: u64 },
    #[error("the guest stayed paused for the maximum pause of {0:?} without the destination's confirmation; the source aborted the hand-over")]
    PauseExceeded(Duration),
    #[error("cancelled during {phase}; the guest keeps running on the source")]
    Cancelled { phase: &'static str },
    #[error("the cap fell to {cap:.0} bytes/s, too low to move one frame within the timeout of {timeout:?}")]
    CapTooLow { cap: f64, timeout: Duration },
    #[error("the destination answered {status:?}, not that it runs the guest")]
    NotRunning { status: ResolveStatus },
    #[error("outcome unknown: the source committed the hand-over but could not learn within {resolve_timeout:?} whether the destination runs the guest; the guest stays paused here (session {session})")]
    InDoubt {
        session: String,
        resolve_timeout: Duration,
        #[source]
        cause: Box<SendError>,
    },
    #[error("the round sequence stopped")]
    Pilot(#[from] PilotError),
    #[error("{0}; the migration was aborted")]
    TimedOut(Overdue),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("cannot read guest memory")]
    Memory(#[from] MemoryError),
    #[error("cannot make a handshake nonce")]
    Key(#[from] KeyError),
    #[error("the policy set an invalid cap")]
    Limiter(#[from] crate::limiter::LimiterError),
    #[error("cannot reach the destination")]
    Dial(#[from] NetError),
}

impl SendError {
    /// Whether the outcome is unknown: the guest is paused on the source and may or may not
    /// run on the destination. Every other error leaves the guest running on the source.
    pub fn in_doubt(&self) -> bool {
        matches!(self, SendError::InDoubt { .. })
    }

    /// The session id (hex) of an outcome in doubt.
    pub fn session(&self) -> Option<&str> {
        match self {
            SendError::InDoubt { session, .. } => Some(session),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_the_protocol() {
        let mut p = SenderPhase::Connected;
        assert!(p.advance(SenderPhase::StopCopy).is_err());
        p.advance(SenderPhase::Handshake).expect("ok");
        assert!(p.advance(SenderPhase::PreCopy { round: 2 }).is_err());
        p.advance(SenderPhase::PreCopy { round: 1 }).expect("ok");
        p.advance(SenderPhase::PreCopy { round: 2 }).expect("ok");
        assert!(p.advance(SenderPhase::HandedOver).is_err());
        p.advance(SenderPhase::StopCopy).expect("ok");
        p.advance(SenderPhase::AwaitConfirm).expect("ok");
        assert!(p.advance(SenderPhase::HandedOver).is_err(), "commit first");
        p.advance(SenderPhase::Committed).expect("ok");
        assert!(
            p.advance(SenderPhase::Failed).is_err(),
            "no failing (resuming) after the commit point"
        );
        p.advance(SenderPhase::HandedOver).expect("ok");
        assert!(
            p.advance(SenderPhase::Failed).is_err(),
            "no failing after hand-over"
        );
    }
}
