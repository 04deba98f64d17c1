//! The one event type every executor emits, and `receive` too: owned and serde, so the CLI
//! renders it in one place and `--progress json` writes it as NDJSON (one object per line,
//! tagged by `"event"`). The executor does not stamp it: the writer adds the time.

use serde::{Deserialize, Serialize};

use crate::decision::StopReason;
use crate::report::{Executor, MemoryAudit, RoundRecord};
use crate::stats::DirtySample;
use crate::timeout::Overdue;

/// What happened in a migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The migration starts (before the handshake or the sample).
    Started {
        executor: Executor,
        policy: String,
        memory_bytes: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        threshold: Option<f64>,
    },
    /// The two ends are connected (engine: both proved the key; QEMU: `migrate` issued).
    Connected {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<String>,
    },
    /// The dirty-log sample taken before round 1.
    Sampled { sample: DirtySample },
    /// A pre-copy round starts.
    RoundStarted {
        round: u32,
        /// The policy's cap.
        wish_bytes_per_s: f64,
        /// The cap it runs under (the wish bounded by the grant).
        cap_bytes_per_s: f64,
        /// What the round has to send (QEMU: what remains dirty at its start).
        bytes: f64,
    },
    /// Bytes moved so far in the round under way (round 0: stop-and-copy), at least once a
    /// second while bytes move.
    Progress {
        round: u32,
        bytes_sent: f64,
        bytes_remaining: f64,
    },
    /// The grant changed the cap in force.
    CapGranted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        granted_bytes_per_s: Option<f64>,
        cap_bytes_per_s: f64,
    },
    /// The policy raised the cap of the round under way after a mid-round check.
    Raised {
        round: u32,
        /// Seconds into the round.
        elapsed_s: f64,
        /// The policy's new cap.
        wish_bytes_per_s: f64,
        /// The cap in force now (the wish bounded by the grant).
        cap_bytes_per_s: f64,
        reason: String,
    },
    /// A round ended; its record carries the policy's decision.
    RoundEnded { record: Box<RoundRecord> },
    /// A timeout fired.
    TimedOut { overdue: Overdue },
    /// The guest is paused; what remains is sent under `cap_bytes_per_s`.
    StopAndCopy {
        reason: StopReason,
        bytes: f64,
        cap_bytes_per_s: f64,
    },
    /// The destination holds a verified copy (`how`: what was checked).
    Verified { how: String },
    /// The source committed the hand-over (the destination may run the guest now).
    Committed,
    /// The answer to the commit was lost; the source reconnects to learn the outcome.
    Resolving { cause: String },
    /// The guest runs on the destination and the source knows it.
    HandedOver { downtime_s: f64 },
    /// After the hand-over, the source checked its paused copy against what the destination
    /// received; a failed audit means the destination runs stale pages (`audit` lists them).
    Audited { audit: MemoryAudit },
    /// The migration failed; `outcome` says where the guest is.
    Failed { error: String, outcome: String },
    /// The migration was cancelled before its commit point: the guest runs on the source.
    Cancelled { phase: String },
    /// A destination listens for migrations.
    Listening { address: String },
    /// A destination accepted a connection.
    Accepted { peer: String },
    /// A destination received a whole round (round 0: stop-and-copy).
    Received { round: u32, pages: u64 },
    /// A destination runs the guest it received (`session`: the hand-over's id, hex).
    Resumed { session: String },
    /// A destination discarded a copy or turned a peer away.
    Discarded { peer: String, reason: String },
    /// A destination holds a verified copy, paused, until its source settles it.
    Held { reason: String },
    /// A reconnecting source settled a hand-over (`status`: running, discarded, …).
    Settled { status: String },
}

/// An event with the time it happened, in seconds since the command started: what an
/// NDJSON line holds (`{"t_s": 1.234, "event": "round_started", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamped {
    pub t_s: f64,
    #[serde(flatten)]
    pub event: Event,
}
