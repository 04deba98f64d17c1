//! The real-run oracle shared by `qemu oracle` and `bench-oracle`: the lowest constant cap
//! that converges for a guest, found by bisection over real migrations of fresh guests in the
//! same state, and the policies scored against it as the simulator scores them (peak cap and
//! total time over the oracle's).
//!
//! [`Bisection`] holds no I/O: the command runs the migration at the cap it asks for and
//! records what came of it.

use std::fmt::Write as _;

use livemig_policy::report::Summary;
use livemig_workload::units::{fmt_duration, fmt_rate};
use serde::Serialize;

/// One real run at a constant cap.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Probe {
    pub cap_bytes_per_s: f64,
    pub converged: bool,
    pub total_time_s: f64,
}

/// The search: one run at B_max, then `runs` geometric bisection steps in [B_min, B_max]
/// when B_max converged (none when it did not: no constant converges).
#[derive(Debug, Clone)]
pub(crate) struct Bisection {
    lo: f64,
    hi: f64,
    runs: u32,
    probes: Vec<Probe>,
    best: Option<(f64, f64)>,
}

impl Bisection {
    pub fn new(min_bandwidth: f64, max_bandwidth: f64, runs: u32) -> Bisection {
        Bisection {
            lo: min_bandwidth,
            hi: max_bandwidth,
            runs,
            probes: Vec::new(),
            best: None,
        }
    }

    /// The cap of the next run, `None` once the search is over.
    pub fn next(&self) -> Option<f64> {
        match self.probes.first() {
            None => Some(self.hi),
            Some(first) if !first.converged => None,
            Some(_) if self.probes.len() > self.runs as usize => None,
            Some(_) => Some((self.lo * self.hi).sqrt()),
        }
    }

    /// What the run at [`Bisection::next`]'s cap gave.
    pub fn record(&mut self, converged: bool, total_time_s: f64) {
        let Some(cap) = self.next() else { return };
        self.probes.push(Probe {
            cap_bytes_per_s: cap,
            converged,
            total_time_s,
        });
        if converged {
            self.hi = cap;
            self.best = Some((cap, total_time_s));
        } else {
            self.lo = cap;
        }
    }

    /// The lowest converging cap found and its run's total time.
    pub fn best(&self) -> Option<(f64, f64)> {
        self.best
    }

    pub fn probes(&self) -> &[Probe] {
        &self.probes
    }
}

/// A policy's run scored against the oracle.
#[derive(Debug, Serialize)]
pub(crate) struct Scored {
    pub policy: String,
    pub converged: bool,
    pub peak_cap_bytes_per_s: f64,
    pub total_time_s: f64,
    pub downtime_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_throttle: Option<f64>,
    pub cap_ratio: Option<f64>,
    pub time_ratio: Option<f64>,
    /// The guest after the hand-over (QEMU: its heartbeat; the engine: its memory audit).
    pub check: String,
    /// How much the migration slowed the guest (1 - its progress during / before), when
    /// measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slowdown: Option<f64>,
    /// The guest's work lost to it, seconds, when measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_s: Option<f64>,
}

impl Scored {
    pub fn new(policy: &str, s: &Summary, best: Option<(f64, f64)>, check: String) -> Scored {
        let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        Scored {
            policy: policy.to_string(),
            converged: s.converged,
            peak_cap_bytes_per_s: s.peak_cap_bytes_per_s,
            total_time_s: s.total_time_s,
            downtime_s: s.downtime_s,
            max_throttle: s.max_throttle,
            cap_ratio: best.and_then(|(b, _)| ratio(s.peak_cap_bytes_per_s, b)),
            time_ratio: best.and_then(|(_, t)| ratio(s.total_time_s, t)),
            check,
            slowdown: None,
            lost_s: None,
        }
    }

    /// With the guest's slowdown and work lost (seconds).
    pub fn slowed(self, slowdown: f64, lost_s: f64) -> Scored {
        Scored {
            slowdown: Some(slowdown),
            lost_s: Some(lost_s),
            ..self
        }
    }
}

/// One workload's oracle and scores.
#[derive(Debug, Serialize)]
pub(crate) struct OracleResult {
    pub workload: String,
    pub spec: String,
    /// The lowest converging cap found, and its run's total time; `None` when not even B_max
    /// converges.
    pub oracle_bytes_per_s: Option<f64>,
    pub oracle_total_time_s: Option<f64>,
    pub probes: Vec<Probe>,
    pub scored: Vec<Scored>,
}

impl OracleResult {
    pub fn new(workload: &str, spec: &str, search: &Bisection, scored: Vec<Scored>) -> Self {
        OracleResult {
            workload: workload.to_string(),
            spec: spec.to_string(),
            oracle_bytes_per_s: search.best().map(|b| b.0),
            oracle_total_time_s: search.best().map(|b| b.1),
            probes: search.probes().to_vec(),
            scored,
        }
    }
}

/// The human table; `check` names the last column.
pub(crate) fn table(results: &[OracleResult], check: &str) -> String {
    let mut s = String::new();
    for r in results {
        let _ = writeln!(s, "\n## {}: `{}`", r.workload, r.spec);
        match (r.oracle_bytes_per_s, r.oracle_total_time_s) {
            (Some(b), Some(t)) => {
                let _ = writeln!(
                    s,
                    "oracle: {} (total {}) after {} real runs",
                    fmt_rate(b),
                    fmt_duration(t),
                    r.probes.len()
                );
            }
            _ => {
                let _ = writeln!(s, "oracle: no constant cap up to B_max converges");
            }
        }
        let _ = writeln!(
            s,
            "{:<18} {:>5} {:>13} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {check}",
            "policy",
            "conv",
            "peak cap",
            "total",
            "downtime",
            "throttle",
            "cap/orc",
            "time/orc",
            "slowdown",
            "lost"
        );
        for x in &r.scored {
            let ratio = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}x"));
            let _ = writeln!(
                s,
                "{:<18} {:>5} {:>13} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {}",
                x.policy,
                if x.converged { "yes" } else { "no" },
                fmt_rate(x.peak_cap_bytes_per_s),
                fmt_duration(x.total_time_s),
                fmt_duration(x.downtime_s),
                x.max_throttle
                    .map_or("-".to_string(), |t| format!("{:.0} %", 100.0 * t)),
                ratio(x.cap_ratio),
                ratio(x.time_ratio),
                x.slowdown
                    .map_or("-".to_string(), |v| format!("{:.0} %", 100.0 * v)),
                x.lost_s.map_or("-".to_string(), fmt_duration),
                x.check
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the search against a guest that converges at and above `lowest`.
    fn search(lowest: f64, runs: u32) -> Bisection {
        let mut b = Bisection::new(10.0, 1000.0, runs);
        while let Some(cap) = b.next() {
            b.record(cap >= lowest, 1000.0 / cap);
        }
        b
    }

    #[test]
    fn bisection_closes_in_on_the_lowest_converging_cap() {
        let b = search(123.0, 12);
        assert_eq!(b.probes().len(), 13, "B_max, then 12 steps");
        assert_eq!(b.probes()[0].cap_bytes_per_s, 1000.0);
        let (best, time) = b.best().expect("converges");
        assert!((123.0..123.0 * 1.01).contains(&best), "{best}");
        assert_eq!(time, 1000.0 / best);
        // Every run below the best failed, every run at or above it converged.
        for p in b.probes() {
            assert_eq!(p.converged, p.cap_bytes_per_s >= 123.0, "{p:?}");
        }
    }

    #[test]
    fn no_constant_converges_when_b_max_does_not() {
        let b = search(2000.0, 5);
        assert_eq!(b.probes().len(), 1, "only the run at B_max");
        assert!(b.best().is_none());
        assert!(b.next().is_none());
    }

    #[test]
    fn zero_steps_is_the_run_at_b_max_alone() {
        let b = search(50.0, 0);
        assert_eq!(b.probes().len(), 1);
        assert_eq!(b.best(), Some((1000.0, 1.0)));
    }
}
