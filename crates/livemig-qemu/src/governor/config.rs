//! What a governed migration is given (who decides, the settings) and how it can fail.

use std::path::PathBuf;
use std::time::Duration;

use livemig_policy::pilot::{Overdue, PilotError};
use livemig_policy::{DirtySample, Policy, Timeouts};

use super::{PRECOPY_DOWNTIME_MS, STOP_DOWNTIME_MS};
use crate::dirty::DirtyError;
use crate::qmp::QmpError;
use crate::saved::StateFileError;
use crate::types::MigrationStatus;

/// Who runs the migration.
#[derive(Debug)]
pub enum Control {
    /// A livemig policy decides each round's cap and the stop.
    Policy(Box<dyn Policy>),
    /// QEMU's own defaults; the governor only watches (the `qemu-native` row of the bench).
    Native,
}

/// Settings of one governed migration.
#[derive(Debug, Clone)]
pub struct GovernorConfig {
    /// Where the destination listens (`tcp:127.0.0.1:PORT`).
    pub uri: String,
    /// M, for the report (bytes).
    pub memory_bytes: f64,
    /// h, for the report's `converged` (bytes).
    pub stop_remaining: f64,
    /// The workload, when known, for the report.
    pub workload: Option<String>,
    /// `downtime-limit` during pre-copy (ms).
    pub precopy_downtime_ms: u64,
    /// `downtime-limit` set to force stop-and-copy (ms).
    pub stop_downtime_ms: u64,
    /// `query-migrate` polling period while no event comes (wire peak, progress, timeouts).
    pub poll: Duration,
    /// The per-GiB completion and no-progress timeouts, and what to do when one fires.
    pub timeouts: Timeouts,
    /// `calc-dirty-rate` period before the migration (whole seconds), for
    /// `Policy::observe_sample`; `None` skips it.
    pub sample: Option<Duration>,
    /// How long to wait for the destination to run after completion.
    pub dest_wait: Duration,
    /// Where to save the source's own settings before changing them (removed once they are
    /// put back); `None` keeps them in memory only.
    pub state_file: Option<PathBuf>,
    /// A dirty-log sample taken by someone else (an agent's, or a test's) offered to the
    /// policy instead of measuring one.
    pub given_sample: Option<DirtySample>,
    /// The policy may throttle the guest (its rescue): auto-converge is turned on before
    /// `migrate`, held off until the policy asks, then set to what it asks.
    pub rescue: bool,
    /// QEMU's own auto-converge with its default steps (20 % after two passes that dirtied
    /// more than half of what they sent, then +10 % per trigger, up to 99 %): the comparison
    /// the rescue is measured against. Ignored when `rescue` is set.
    pub auto_converge: bool,
}

impl GovernorConfig {
    /// Defaults for a migration to `uri`.
    pub fn new(uri: &str, memory_bytes: f64, stop_remaining: f64) -> GovernorConfig {
        GovernorConfig {
            uri: uri.to_string(),
            memory_bytes,
            stop_remaining,
            workload: None,
            precopy_downtime_ms: PRECOPY_DOWNTIME_MS,
            stop_downtime_ms: STOP_DOWNTIME_MS,
            poll: Duration::from_millis(100),
            timeouts: Timeouts::default(),
            sample: Some(Duration::from_secs(1)),
            dest_wait: Duration::from_secs(15),
            state_file: None,
            given_sample: None,
            rescue: false,
            auto_converge: false,
        }
    }
}

/// Where the source VM is, in words.
pub(super) fn source_is(running: &Option<bool>) -> &'static str {
    match running {
        Some(true) => "still running",
        Some(false) => "NOT running",
        None => "in an unknown state (query-status failed)",
    }
}

/// Why a governed migration failed.
#[derive(Debug, thiserror::Error)]
pub enum GovernorError {
    #[error("the QMP exchange with the source failed")]
    Source(#[source] QmpError),
    #[error("the QMP exchange with the destination failed")]
    Destination(#[source] QmpError),
    #[error("the destination is not waiting for an incoming migration (its status is `{0}`)")]
    NotIncoming(String),
    #[error("a migration is already under way on the source (status {0:?})")]
    Busy(MigrationStatus),
    #[error("the pre-migration dirty-rate sample failed")]
    Sample(#[source] DirtyError),
    #[error("the round sequence stopped at round {round}; the migration was cancelled")]
    Policy {
        round: u32,
        #[source]
        source: PilotError,
    },
    #[error("the migration ended as {status:?}: {desc}; the source VM is {}", source_is(.source_running))]
    Failed {
        status: MigrationStatus,
        desc: String,
        /// `None` when the source did not answer `query-status`.
        source_running: Option<bool>,
    },
    #[error("{overdue}; the migration was cancelled and the source VM is {}", source_is(.source_running))]
    TimedOut {
        overdue: Overdue,
        /// `None` when the source did not answer `query-status`.
        source_running: Option<bool>,
    },
    #[error("the migration was cancelled before the switch-over; the source VM is {}", source_is(.source_running))]
    Cancelled {
        /// `None` when the source did not answer `query-status`.
        source_running: Option<bool>,
    },
    #[error("cannot save the source's settings before changing them; nothing was changed")]
    StateFile(#[source] StateFileError),
}

impl GovernorError {
    /// Whether the source VM runs, where the error says.
    pub(super) fn source_running(&self) -> Option<bool> {
        match self {
            GovernorError::Failed { source_running, .. }
            | GovernorError::TimedOut { source_running, .. }
            | GovernorError::Cancelled { source_running } => *source_running,
            _ => None,
        }
    }
}

/// An error with its sources, `: `-joined, for [`Event::Failed`].
pub(super) struct ErrorChain<'a>(pub &'a GovernorError);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(self.0);
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
