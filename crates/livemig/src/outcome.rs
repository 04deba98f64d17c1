//! Where the guest is after a real migration, the exit code that says so, the JSON that says
//! so, and output that can never change either (a closed stdout or a full disk is ignored once
//! a migration has ended).
//!
//! Exit codes: 0 migrated (the guest runs on the destination), 1 failed (the guest runs on the
//! source; nothing is kept on the destination), 2 usage error (nothing was started), 3 unknown
//! (this side does not run the guest and keeps an intact paused copy; whether the other side
//! runs it is not known here; `livemig resolve` settles it), 6 migrated but the audit failed
//! (the guest runs on the destination, whose copy differs from the paused source's on the
//! pages the audit names; the source keeps its paused copy in a hold file).
//!
//! Also [`show_continuation`], the line that shows a received guest goes on running.

use std::time::Duration;

use livemig_engine::{Guest, Received};
use livemig_policy::report::MigrationReport;
use livemig_workload::units;
use serde::Serialize;

/// Shows that a received guest continues: its self-check counter at the hand-over and after
/// running (it already runs: the source committed).
pub fn show_continuation(r: &Received, run_for: Duration) -> String {
    let before = r.self_check_at_handover;
    r.guest.resume();
    std::thread::sleep(run_for);
    let (after, _) = r.guest.self_check();
    format!(
        "guest runs on the destination: self-check counter {before} at hand-over, {after} after {} ({})",
        units::fmt_duration(run_for.as_secs_f64()),
        if after > before || run_for.is_zero() {
            "it continues"
        } else {
            "no writes: idle workload"
        }
    )
}

/// Where the guest ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The guest runs on the destination; the source's copy is gone.
    Migrated,
    /// The guest runs on the source; the destination keeps nothing.
    FailedSourceRunning,
    /// This side does not run the guest and keeps an intact paused copy; the other side's
    /// state is not known here.
    Unknown,
    /// The guest runs on the destination, but the source's audit after the resume found
    /// pages of its paused copy that differ from what the destination received (a write the
    /// dirty log missed); the source keeps its paused copy.
    MigratedAuditFailed,
}

impl Outcome {
    /// The name used in JSON (`migrated`, `failed_source_running`, `unknown`).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Migrated => "migrated",
            Outcome::FailedSourceRunning => "failed_source_running",
            Outcome::Unknown => "unknown",
            Outcome::MigratedAuditFailed => "migrated_audit_failed",
        }
    }

    /// The process exit code of this outcome.
    pub fn code(self) -> i32 {
        match self {
            Outcome::Migrated => 0,
            Outcome::FailedSourceRunning => 1,
            Outcome::Unknown => 3,
            Outcome::MigratedAuditFailed => AUDIT_FAILED,
        }
    }
}

/// Exit code: migrated, but the audit after the resume found pages that differ (no other
/// command uses 6: the `--watch` codes stop at 5).
pub const AUDIT_FAILED: i32 = 6;

/// A migration that ended other than migrated: the message for stderr and its exit code.
#[derive(Debug)]
pub struct Ended {
    pub outcome: Outcome,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.outcome {
            Outcome::Migrated => "migrated",
            Outcome::FailedSourceRunning => "the guest runs on the source",
            Outcome::Unknown => {
                "outcome unknown: the guest does not run here; this side keeps a paused copy"
            }
            Outcome::MigratedAuditFailed => {
                "migrated, but the audit failed: the destination runs a copy that differs from the paused source's"
            }
        })
    }
}

impl std::error::Error for Ended {}

/// An error that ends a command with `outcome`'s exit code; `context` goes first on the line.
pub fn ended(outcome: Outcome, context: String) -> anyhow::Error {
    anyhow::Error::new(Ended { outcome }).context(context)
}

/// An error that ends a command with its own exit code (the operator commands' `--watch`,
/// whose codes `watch.rs` lists); like [`Ended`], it is not shown on the error line.
#[derive(Debug)]
pub struct ExitWith {
    pub code: i32,
}

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.code)
    }
}

impl std::error::Error for ExitWith {}

/// An error that ends a command with `code`; `context` is the error line.
pub fn exit_with(code: i32, context: String) -> anyhow::Error {
    anyhow::Error::new(ExitWith { code }).context(context)
}

/// Whether `e` is only a marker of the exit code ([`Ended`], [`ExitWith`]), not a message.
pub fn is_exit_marker(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<Ended>().is_some() || e.downcast_ref::<ExitWith>().is_some()
}

/// The exit code of a command's error: the outcome's, the one it carries, or 2 (usage; nothing
/// started).
pub fn exit_code(e: &anyhow::Error) -> i32 {
    if let Some(x) = e.downcast_ref::<Ended>() {
        return x.outcome.code();
    }
    e.downcast_ref::<ExitWith>().map_or(2, |x| x.code)
}

/// Writes `text` and a newline to stdout; failures are ignored (a migration's outcome never
/// depends on whether anyone reads its report).
pub fn say(text: &str) {
    let _ = crate::out::emit_line(text);
}

/// Writes a line to stderr, failures ignored.
pub fn note(text: &str) {
    crate::out::note(text);
}

/// What was checked at the hand-over, and how.
#[derive(Debug, Clone, Serialize)]
pub struct Handover {
    /// What the destination verified: "memory digest (xxh3-64 of every page) and state".
    pub verified: &'static str,
    /// The destination confirmed a verified copy (authenticated `Confirm{ok}`).
    pub destination_confirmed: bool,
    /// The source committed (sent `Commit`).
    pub source_committed: bool,
    /// The destination said it runs the guest (authenticated `Running`, directly or when the
    /// source reconnected to settle the hand-over).
    pub destination_running: bool,
    /// Where the guest runs now: "destination", "source" or "unknown".
    pub guest_runs_on: &'static str,
}

impl Handover {
    /// The hand-over of a migrated guest.
    pub fn migrated() -> Handover {
        Handover {
            verified: "xxh3-64 of every page (protocol 4: per-page hashes of what was sent and stored, compared by a combined digest; 3: one digest of all memory) and guest state, on the destination",
            destination_confirmed: true,
            source_committed: true,
            destination_running: true,
            guest_runs_on: "destination",
        }
    }

    /// The hand-over of a guest the engine migrated, as its report tells it: from protocol 4
    /// (the report carries an audit) the per-page hashes and the audit after the resume.
    pub fn engine(r: &MigrationReport) -> Handover {
        match &r.summary.audit {
            None => Handover::migrated(),
            Some(_) => Handover {
                verified: "per-page xxh3 hashes of what the source sent and the destination stored, and guest state, on the destination; every page of the paused source audited against them after the resume",
                ..Handover::migrated()
            },
        }
    }
}

impl Handover {
    /// The hand-over of a completed QEMU migration: QEMU switched over; the destination VM's
    /// state as read over its QMP socket (`None`: not asked).
    pub fn qemu(destination_running: Option<bool>) -> (Outcome, Handover) {
        let (outcome, verified, runs_on) = match destination_running {
            Some(true) => (
                Outcome::Migrated,
                "QEMU reported `completed` on the source and the destination VM reported `running` over QMP",
                "destination",
            ),
            Some(false) => (
                Outcome::Unknown,
                "QEMU reported `completed` on the source, but the destination VM did not report `running`",
                "unknown",
            ),
            None => (
                Outcome::Migrated,
                "QEMU reported `completed` on the source (no destination QMP socket: the destination was not asked)",
                "destination",
            ),
        };
        (
            outcome,
            Handover {
                verified,
                destination_confirmed: destination_running == Some(true),
                source_committed: true,
                destination_running: destination_running == Some(true),
                guest_runs_on: runs_on,
            },
        )
    }
}

/// The `--json` result of a migrated guest: the report with `outcome` and `handover`.
pub fn json_result(report: &MigrationReport, outcome: Outcome, handover: &Handover) -> String {
    json_with(report, outcome, handover)
}

/// Any serialisable result with `outcome` and `handover` added at its top level.
pub fn json_with<T: Serialize>(result: &T, outcome: Outcome, handover: &Handover) -> String {
    let mut v = serde_json::to_value(result).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(m) = &mut v {
        m.insert(
            "outcome".into(),
            serde_json::to_value(outcome).unwrap_or_default(),
        );
        m.insert(
            "handover".into(),
            serde_json::to_value(handover).unwrap_or_default(),
        );
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// The `--json` line of a migration that did not hand over.
pub fn json_failure(outcome: Outcome, error: &str, hold_file: Option<&str>) -> String {
    serde_json::json!({
        "outcome": outcome,
        "error": error,
        "hold_file": hold_file,
        "handover": {
            "guest_runs_on": match outcome {
                Outcome::Migrated | Outcome::MigratedAuditFailed => "destination",
                Outcome::FailedSourceRunning => "source",
                Outcome::Unknown => "unknown",
            }
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_outcome_and_usage_is_2() {
        assert_eq!(exit_code(&ended(Outcome::Unknown, "x".into())), 3);
        assert_eq!(
            exit_code(&ended(Outcome::MigratedAuditFailed, "x".into())),
            6
        );
        assert_eq!(
            exit_code(&ended(Outcome::FailedSourceRunning, "x".into()).context("more")),
            1
        );
        assert_eq!(exit_code(&anyhow::anyhow!("--memory: bad size")), 2);
    }
}
