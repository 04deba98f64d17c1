//! The completion and no-progress timeouts of a migration and what fires them (the
//! [`crate::Pilot`] checks them).

use serde::{Deserialize, Serialize};

/// One GiB, the unit of the completion timeout.
pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// What to do when a timeout fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum TimeoutAction {
    /// Cancel: the guest keeps running on the source.
    Abort,
    /// Stop-and-copy now, whatever remains (downtime grows, the migration finishes).
    Force,
}

/// The completion and no-progress timeouts (`docs/decisions.md`): the completion deadline
/// scales with the guest's memory, as in KubeVirt and Nova; progress means the bytes left to
/// send in the round under way reached a new low (a stall detector: a guest that never
/// converges still makes progress within each round, and the completion timeout bounds it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Seconds allowed per GiB of guest memory (at least one GiB is counted); `None` for none.
    pub completion_per_gib_s: Option<f64>,
    /// Seconds allowed without a new low of the bytes left to send; `None` for none.
    pub progress_s: Option<f64>,
    /// What happens when one fires.
    pub action: TimeoutAction,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            completion_per_gib_s: Some(300.0),
            progress_s: Some(150.0),
            action: TimeoutAction::Abort,
        }
    }
}

impl Timeouts {
    /// No timeouts (the simulator, and tests).
    pub fn none() -> Timeouts {
        Timeouts {
            completion_per_gib_s: None,
            progress_s: None,
            action: TimeoutAction::Abort,
        }
    }

    /// The completion deadline for a guest of `memory_bytes`, in seconds.
    pub fn completion_s(&self, memory_bytes: f64) -> Option<f64> {
        self.completion_per_gib_s
            .map(|per| per * (memory_bytes / GIB).max(1.0))
    }
}

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum TimeoutKind {
    /// The whole pre-copy took longer than the per-GiB completion timeout.
    Completion,
    /// The bytes left to send reached no new low for the progress timeout.
    Progress,
}

/// A fired timeout: what and what to do.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct Overdue {
    pub kind: TimeoutKind,
    pub action: TimeoutAction,
    /// The limit that was passed (seconds).
    pub limit_s: f64,
}

impl std::fmt::Display for Overdue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            TimeoutKind::Completion => write!(
                f,
                "pre-copy did not finish within the completion timeout of {:.0} s",
                self.limit_s
            ),
            TimeoutKind::Progress => write!(
                f,
                "no progress (the bytes left to send reached no new low) for {:.0} s",
                self.limit_s
            ),
        }
    }
}
