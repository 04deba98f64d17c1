//! One migration as the RMS records it: its state machine (the legal transitions), the
//! placement attempts, the rounds the source reported, and why it ended.

use livemig_policy::report::{MigrationReport, RoundRecord};
use livemig_policy::PolicySpec;
use serde::{Deserialize, Serialize};

/// A migration's id, allocated by the RMS in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct MigrationId(pub u64);

impl std::fmt::Display for MigrationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a migration stands.
///
/// The legal transitions ([`MigrationState::can_go`]; `docs/system.md` draws them):
/// - `queued` → `placing`, `failed`, `cancelled`
/// - `placing` → `running`, `failed`, `cancelled`; → `queued` after an RMS restart
/// - `running` → `switching_over`, `completed`, `failed`, `cancelled`, `unknown`
/// - `switching_over` → `completed`, `failed`, `cancelled`, `unknown`
/// - `unknown` → `completed`, `failed`, `cancelled` (an agent's report or an operator)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    /// Accepted; waits for a free migration slot.
    Queued,
    /// Asking hosts, one at a time, whether they take the VM.
    Placing,
    /// A destination reserved room; the source's agent migrates.
    Running,
    /// The guest is paused on the source (stop-and-copy) or the hand-over is committed.
    SwitchingOver,
    /// The destination runs the guest and the source knows it (the VM's location moved).
    Completed,
    /// The migration did not hand over; the guest runs on the source.
    Failed,
    /// Cancelled before the commit point; the guest runs on the source.
    Cancelled,
    /// Where the guest runs is not known: no new migration of the VM until an agent's report
    /// or an operator settles it.
    Unknown,
}

impl MigrationState {
    /// Every state, in the order of the diagram above.
    pub const ALL: [MigrationState; 8] = [
        MigrationState::Queued,
        MigrationState::Placing,
        MigrationState::Running,
        MigrationState::SwitchingOver,
        MigrationState::Completed,
        MigrationState::Failed,
        MigrationState::Cancelled,
        MigrationState::Unknown,
    ];

    /// Whether nothing more happens to the migration.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            MigrationState::Completed | MigrationState::Failed | MigrationState::Cancelled
        )
    }

    /// Whether the migration holds its VM (no other migration of it may start).
    pub fn holds_vm(self) -> bool {
        !self.is_terminal()
    }

    /// Whether an agent may be moving the guest (a migration slot is taken).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            MigrationState::Placing | MigrationState::Running | MigrationState::SwitchingOver
        )
    }

    /// The legal transitions (staying put is always legal).
    pub fn can_go(self, to: MigrationState) -> bool {
        use MigrationState::*;
        if self == to {
            return true;
        }
        match self {
            Queued => matches!(to, Placing | Failed | Cancelled),
            // Back to the queue only when the RMS restarted mid-placement (no agent migrates yet).
            Placing => matches!(to, Queued | Running | Failed | Cancelled),
            Running => matches!(to, SwitchingOver | Completed | Failed | Cancelled | Unknown),
            SwitchingOver => matches!(to, Completed | Failed | Cancelled | Unknown),
            Unknown => matches!(to, Completed | Failed | Cancelled),
            Completed | Failed | Cancelled => false,
        }
    }

    /// The name used in JSON.
    pub fn name(self) -> &'static str {
        match self {
            MigrationState::Queued => "queued",
            MigrationState::Placing => "placing",
            MigrationState::Running => "running",
            MigrationState::SwitchingOver => "switching_over",
            MigrationState::Completed => "completed",
            MigrationState::Failed => "failed",
            MigrationState::Cancelled => "cancelled",
            MigrationState::Unknown => "unknown",
        }
    }
}

/// A host's answer to "can you take this VM?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum AnswerKind {
    Accepted,
    Refused,
}

/// One host asked during placement, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct Attempt {
    pub host: String,
    pub answer: AnswerKind,
    /// Why it refused (or why an acceptance was not used); empty for a plain acceptance.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Room a destination holds for a migration until `expires_at` (seconds, the RMS's clock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: String,
    pub expires_at: f64,
}

/// The host being asked, since when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingAsk {
    pub host: String,
    pub asked_at: f64,
}

/// Why the RMS asked a source's agent to stop a migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum CancelCause {
    /// A user asked (`DELETE /api/v1/migrations/{id}`): the migration ends `cancelled`.
    Requested,
    /// The RMS gave up on it (`reason`): when the source stops, it ends `failed`.
    Abandoned { reason: String },
}

/// Everything the RMS persists about one migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    pub id: MigrationId,
    pub vm: String,
    pub source: String,
    /// The host the request named, if any.
    pub requested_target: Option<String>,
    /// The host that accepted (set on entering `running`).
    pub target: Option<String>,
    pub policy: String,
    pub settings: Option<PolicySpec>,
    pub state: MigrationState,
    pub attempts: Vec<Attempt>,
    /// Hosts still to ask, best first (set on entering `placing`).
    pub candidates: Vec<String>,
    pub pending: Option<PendingAsk>,
    pub reservation: Option<Reservation>,
    /// The destination took the reservation up (the source connected).
    pub reservation_used: bool,
    /// The source's executor passed its commit point: cancellation is too late.
    pub committed: bool,
    /// Why a cancel was sent to the source's agent (its answer is awaited).
    pub cancel: Option<CancelCause>,
    /// The rounds the source reported, the first [`MAX_ROUNDS_KEPT`] of them (the report
    /// has the totals).
    pub rounds: Vec<RoundRecord>,
    pub report: Option<Box<MigrationReport>>,
    pub error: Option<String>,
    /// What the shared budget knows of it (priority, age, estimate, grant, place in the
    /// queue); see `docs/budget.md`.
    pub budget: Share,
}

/// A migration's part in the shared budget.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Share {
    /// Higher first (0–255).
    pub priority: u8,
    /// When it was submitted (the RMS's clock): the queue's age.
    pub submitted_at: f64,
    /// The dirtying estimate it is admitted and granted by; `None` until the source's
    /// sample arrived (or failed).
    pub estimate: Option<Estimate>,
    /// When the source was asked for a dirty sample, while the answer is awaited.
    pub sample_asked_at: Option<f64>,
    /// The rate last granted (bytes/s; `None`: no cap).
    pub grant_bytes_per_s: Option<f64>,
    /// The lowest rate that converges under its estimate, at the last plan.
    pub minimum_bytes_per_s: Option<f64>,
    /// What the round under way has to send (from the source's `round_started`).
    pub remaining_bytes: Option<f64>,
    /// The round under way (0 before round 1).
    pub round: u32,
    /// While queued: where in the queue and why it waits.
    pub waiting: Option<QueueSpot>,
    /// The source did not take the last grant: it is sent again at the next plan.
    #[serde(skip)]
    pub grant_unapplied: bool,
}

/// The estimate the budget plans a migration by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// P: the steepest line through the origin and an observation (bytes/s).
    pub dirty_rate_bytes_per_s: f64,
    /// The predictive policy's fit of the sample, when there is one.
    #[serde(default)]
    pub growth: Option<livemig_policy::predictive::growth::Growth>,
    /// Why it is what it is: `sample`, `rounds` (refined from finished rounds) or
    /// `no_sample: ...` (the sample failed: the need is taken as the floor until round 1).
    pub source: String,
}

/// A queued migration's place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct QueueSpot {
    /// 1 for the head of the queue.
    pub position: usize,
    /// Priority plus aging.
    pub effective_priority: f64,
    /// Why it waits, in words.
    pub reason: String,
    /// The reason's kind: `sampling`, `no_room`, `reserved`, `behind_head`,
    /// `cannot_converge`, `source_busy`, `host_slots`, `total_slots`, `slots`.
    pub code: String,
}

/// The most round records kept per migration: every round is persisted with the whole
/// migration, so a source that never converges (a policy without a round limit, a hostile
/// agent) must not grow the record without bound. Policies stop long before (`max_rounds`).
pub const MAX_ROUNDS_KEPT: usize = 1000;

impl Migration {
    /// A new, queued migration.
    pub fn new(
        id: MigrationId,
        vm: &str,
        source: &str,
        target: Option<String>,
        policy: &str,
    ) -> Migration {
        Migration {
            id,
            vm: vm.to_string(),
            source: source.to_string(),
            requested_target: target,
            target: None,
            policy: policy.to_string(),
            settings: None,
            state: MigrationState::Queued,
            attempts: Vec::new(),
            candidates: Vec::new(),
            pending: None,
            reservation: None,
            reservation_used: false,
            committed: false,
            cancel: None,
            rounds: Vec::new(),
            report: None,
            error: None,
            budget: Share::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MigrationState::*;

    const ALL: [MigrationState; 8] = [
        Queued,
        Placing,
        Running,
        SwitchingOver,
        Completed,
        Failed,
        Cancelled,
        Unknown,
    ];

    #[test]
    fn the_transition_table() {
        let legal = [
            (Queued, Placing),
            (Queued, Failed),
            (Queued, Cancelled),
            (Placing, Queued),
            (Placing, Running),
            (Placing, Failed),
            (Placing, Cancelled),
            (Running, SwitchingOver),
            (Running, Completed),
            (Running, Failed),
            (Running, Cancelled),
            (Running, Unknown),
            (SwitchingOver, Completed),
            (SwitchingOver, Failed),
            (SwitchingOver, Cancelled),
            (SwitchingOver, Unknown),
            (Unknown, Completed),
            (Unknown, Failed),
            (Unknown, Cancelled),
        ];
        for from in ALL {
            for to in ALL {
                let expected = from == to || legal.contains(&(from, to));
                assert_eq!(
                    from.can_go(to),
                    expected,
                    "{} -> {}",
                    from.name(),
                    to.name()
                );
            }
        }
    }

    #[test]
    fn terminal_states_go_nowhere_and_free_the_vm() {
        for s in ALL {
            assert_eq!(s.is_terminal(), !s.holds_vm());
            if s.is_terminal() {
                assert!(ALL.iter().all(|&t| t == s || !s.can_go(t)));
            }
        }
        assert!(Unknown.holds_vm() && !Unknown.is_active());
        assert!(Queued.holds_vm() && !Queued.is_active());
    }

    #[test]
    fn names_match_the_json() {
        for s in ALL {
            let json = serde_json::to_string(&s).expect("a state serialises");
            assert_eq!(json, format!("\"{}\"", s.name()));
        }
    }
}
