//! Every policy over a suite of scenarios, side by side, with ratios to the oracle.

use livemig_policy::report::MigrationReport;
use livemig_policy::PolicyKind;
use serde::Serialize;

use crate::oracle::{self, Oracle};
use crate::run::{simulate, SimError};
use crate::scenario::Scenario;

/// The default suite shipped in `scenarios/suite.toml`.
pub const DEFAULT_SUITE: &str = include_str!("../../../scenarios/suite.toml");

/// One policy on one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    pub policy: String,
    /// Peak round cap / oracle bandwidth.
    pub peak_cap_ratio: Option<f64>,
    /// Peak round cap / the larger of the oracle's bandwidth and that of the workload held at
    /// its heaviest phase (only for workloads whose rate changes): a causal policy cannot know
    /// that a calm is coming, nor finish ahead of a burst it cannot see.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_cap_vs_heaviest: Option<f64>,
    /// Total time / oracle's total time.
    pub total_time_ratio: Option<f64>,
    /// Downtime / oracle's downtime.
    pub downtime_ratio: Option<f64>,
    pub report: MigrationReport,
}

/// Every policy on one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub scenario: String,
    pub description: String,
    pub workload: String,
    pub memory_bytes: f64,
    pub oracle: Option<Oracle>,
    /// The oracle of the workload held at its heaviest phase, for workloads whose rate
    /// changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heaviest: Option<Oracle>,
    pub results: Vec<PolicyResult>,
}

/// Issue 5's targets on a scenario with an oracle: converged, peak cap <= 1.2x the oracle's
/// bandwidth, total time <= 1.5x its total time, downtime <= its downtime + 10 %.
pub fn meets_targets(r: &PolicyResult) -> bool {
    r.report.summary.converged
        && r.peak_cap_ratio.is_some_and(|x| x <= 1.2)
        && r.total_time_ratio.is_some_and(|x| x <= 1.5)
        && r.downtime_ratio.is_none_or(|x| x <= 1.1)
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// The changing-workload target: converged, and peak cap <= 1.3x the larger of the oracle and
/// the oracle of the heaviest phase held constant (`None` for a constant workload).
pub fn meets_changing_target(r: &PolicyResult) -> Option<bool> {
    r.peak_cap_vs_heaviest
        .map(|x| r.report.summary.converged && x <= 1.3)
}

/// The oracle of `s` with its workload held at its heaviest phase, when its rate changes.
fn heaviest_oracle(s: &Scenario) -> Result<Option<Oracle>, SimError> {
    let Some(workload) = s.workload.held_at_peak() else {
        return Ok(None);
    };
    let held = Scenario {
        workload,
        ..s.clone()
    };
    oracle::find(&held)
}

/// Runs `policies` and the oracle on one scenario.
pub fn run_scenario(s: &Scenario, policies: &[PolicyKind]) -> Result<ScenarioResult, SimError> {
    let oracle = oracle::find(s)?;
    let heaviest = heaviest_oracle(s)?;
    // The bar for a changing workload: the larger of the two oracles' bandwidths (a scenario
    // that no constant converges has none).
    let bar = match (&oracle, &heaviest) {
        (Some(o), Some(h)) => Some(o.bandwidth_bytes_per_s.max(h.bandwidth_bytes_per_s)),
        (Some(o), None) if s.workload.held_at_peak().is_some() => Some(o.bandwidth_bytes_per_s),
        _ => None,
    };
    let mut results = Vec::new();
    for &kind in policies {
        // The scenario was validated when resolved, so building cannot fail on the config.
        let mut policy = match kind.build(s.cfg.clone()) {
            Ok(p) => p,
            Err(_) => continue,
        };
        let report = simulate(policy.as_mut(), s.setup())?;
        let (cap, time, down) = match &oracle {
            Some(o) => (
                ratio(report.summary.peak_cap_bytes_per_s, o.bandwidth_bytes_per_s),
                ratio(report.summary.total_time_s, o.report.summary.total_time_s),
                ratio(report.summary.downtime_s, o.report.summary.downtime_s),
            ),
            None => (None, None, None),
        };
        results.push(PolicyResult {
            policy: kind.name().to_string(),
            peak_cap_ratio: cap,
            peak_cap_vs_heaviest: bar.and_then(|b| ratio(report.summary.peak_cap_bytes_per_s, b)),
            total_time_ratio: time,
            downtime_ratio: down,
            report,
        });
    }
    Ok(ScenarioResult {
        scenario: s.name.clone(),
        description: s.description.clone(),
        workload: s.workload.spec().to_string(),
        memory_bytes: s.cfg.memory_bytes,
        oracle,
        heaviest,
        results,
    })
}

/// Runs the whole suite, calling `progress` after each scenario.
pub fn run_suite(
    suite: &[Scenario],
    policies: &[PolicyKind],
    mut progress: impl FnMut(usize, &ScenarioResult),
) -> Result<Vec<ScenarioResult>, SimError> {
    let mut out = Vec::with_capacity(suite.len());
    for (i, s) in suite.iter().enumerate() {
        let r = run_scenario(s, policies)?;
        progress(i, &r);
        out.push(r);
    }
    Ok(out)
}
