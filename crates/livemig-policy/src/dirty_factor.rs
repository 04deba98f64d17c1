//! The method: average dirty-page factor against T, formula-5 estimate, raise or keep-or-lower.

use crate::decision::{Audit, Branch, Decision, StopReason};
use crate::stats::{FactorTracker, RoundStats, StatsError};
use crate::{threshold, Policy, PolicyConfig};

/// `dirty-factor`: the method of `method.md` sections 3-5, literally.
#[derive(Debug, Clone)]
pub struct DirtyFactor {
    cfg: PolicyConfig,
    threshold: f64,
    tracker: FactorTracker,
    stopped: bool,
}

impl DirtyFactor {
    /// A policy for a validated config.
    pub fn new(cfg: PolicyConfig) -> DirtyFactor {
        let threshold = threshold::for_config(&cfg);
        DirtyFactor {
            cfg,
            threshold,
            tracker: FactorTracker::default(),
            stopped: false,
        }
    }
}

/// Formula 5: B* = Phat / ((k+1) T - sum rho), or `None` when the denominator is not positive
/// (no finite bandwidth brings the average down to T; the caller uses B_max).
pub fn formula5(mean_rate: f64, factor_sum: f64, k: u32, threshold: f64) -> Option<f64> {
    let denom = f64::from(k + 1) * threshold - factor_sum;
    (denom > 0.0).then(|| mean_rate / denom)
}

/// Termination of claim 3: N rounds done or at most h left.
pub fn termination(cfg: &PolicyConfig, round: u32, remaining: f64) -> Option<StopReason> {
    if remaining <= cfg.stop_remaining {
        Some(StopReason::RemainingBelowStopLevel)
    } else if round >= cfg.max_rounds {
        Some(StopReason::RoundLimit)
    } else {
        None
    }
}

impl Policy for DirtyFactor {
    fn name(&self) -> &'static str {
        "dirty-factor"
    }

    fn threshold(&self) -> Option<f64> {
        Some(self.threshold)
    }

    fn first_cap(&self) -> f64 {
        self.cfg.initial_bandwidth.unwrap_or(self.cfg.min_bandwidth)
    }

    fn stop_copy_cap(&self) -> f64 {
        self.cfg.stop_cap()
    }

    fn after_round(&mut self, s: &RoundStats) -> Result<Decision, StatsError> {
        if self.stopped {
            return Err(StatsError::AfterStop(s.round));
        }
        let f = self.tracker.push(s)?;
        let mut audit = Audit::measured(&f, s.cap_bytes_per_s, s.dirty_bytes, Some(self.threshold));
        if let Some(reason) = termination(&self.cfg, f.round, s.dirty_bytes) {
            self.stopped = true;
            return Ok(Decision::stop(reason, audit));
        }
        let estimate = match formula5(f.mean_dirty_rate, f.factor_sum, f.round, self.threshold) {
            Some(b) => b,
            None => {
                audit.note = Some("formula 5 has no positive denominator: B* = B_max".into());
                self.cfg.max_bandwidth
            }
        };
        audit.estimate_bytes_per_s = Some(estimate);
        // Direction acts on the cap the round ran under (the controlled quantity).
        let (raw, branch) = if f.avg_factor > self.threshold {
            (s.cap_bytes_per_s.max(estimate), Branch::Raise)
        } else {
            (s.cap_bytes_per_s.min(estimate), Branch::KeepOrLower)
        };
        let next = self.cfg.clamp(raw);
        audit.clamped = next != raw;
        Ok(Decision::next(next, branch, audit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            memory_bytes: 1000.0,
            page_size: 1.0,
            max_rounds: 4,
            stop_remaining: 10.0,
            min_bandwidth: 10.0,
            max_bandwidth: 1000.0,
            ..PolicyConfig::default()
        }
    }

    #[test]
    fn raises_to_the_formula5_estimate_when_above_threshold() {
        let mut p = DirtyFactor::new(cfg());
        let t = p.threshold().expect("has T");
        assert!((t - 0.01f64.powf(0.25)).abs() < 1e-12);
        assert_eq!(p.first_cap(), 10.0);
        // Round 1: 1000 bytes at 10 B/s in 100 s, 500 dirtied: P = 5, rho = 0.5 > T = 0.316.
        let d = p
            .after_round(&RoundStats {
                round: 1,
                cap_bytes_per_s: 10.0,
                bytes_sent: 1000.0,
                duration_s: 100.0,
                dirty_bytes: 500.0,
            })
            .expect("valid");
        let expected = 5.0 / (2.0 * t - 0.5);
        assert_eq!(d.audit.branch, Branch::Raise);
        assert!((d.audit.estimate_bytes_per_s.expect("estimate") - expected).abs() < 1e-9);
        assert!((d.next_cap().expect("continues") - expected).abs() < 1e-9);
    }

    #[test]
    fn falls_back_to_max_when_denominator_is_not_positive() {
        let mut p = DirtyFactor::new(cfg());
        // rho_1 = 2 > 2T = 0.63: denominator negative.
        let d = p
            .after_round(&RoundStats {
                round: 1,
                cap_bytes_per_s: 10.0,
                bytes_sent: 1000.0,
                duration_s: 100.0,
                dirty_bytes: 2000.0,
            })
            .expect("valid");
        assert_eq!(d.next_cap(), Some(1000.0));
        assert!(d.audit.note.is_some());
    }

    #[test]
    fn stops_at_h_and_at_n_and_refuses_rounds_after() {
        let mut p = DirtyFactor::new(cfg());
        let d = p
            .after_round(&RoundStats {
                round: 1,
                cap_bytes_per_s: 10.0,
                bytes_sent: 1000.0,
                duration_s: 100.0,
                dirty_bytes: 10.0,
            })
            .expect("valid");
        assert_eq!(d.stop_reason(), Some(StopReason::RemainingBelowStopLevel));
        assert!(matches!(
            p.after_round(&RoundStats {
                round: 2,
                cap_bytes_per_s: 10.0,
                bytes_sent: 10.0,
                duration_s: 1.0,
                dirty_bytes: 0.0,
            }),
            Err(StatsError::AfterStop(2))
        ));
    }
}
