//! The oracle: the lowest constant bandwidth in [B_min, B_max] that meets the same N and h.
//!
//! Found by bisection (on a log scale, to a relative width of 1e-6) over `fixed` runs. Distinct
//! dirty bytes grow with round length, so convergence is monotone in the bandwidth for
//! stationary workloads; for phased or traced ones the answer is the bisection's, and is
//! always a bandwidth verified to converge.

use livemig_policy::baselines::Constant;
use livemig_policy::report::MigrationReport;
use livemig_policy::PolicyConfig;
use serde::Serialize;

use crate::run::{simulate, SimError};
use crate::scenario::Scenario;

/// Relative width at which the bisection stops.
pub const TOLERANCE: f64 = 1e-6;

/// The oracle's bandwidth and its run.
#[derive(Debug, Clone, Serialize)]
pub struct Oracle {
    pub bandwidth_bytes_per_s: f64,
    pub report: MigrationReport,
}

/// Runs `fixed` at `bandwidth` on the scenario.
pub fn run_fixed(s: &Scenario, bandwidth: f64) -> Result<MigrationReport, SimError> {
    let cfg = PolicyConfig {
        fixed_bandwidth: Some(bandwidth),
        ..s.cfg.clone()
    };
    simulate(&mut Constant::fixed(cfg), s.setup())
}

/// The oracle, or `None` when not even B_max converges.
pub fn find(s: &Scenario) -> Result<Option<Oracle>, SimError> {
    let (lo_bw, hi_bw) = (s.cfg.min_bandwidth, s.cfg.max_bandwidth);
    let hi_run = run_fixed(s, hi_bw)?;
    if !hi_run.summary.converged {
        return Ok(None);
    }
    let lo_run = run_fixed(s, lo_bw)?;
    if lo_run.summary.converged {
        return Ok(Some(Oracle {
            bandwidth_bytes_per_s: lo_bw,
            report: lo_run,
        }));
    }
    let (mut lo, mut hi, mut best) = (lo_bw, hi_bw, hi_run);
    while hi / lo > 1.0 + TOLERANCE {
        let mid = (lo * hi).sqrt();
        let run = run_fixed(s, mid)?;
        if run.summary.converged {
            hi = mid;
            best = run;
        } else {
            lo = mid;
        }
    }
    Ok(Some(Oracle {
        bandwidth_bytes_per_s: hi,
        report: best,
    }))
}
