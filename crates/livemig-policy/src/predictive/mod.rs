//! `predictive`: the method's structure with a growth model and an exact planner.
//!
//! Like `dirty-factor` it measures every round, computes the dirty factors and their average
//! against T (kept in the audit), chooses the next round's bandwidth and stops at N rounds or
//! when at most h remains. Unlike it, it does not assume that the next round dirties at the mean
//! past rate: it fits the guest's distinct-dirty growth `D(t)` ([`growth`]) to a pre-migration
//! dirty-log sample and to every round so far, and picks the lowest constant bandwidth that
//! brings the remaining bytes to h within the rounds left ([`plan`]). Round 1 is planned from the
//! sample. When not even B_max can converge it says so in the audit at once, runs at B_max, and
//! ends pre-copy as soon as another round would not shrink what remains.

pub mod growth;
pub mod plan;

use crate::decision::{Audit, Branch, Decision, StopReason};
use crate::dirty_factor::termination;
use crate::stats::{DirtySample, FactorTracker, RoundStats, StatsError};
use crate::{threshold, Policy, PolicyConfig};
use growth::{Growth, Point};
use plan::Plan;

/// The planned bandwidth is raised by this factor, a margin for estimation error.
pub const B_MARGIN: f64 = 1.03;
/// Weight of the latest measured round against one sample point in the fit.
pub const ROUND_WEIGHT: f64 = 4.0;
/// Each older round (and the sample) weighs this much less per round of age, so the fit
/// follows a guest whose behaviour changes.
pub const RECENCY: f64 = 0.5;
/// The planner aims at h / (1 + RESIDUAL_Z x the fit's relative residual).
pub const RESIDUAL_Z: f64 = 2.0;
/// Under an infeasible estimate, pre-copy ends once a round is predicted to shrink the
/// remaining bytes by less than this fraction.
pub const MIN_PROGRESS: f64 = 0.05;

/// The `predictive` policy.
#[derive(Debug, Clone)]
pub struct Predictive {
    cfg: PolicyConfig,
    threshold: f64,
    tracker: FactorTracker,
    points: Vec<Point>,
    first_cap: Option<f64>,
    stopped: bool,
}

impl Predictive {
    /// A policy for a validated config.
    pub fn new(cfg: PolicyConfig) -> Predictive {
        let threshold = threshold::for_config(&cfg);
        Predictive {
            cfg,
            threshold,
            tracker: FactorTracker::default(),
            points: Vec::new(),
            first_cap: None,
            stopped: false,
        }
    }

    fn fit(&self) -> Option<Growth> {
        Growth::fit(&self.points, self.cfg.memory_bytes)
    }

    fn plan(&self, g: &Growth, remaining: f64, rounds: u32) -> Plan {
        match plan::lowest(
            g,
            remaining,
            rounds,
            self.cfg.stop_remaining / (1.0 + RESIDUAL_Z * g.residual),
            self.cfg.min_bandwidth,
            self.cfg.max_bandwidth,
        ) {
            Plan::Converges { bandwidth, rounds } => Plan::Converges {
                bandwidth: (bandwidth * B_MARGIN).min(self.cfg.max_bandwidth),
                rounds,
            },
            other => other,
        }
    }
}

fn describe(g: &Growth) -> String {
    format!(
        "growth W={:.0} B, tau={:.3} s, c={:.0} B/s, beta={:.2}, residual {:.3}",
        g.working_set_bytes, g.tau_s, g.linear_bytes_per_s, g.exponent, g.residual
    )
}

impl Policy for Predictive {
    fn name(&self) -> &'static str {
        "predictive"
    }

    fn threshold(&self) -> Option<f64> {
        Some(self.threshold)
    }

    fn first_cap(&self) -> f64 {
        self.first_cap
            .or(self.cfg.initial_bandwidth)
            .unwrap_or(self.cfg.min_bandwidth)
    }

    fn stop_copy_cap(&self) -> f64 {
        self.cfg.stop_cap()
    }

    fn observe_sample(&mut self, sample: &DirtySample) {
        self.points
            .extend(sample.valid_points().map(|(t, d)| Point {
                t_s: t,
                dirty_bytes: d,
                weight: 1.0,
            }));
        let Some(g) = self.fit() else { return };
        self.first_cap = Some(
            match self.plan(&g, self.cfg.memory_bytes, self.cfg.max_rounds) {
                Plan::Converges { bandwidth, .. } => bandwidth,
                Plan::Infeasible { .. } => self.cfg.max_bandwidth,
            },
        );
    }

    fn after_round(&mut self, s: &RoundStats) -> Result<Decision, StatsError> {
        if self.stopped {
            return Err(StatsError::AfterStop(s.round));
        }
        let f = self.tracker.push(s)?;
        let mut audit = Audit::measured(&f, s.cap_bytes_per_s, s.dirty_bytes, Some(self.threshold));
        for p in &mut self.points {
            p.weight *= RECENCY;
        }
        if s.duration_s > 0.0 {
            self.points.push(Point {
                t_s: s.duration_s,
                dirty_bytes: s.dirty_bytes,
                weight: ROUND_WEIGHT,
            });
        }
        if let Some(reason) = termination(&self.cfg, f.round, s.dirty_bytes) {
            self.stopped = true;
            return Ok(Decision::stop(reason, audit));
        }
        let rounds_left = self.cfg.max_rounds - f.round;
        let Some(g) = self.fit() else {
            // No usable point (every round took no time): behave like B_max.
            audit.note = Some("no growth estimate yet: B_max".into());
            return Ok(Decision::next(self.cfg.max_bandwidth, Branch::Plan, audit));
        };
        match self.plan(&g, s.dirty_bytes, rounds_left) {
            Plan::Converges { bandwidth, rounds } => {
                let next = self.cfg.clamp(bandwidth);
                audit.estimate_bytes_per_s = Some(bandwidth);
                audit.clamped = next != bandwidth;
                audit.note = Some(format!(
                    "{}; reaches h in {rounds} more rounds",
                    describe(&g)
                ));
                Ok(Decision::next(next, Branch::Plan, audit))
            }
            Plan::Infeasible { remaining } => {
                audit.infeasible = true;
                audit.estimate_bytes_per_s = Some(self.cfg.max_bandwidth);
                let next_left = g.predict(s.dirty_bytes / self.cfg.max_bandwidth);
                audit.note = Some(format!(
                    "{}; even B_max leaves {remaining:.0} B after {rounds_left} more rounds",
                    describe(&g)
                ));
                if next_left >= s.dirty_bytes * (1.0 - MIN_PROGRESS) {
                    self.stopped = true;
                    return Ok(Decision::stop(StopReason::Infeasible, audit));
                }
                Ok(Decision::next(self.cfg.max_bandwidth, Branch::Plan, audit))
            }
        }
    }
}
