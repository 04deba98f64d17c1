//! The one result shape every executor (simulator, engine, QEMU governor) serialises to.

use serde::{Deserialize, Serialize};

use crate::decision::{Decision, StopReason};
use crate::stats::RoundStats;

/// Which executor ran a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Executor {
    /// The simulator (`livemig-sim`).
    Sim,
    /// The data path over TCP (`livemig-engine`).
    Engine,
    /// A real QEMU migration under the governor (`livemig-qemu`).
    Qemu,
}

impl Executor {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Executor::Sim => "sim",
            Executor::Engine => "engine",
            Executor::Qemu => "qemu",
        }
    }
}

/// One pre-copy round as reported (round 1 is the full copy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct RoundRecord {
    pub round: u32,
    /// The cap the round ran under: the policy's wish bounded by the grant (time-weighted when
    /// the grant moved during the round). The policy's next decision starts from it.
    pub cap_bytes_per_s: f64,
    /// The cap the policy asked for (equal to `cap_bytes_per_s` unless a grant bounded it).
    #[serde(default)]
    pub wish_bytes_per_s: f64,
    pub bytes_sent: f64,
    pub duration_s: f64,
    pub effective_bytes_per_s: f64,
    pub dirty_bytes: f64,
    pub dirty_rate_bytes_per_s: f64,
    pub factor: f64,
    pub avg_factor: f64,
    /// The policy's decision after this round, with its audit record.
    pub decision: Decision,
    /// The policy's mid-round raises of the cap during this round, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raises: Vec<MidRound>,
    /// The mid-round checks whose observation the policy kept or acted on, in order (a
    /// replay offers exactly these).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeSeen>,
    /// The share of the guest's CPU the executor measured taken away during the round, when it
    /// reports one (QEMU's `cpu-throttle-percentage`, which lags what the policy asked); the
    /// policy fitted the round with it, and a replay offers it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_applied: Option<f64>,
}

/// What one mid-round check saw.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct ProbeSeen {
    /// Seconds into the round.
    pub elapsed_s: f64,
    /// Bytes sent in the round so far.
    pub bytes_sent: f64,
    /// Distinct bytes dirtied since the round began, where the executor sees them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirtied_bytes: Option<f64>,
    /// The grant the executor was under when the check ran (absent: none), so that a replay
    /// sees the same cap in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_bytes_per_s: Option<f64>,
}

/// A mid-round raise of the cap: the policy's [`crate::Raise`] and when in the round it came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct MidRound {
    /// Seconds into the round.
    pub elapsed_s: f64,
    /// What the check saw: bytes sent in the round so far, and distinct bytes dirtied since
    /// it began where the executor sees them.
    pub bytes_sent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirtied_bytes: Option<f64>,
    /// The cap the policy asked for from then on.
    pub wish_bytes_per_s: f64,
    /// The cap in force from then on (the wish bounded by the grant).
    #[serde(default)]
    pub cap_bytes_per_s: f64,
    /// Why.
    pub reason: String,
}

/// The whole migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct Summary {
    /// Remaining dirty bytes at the end of pre-copy were at most h.
    pub converged: bool,
    pub stop_reason: StopReason,
    /// Pre-copy rounds run.
    pub rounds: u32,
    /// From the start of round 1 to the resume on the destination.
    pub total_time_s: f64,
    /// From the pause on the source to the resume on the destination.
    pub downtime_s: f64,
    /// Every byte of memory sent, stop-and-copy included.
    pub total_bytes: f64,
    /// Memory bytes sent during stop-and-copy.
    pub stop_copy_bytes: f64,
    /// CPU/device state bytes sent during stop-and-copy.
    pub state_bytes: f64,
    /// Highest 100 ms window on the wire (stop-and-copy included).
    pub peak_bytes_per_s: f64,
    /// Highest pre-copy round cap.
    pub peak_cap_bytes_per_s: f64,
    /// total_bytes / total_time_s.
    pub mean_bytes_per_s: f64,
    /// The first round after which the policy's estimate showed that not even B_max converges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infeasible_from_round: Option<u32>,
    /// The rescue: the largest share of the guest's CPU the policy took away in any round
    /// (see each round's `throttle`); absent when it never throttled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_throttle: Option<f64>,
    /// Where the pause went (the engine; absent from other executors and older reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_breakdown: Option<DowntimeBreakdown>,
    /// The source's check of its paused memory against what the destination received, after
    /// the destination resumed (the engine, protocol 4 on; absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<MemoryAudit>,
}

/// Where a pause went, in seconds: the parts add up to `downtime_s` (the rest, a few
/// microseconds of bookkeeping between them, is not listed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct DowntimeBreakdown {
    /// Pausing the guest, reading the last dirty log and putting the stop-and-copy pages on
    /// the wire: the stop-and-copy transfer.
    pub transfer_s: f64,
    /// The device state and the digest that goes with it, sent.
    pub state_s: f64,
    /// Waiting for the destination's verdict: its check, its rebuild of the guest and the
    /// round trip.
    pub verify_s: f64,
    /// From `Commit` to the destination's word that the guest runs.
    pub resume_s: f64,
}

impl DowntimeBreakdown {
    /// The sum of the parts.
    pub fn total_s(&self) -> f64 {
        self.transfer_s + self.state_s + self.verify_s + self.resume_s
    }
}

/// Most differing pages a [`MemoryAudit`] lists (the count is always whole).
pub const AUDIT_MAX_LISTED: usize = 1024;

/// The check of every page of the source's paused copy against the destination's hashes,
/// made after the destination resumed and before the source lets its copy go. A page that
/// differs was written on the source without reaching the dirty log: the destination runs a
/// stale copy of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct MemoryAudit {
    /// Every page matched.
    pub passed: bool,
    /// Pages checked (all of the guest's).
    pub pages: u64,
    /// Pages that differ.
    pub differing: u64,
    /// The differing pages' indexes, in increasing order (at most [`AUDIT_MAX_LISTED`]).
    pub differing_pages: Vec<u64>,
    /// How long the audit took, seconds (after the resume: not part of the pause).
    pub time_s: f64,
}

/// A migration's result: `{policy, memory_bytes, threshold, rounds, summary}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct MigrationReport {
    pub policy: String,
    pub memory_bytes: f64,
    pub threshold: Option<f64>,
    /// h, for reference.
    pub stop_remaining_bytes: f64,
    /// Which executor produced it (`sim`, `engine`, `qemu`).
    pub executor: String,
    /// The workload spec, when the executor knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    pub rounds: Vec<RoundRecord>,
    pub summary: Summary,
}

/// What the stop-and-copy phase measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StopCopy {
    /// Memory bytes sent while paused.
    pub bytes: f64,
    /// CPU/device state bytes sent while paused.
    pub state_bytes: f64,
    /// Pause to resume, seconds.
    pub downtime_s: f64,
}

/// Collects rounds and decisions, then produces the report.
#[derive(Debug, Clone)]
pub struct ReportBuilder {
    report: MigrationReport,
    precopy_time_s: f64,
    stop_reason: Option<StopReason>,
}

impl ReportBuilder {
    /// Starts a report.
    pub fn new(
        policy: &str,
        executor: &str,
        memory_bytes: f64,
        stop_remaining_bytes: f64,
        threshold: Option<f64>,
    ) -> ReportBuilder {
        ReportBuilder {
            report: MigrationReport {
                policy: policy.to_string(),
                memory_bytes,
                threshold,
                stop_remaining_bytes,
                executor: executor.to_string(),
                workload: None,
                rounds: Vec::new(),
                summary: Summary {
                    converged: false,
                    stop_reason: StopReason::RoundLimit,
                    rounds: 0,
                    total_time_s: 0.0,
                    downtime_s: 0.0,
                    total_bytes: 0.0,
                    stop_copy_bytes: 0.0,
                    state_bytes: 0.0,
                    peak_bytes_per_s: 0.0,
                    peak_cap_bytes_per_s: 0.0,
                    mean_bytes_per_s: 0.0,
                    infeasible_from_round: None,
                    max_throttle: None,
                    downtime_breakdown: None,
                    audit: None,
                },
            },
            precopy_time_s: 0.0,
            stop_reason: None,
        }
    }

    /// Records the workload spec.
    pub fn workload(mut self, spec: &str) -> ReportBuilder {
        self.report.workload = Some(spec.to_string());
        self
    }

    /// Records a finished round and the policy's decision on it (no grant: the policy's wish
    /// is the cap the round ran under).
    pub fn round(&mut self, s: &RoundStats, decision: &Decision) {
        self.round_wished(s, s.cap_bytes_per_s, decision, Vec::new(), Vec::new());
    }

    /// Records a finished round that ran under `s.cap_bytes_per_s` where the policy wished
    /// `wish`, and the policy's decision on it.
    pub fn round_wished(
        &mut self,
        s: &RoundStats,
        wish: f64,
        decision: &Decision,
        raises: Vec<MidRound>,
        probes: Vec<ProbeSeen>,
    ) {
        self.precopy_time_s += s.duration_s;
        if let Some(r) = decision.stop_reason() {
            self.stop_reason = Some(r);
        }
        self.report.rounds.push(RoundRecord {
            round: s.round,
            cap_bytes_per_s: s.cap_bytes_per_s,
            wish_bytes_per_s: wish,
            bytes_sent: s.bytes_sent,
            duration_s: s.duration_s,
            effective_bytes_per_s: s.effective_bytes_per_s(),
            dirty_bytes: s.dirty_bytes,
            dirty_rate_bytes_per_s: s.dirty_rate_bytes_per_s(),
            factor: s.factor(),
            avg_factor: decision.audit.avg_factor,
            decision: decision.clone(),
            raises,
            probes,
            throttle_applied: None,
        });
    }

    /// Keeps the throttle the executor measured during the last round recorded.
    pub fn set_throttle_applied(&mut self, share: Option<f64>) {
        if let Some(r) = self.report.rounds.last_mut() {
            r.throttle_applied = share;
        }
    }

    /// The last round recorded, for executors that show rounds live.
    pub fn last_round(&self) -> Option<&RoundRecord> {
        self.report.rounds.last()
    }

    /// Sets why pre-copy ended when no recorded decision says it (an executor's forced stop).
    pub fn set_stop_reason(&mut self, reason: StopReason) {
        self.stop_reason = Some(reason);
    }

    /// The rounds recorded so far.
    pub fn report_rounds(&self) -> &[RoundRecord] {
        &self.report.rounds
    }

    /// Pre-copy time so far.
    pub fn precopy_time_s(&self) -> f64 {
        self.precopy_time_s
    }

    /// Closes the report with the stop-and-copy figures and the wire peak measured by the
    /// executor.
    pub fn finish(mut self, stop: StopCopy, peak_wire_bytes_per_s: f64) -> MigrationReport {
        let r = &mut self.report;
        let remaining = r.rounds.last().map_or(r.memory_bytes, |x| x.dirty_bytes);
        let precopy_bytes: f64 = r.rounds.iter().map(|x| x.bytes_sent).sum();
        let s = &mut r.summary;
        s.converged = remaining <= r.stop_remaining_bytes;
        s.stop_reason = self.stop_reason.unwrap_or(StopReason::RoundLimit);
        s.rounds = r.rounds.len() as u32;
        s.downtime_s = stop.downtime_s;
        s.total_time_s = self.precopy_time_s + stop.downtime_s;
        s.stop_copy_bytes = stop.bytes;
        s.state_bytes = stop.state_bytes;
        s.total_bytes = precopy_bytes + stop.bytes;
        // The rounds' caps, and the caps mid-round raises put in force (a raise late in a round
        // hardly moves its time-weighted cap).
        s.peak_cap_bytes_per_s = r
            .rounds
            .iter()
            .flat_map(|x| {
                std::iter::once(x.cap_bytes_per_s).chain(x.raises.iter().map(|m| m.cap_bytes_per_s))
            })
            .fold(0.0, f64::max);
        s.peak_bytes_per_s = peak_wire_bytes_per_s;
        s.infeasible_from_round = r
            .rounds
            .iter()
            .find(|x| x.decision.audit.infeasible)
            .map(|x| x.round);
        s.max_throttle = r
            .rounds
            .iter()
            .filter_map(|x| x.decision.audit.throttle)
            .reduce(f64::max);
        s.mean_bytes_per_s = if s.total_time_s > 0.0 {
            s.total_bytes / s.total_time_s
        } else {
            0.0
        };
        self.report
    }
}

/// Highest average rate over any window of `window_s` seconds on a timeline of
/// constant-rate segments `(start_s, duration_s, bytes)`, laid end to end or with gaps.
/// For piecewise-constant rates the maximum is reached with a window edge on a segment edge.
pub fn peak_window(segments: &[(f64, f64, f64)], window_s: f64) -> f64 {
    let bytes_in = |lo: f64, hi: f64| -> f64 {
        segments
            .iter()
            .map(|&(start, dur, bytes)| {
                if dur <= 0.0 {
                    // An instantaneous burst counts whole if inside the window.
                    return if start >= lo && start < hi {
                        bytes
                    } else {
                        0.0
                    };
                }
                let overlap = (hi.min(start + dur) - lo.max(start)).max(0.0);
                bytes * overlap / dur
            })
            .sum()
    };
    let mut best: f64 = 0.0;
    for &(start, dur, _) in segments {
        for edge in [start, start + dur] {
            best = best.max(bytes_in(edge, edge + window_s));
            best = best.max(bytes_in(edge - window_s, edge));
        }
    }
    best / window_s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_window_of_a_short_burst_after_a_slow_segment() {
        // 10 s at 100 B/s, then 50 bytes in 0.05 s.
        let segs = [(0.0, 10.0, 1000.0), (10.0, 0.05, 50.0)];
        let p = peak_window(&segs, 0.1);
        // Best window: last 0.05 s of the slow part (5 bytes) + the burst (50): 550 B/s.
        assert!((p - 550.0).abs() < 1e-6, "{p}");
    }

    #[test]
    fn peak_window_of_one_long_segment_is_its_rate() {
        let p = peak_window(&[(0.0, 100.0, 1e6)], 0.1);
        assert!((p - 1e4).abs() < 1e-6);
    }
}
