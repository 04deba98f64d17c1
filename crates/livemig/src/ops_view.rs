//! What the operator commands print for the RMS's hosts, VMs and migrations: human tables and
//! lines (comfy-table through [`crate::table`]) and the JSON that `--json` prints.

use comfy_table::Table;
use livemig_policy::decision::Action;
use livemig_policy::report::RoundRecord;
use livemig_rms::{AnswerKind, HostState, HostView, MigrationState, MigrationView, Vm, VmKind};
use livemig_workload::units::{fmt_bytes, fmt_duration, fmt_rate};

use crate::table::new_table;

/// The API's name of a migration state (`switching_over`).
pub fn state(s: MigrationState) -> &'static str {
    match s {
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

/// The API's name of a VM kind.
pub fn kind(k: VmKind) -> &'static str {
    match k {
        VmKind::Sim => "sim",
        VmKind::Qemu => "qemu",
    }
}

fn bytes(b: u64) -> String {
    fmt_bytes(b as f64)
}

/// `livemig host list`.
pub fn hosts(hosts: &[HostView]) -> Table {
    let mut t = new_table(&["host", "address", "state", "memory", "free", "vms"]);
    for h in hosts {
        t.add_row(vec![
            h.name.clone(),
            h.address.clone(),
            match h.state {
                HostState::Alive => "alive",
                HostState::Lost => "lost",
            }
            .to_string(),
            bytes(h.memory_total_bytes),
            bytes(h.memory_free_bytes),
            if h.vms.is_empty() {
                "-".into()
            } else {
                h.vms.join(", ")
            },
        ]);
    }
    t
}

/// `livemig vm list` (and `vm show`, one row).
pub fn vms(vms: &[Vm]) -> Table {
    let mut t = new_table(&["vm", "host", "kind", "memory", "workload"]);
    for v in vms {
        t.add_row(vec![
            v.name.clone(),
            v.host.clone(),
            kind(v.kind).to_string(),
            bytes(v.memory_bytes),
            v.workload.clone(),
        ]);
    }
    t
}

/// `livemig migration list`.
pub fn migrations(ms: &[MigrationView]) -> Table {
    let mut t = new_table(&[
        "id", "vm", "source", "target", "state", "policy", "rounds", "attempts",
    ]);
    for m in ms {
        t.add_row(vec![
            m.id.to_string(),
            m.vm.clone(),
            m.source.clone(),
            m.target.clone().unwrap_or_else(|| "-".into()),
            state(m.state).to_string(),
            m.policy.clone(),
            m.rounds.len().to_string(),
            m.attempts.len().to_string(),
        ]);
    }
    t
}

/// One placement attempt as a line: `host-b refused: not enough memory`.
pub fn attempt(a: &livemig_rms::Attempt) -> String {
    let answer = match a.answer {
        AnswerKind::Accepted => "accepted",
        AnswerKind::Refused => "refused",
    };
    if a.reason.is_empty() {
        format!("{} {answer}", a.host)
    } else {
        format!("{} {answer}: {}", a.host, a.reason)
    }
}

/// A round's decision in a few words: `raise -> 120.0 MiB/s`, `stop (remaining <= h)`.
pub fn decision(r: &RoundRecord) -> String {
    let branch = crate::table::branch(r.decision.audit.branch);
    match r.decision.action {
        Action::Continue {
            next_cap_bytes_per_s,
        } => format!("{branch} -> {}", fmt_rate(next_cap_bytes_per_s)),
        Action::StopAndCopy { reason } => format!("stop-and-copy ({})", reason.label()),
    }
}

/// One round as a line (what `--watch` prints as rounds arrive).
pub fn round_line(r: &RoundRecord) -> String {
    format!(
        "round {}: cap {}, sent {} in {}, dirty factor {:.3} (average {:.3}), {}",
        r.round,
        fmt_rate(r.cap_bytes_per_s),
        fmt_bytes(r.bytes_sent),
        fmt_duration(r.duration_s),
        r.factor,
        r.avg_factor,
        decision(r)
    )
}

/// `livemig migration show`: the header lines, attempts, the rounds table, the summary.
pub fn migration(m: &MigrationView) -> String {
    let mut out = format!(
        "migration {}: vm {} from {} to {}, {}, policy {}",
        m.id,
        m.vm,
        m.source,
        m.target.as_deref().unwrap_or("(not chosen yet)"),
        state(m.state),
        m.policy
    );
    if let Some(e) = &m.error {
        out.push_str(&format!("\nerror: {e}"));
    }
    for a in &m.attempts {
        out.push_str(&format!("\nasked {}", attempt(a)));
    }
    if !m.rounds.is_empty() {
        let mut t = new_table(&[
            "round", "cap", "sent", "duration", "factor", "average", "decision",
        ]);
        for r in &m.rounds {
            t.add_row(vec![
                r.round.to_string(),
                fmt_rate(r.cap_bytes_per_s),
                fmt_bytes(r.bytes_sent),
                fmt_duration(r.duration_s),
                format!("{:.3}", r.factor),
                format!("{:.3}", r.avg_factor),
                decision(r),
            ]);
        }
        out.push_str(&format!("\n{t}"));
    }
    if let Some(report) = &m.report {
        out.push_str(&format!("\n{}", crate::table::summary(report)));
    }
    out
}

/// JSON as `--json` prints it: pretty, as the other commands' `--json`.
pub fn json(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}
