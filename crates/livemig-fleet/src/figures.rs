//! What a drain produced: every VM's outcome and, per scheme, the figures compared.

use serde::{Deserialize, Serialize};

/// How one draining VM's migration ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// Not started or not ended (only while a run is under way).
    Waiting,
    /// It runs on its target.
    Migrated {
        /// Pre-copy reached h (else N rounds or the policy's own stop cut it).
        converged: bool,
        rounds: u32,
        downtime_s: f64,
        total_bytes: f64,
        /// Simulated seconds from the drain's start to its resume on the target.
        ended_at_s: f64,
    },
    /// It still runs on its source.
    Failed { reason: String },
}

/// One draining VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmOutcome {
    pub id: u64,
    pub source: String,
    /// Where it was placed; `None`: no host could hold it.
    pub target: Option<String>,
    pub memory_bytes: f64,
    /// Its workload class.
    pub class: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// One scheme's drain, summed up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainFigures {
    /// `budget`, `sequential`, `fixed-slots` or `unlimited`.
    pub scheme: String,
    /// Draining VMs (migrations submitted).
    pub migrations: u64,
    /// Migrations that ended with the VM on its target.
    pub migrated: u64,
    /// Migrations that did not (no host could hold the VM, or the migration failed).
    pub failed: u64,
    /// Migrated without converging: pre-copy was cut (N rounds, the policy's own stop)
    /// with more than h left, so the stop-and-copy sent more than h.
    pub not_converged: u64,
    /// Started by the drain although the allocator held them back (nothing else ran and
    /// their estimate cannot converge within what they could get); budget scheme only.
    pub started_outside_guarantee: u64,
    /// Simulated seconds until the last draining VM ended (0 when none ran).
    pub time_to_empty_s: f64,
    /// The highest 100 ms average of the aggregate migration rate on the shared uplink.
    pub peak_uplink_bytes_per_s: f64,
    /// `peak_uplink_bytes_per_s` / the budget U.
    pub peak_over_budget: f64,
    /// Over the migrated VMs (0 when none).
    pub downtime_max_s: f64,
    pub downtime_median_s: f64,
    /// Every byte sent, stop-and-copy and failed migrations included.
    pub total_bytes: f64,
    /// The most migrations running at once.
    pub max_concurrent: u64,
    /// Calls to the allocator.
    pub plans: u64,
}

/// The median of `v` (the mean of the middle two for an even count; 0 when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl DrainFigures {
    /// Sums up `outcomes`.
    #[allow(clippy::too_many_arguments)]
    pub fn collect(
        scheme: &str,
        outcomes: &[VmOutcome],
        time_to_empty_s: f64,
        peak_uplink_bytes_per_s: f64,
        budget_bytes_per_s: f64,
        sent_by_failed: f64,
        max_concurrent: u64,
        plans: u64,
        started_outside_guarantee: u64,
    ) -> DrainFigures {
        let mut downtimes = Vec::new();
        let (mut failed, mut not_converged, mut total) = (0, 0, sent_by_failed);
        for o in outcomes {
            match &o.outcome {
                Outcome::Migrated {
                    converged,
                    downtime_s,
                    total_bytes,
                    ..
                } => {
                    downtimes.push(*downtime_s);
                    total += total_bytes;
                    if !converged {
                        not_converged += 1;
                    }
                }
                Outcome::Failed { .. } | Outcome::Waiting => failed += 1,
            }
        }
        DrainFigures {
            scheme: scheme.to_string(),
            migrations: outcomes.len() as u64,
            migrated: downtimes.len() as u64,
            failed,
            not_converged,
            started_outside_guarantee,
            time_to_empty_s,
            peak_uplink_bytes_per_s,
            peak_over_budget: peak_uplink_bytes_per_s / budget_bytes_per_s,
            downtime_max_s: downtimes.iter().copied().fold(0.0, f64::max),
            downtime_median_s: median(downtimes),
            total_bytes: total,
            max_concurrent,
            plans,
        }
    }
}
