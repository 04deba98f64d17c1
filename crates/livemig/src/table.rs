//! Human tables (comfy-table): rates in MiB/s, sizes in MiB/GiB, times in s.

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{CellAlignment, Table};
use livemig_policy::report::{MemoryAudit, MigrationReport, Summary};
use livemig_policy::Branch;
use livemig_sim::bench::{meets_changing_target, meets_targets, PolicyResult, ScenarioResult};
use livemig_workload::units::{fmt_bytes, fmt_duration, fmt_rate};

pub fn new_table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    for i in 1..header.len() {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

pub fn branch(b: Branch) -> &'static str {
    match b {
        Branch::Raise => "raise",
        Branch::KeepOrLower => "keep/lower",
        Branch::Constant => "constant",
        Branch::XenRaise => "xen raise",
        Branch::XenKeep => "xen keep",
        Branch::Plan => "plan",
        Branch::Stop => "stop",
    }
}

/// The per-round table.
pub fn rounds(r: &MigrationReport) -> Table {
    let mut t = new_table(&[
        "round",
        "cap",
        "sent",
        "duration",
        "dirty",
        "dirty rate",
        "factor",
        "average",
        "branch",
    ]);
    for x in &r.rounds {
        t.add_row(vec![
            x.round.to_string(),
            fmt_rate(x.cap_bytes_per_s),
            fmt_bytes(x.bytes_sent),
            fmt_duration(x.duration_s),
            fmt_bytes(x.dirty_bytes),
            fmt_rate(x.dirty_rate_bytes_per_s),
            format!("{:.3}", x.factor),
            format!("{:.3}", x.avg_factor),
            branch(x.decision.audit.branch).to_string(),
        ]);
    }
    t
}

/// The per-round table followed by the summary block, as every migrating command prints it.
pub fn report(r: &MigrationReport) -> String {
    format!("{}\n{}", rounds(r), summary(r))
}

/// The summary block.
pub fn summary(r: &MigrationReport) -> String {
    let s = &r.summary;
    let threshold = r.threshold.map_or("-".to_string(), |t| format!("{t:.4}"));
    format!(
        "policy {} | threshold T {} | {} after {} rounds ({})\n\
         total time {} | downtime {} | sent {} (stop-and-copy {})\n\
         peak cap {} | peak 100 ms on the wire {} | mean {}",
        r.policy,
        threshold,
        if s.converged {
            "converged"
        } else {
            "NOT converged"
        },
        s.rounds,
        s.stop_reason.label(),
        fmt_duration(s.total_time_s),
        fmt_duration(s.downtime_s),
        fmt_bytes(s.total_bytes),
        fmt_bytes(s.stop_copy_bytes),
        fmt_rate(s.peak_cap_bytes_per_s),
        fmt_rate(s.peak_bytes_per_s),
        fmt_rate(s.mean_bytes_per_s),
    ) + &pause_and_audit(s)
}

/// The pause's parts and the audit after the resume, as lines after the summary (empty when
/// the executor reports neither).
pub fn pause_and_audit(s: &Summary) -> String {
    let mut out = String::new();
    if let Some(b) = &s.downtime_breakdown {
        out.push_str(&format!(
            "\npause {}: stop-and-copy transfer {} | state {} | verification {} | resume {}",
            fmt_pause(s.downtime_s),
            fmt_pause(b.transfer_s),
            fmt_pause(b.state_s),
            fmt_pause(b.verify_s),
            fmt_pause(b.resume_s),
        ));
    }
    if let Some(a) = &s.audit {
        out.push('\n');
        out.push_str(&audit_line(a));
    }
    out
}

/// A pause or a part of one: tenths of milliseconds below a second.
pub fn fmt_pause(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1000.0)
    } else {
        fmt_duration(s)
    }
}

/// One line on an audit: passed, or the pages that differ (the first few).
pub fn audit_line(a: &MemoryAudit) -> String {
    if a.passed {
        return format!(
            "audit after the resume (not in the pause): all {} pages of the paused source match what the destination received ({})",
            a.pages,
            fmt_pause(a.time_s)
        );
    }
    const SHOWN: usize = 16;
    let mut pages: Vec<String> = a
        .differing_pages
        .iter()
        .take(SHOWN)
        .map(u64::to_string)
        .collect();
    if a.differing > pages.len() as u64 {
        pages.push("…".into());
    }
    format!(
        "AUDIT FAILED after the resume: {} of {} pages of the paused source differ from what the destination received and runs (pages {}); the source keeps its paused copy",
        a.differing,
        a.pages,
        if pages.is_empty() {
            "not named: the digests differ".to_string()
        } else {
            pages.join(", ")
        }
    )
}

fn ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |x| format!("{x:.2}x"))
}

/// One scenario's policies side by side, with the oracle as the last row.
pub fn bench_scenario(r: &ScenarioResult) -> Table {
    let mut t = new_table(&[
        "policy",
        "downtime",
        "total time",
        "total bytes",
        "peak cap",
        "mean bw",
        "rounds",
        "conv",
        "cap/oracle",
        "time/oracle",
        "down/oracle",
        "cap/heaviest",
    ]);
    for p in &r.results {
        let s = &p.report.summary;
        t.add_row(vec![
            p.policy.clone(),
            fmt_duration(s.downtime_s),
            fmt_duration(s.total_time_s),
            fmt_bytes(s.total_bytes),
            fmt_rate(s.peak_cap_bytes_per_s),
            fmt_rate(s.mean_bytes_per_s),
            s.rounds.to_string(),
            if s.converged { "yes" } else { "no" }.into(),
            ratio(p.peak_cap_ratio),
            ratio(p.total_time_ratio),
            ratio(p.downtime_ratio),
            ratio(p.peak_cap_vs_heaviest),
        ]);
    }
    if let Some(o) = &r.oracle {
        {
            let s = &o.report.summary;
            t.add_row(vec![
                "oracle".into(),
                fmt_duration(s.downtime_s),
                fmt_duration(s.total_time_s),
                fmt_bytes(s.total_bytes),
                fmt_rate(o.bandwidth_bytes_per_s),
                fmt_rate(s.mean_bytes_per_s),
                s.rounds.to_string(),
                "yes".into(),
                "1.00x".into(),
                "1.00x".into(),
                "1.00x".into(),
                String::new(),
            ]);
        }
    }
    t
}

/// Per policy (in the suite's order), its results on the scenarios that have an oracle.
fn feasible_by_policy(results: &[ScenarioResult]) -> Vec<(String, Vec<&PolicyResult>)> {
    let Some(first) = results.first() else {
        return Vec::new();
    };
    first
        .results
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let rows = results
                .iter()
                .filter(|r| r.oracle.is_some())
                .filter_map(|r| r.results.get(i))
                .collect();
            (p.policy.clone(), rows)
        })
        .collect()
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// Per policy over the suite: converged where the oracle converges, median ratios.
pub fn bench_summary(results: &[ScenarioResult]) -> Table {
    let mut t = new_table(&[
        "policy",
        "converged (of feasible)",
        "median cap/oracle",
        "max cap/oracle",
        "median time/oracle",
        "median down/oracle",
    ]);
    for (policy, rows) in feasible_by_policy(results) {
        let conv = rows.iter().filter(|x| x.report.summary.converged).count();
        let caps: Vec<f64> = rows.iter().filter_map(|x| x.peak_cap_ratio).collect();
        let max_cap = caps
            .iter()
            .copied()
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        t.add_row(vec![
            policy,
            format!("{conv}/{}", rows.len()),
            ratio(median(caps.clone())),
            ratio(max_cap),
            ratio(median(
                rows.iter().filter_map(|x| x.total_time_ratio).collect(),
            )),
            ratio(median(
                rows.iter().filter_map(|x| x.downtime_ratio).collect(),
            )),
        ]);
    }
    t
}

/// Issue 5's targets, per policy, over the scenarios where some constant bandwidth converges:
/// converged, peak cap <= 1.2x oracle, total time <= 1.5x, downtime <= oracle's + 10 %.
pub fn bench_targets(results: &[ScenarioResult]) -> Table {
    let mut t = new_table(&[
        "policy",
        "feasible",
        "converged",
        "cap <= 1.2x",
        "time <= 1.5x",
        "down <= +10%",
        "all four",
        "changing: conv, cap <= 1.3x heaviest",
    ]);
    for (policy, rows) in feasible_by_policy(results) {
        let count =
            |f: &dyn Fn(&PolicyResult) -> bool| rows.iter().filter(|x| f(x)).count().to_string();
        let changing: Vec<bool> = rows
            .iter()
            .filter_map(|x| meets_changing_target(x))
            .collect();
        t.add_row(vec![
            policy,
            rows.len().to_string(),
            count(&|x| x.report.summary.converged),
            count(&|x| x.peak_cap_ratio.is_some_and(|r| r <= 1.2)),
            count(&|x| x.total_time_ratio.is_some_and(|r| r <= 1.5)),
            count(&|x| x.downtime_ratio.is_none_or(|r| r <= 1.1)),
            count(&|x| meets_targets(x)),
            format!(
                "{}/{}",
                changing.iter().filter(|ok| **ok).count(),
                changing.len()
            ),
        ]);
    }
    t
}
