//! The closed loop of `predictive`: what the plan for a round predicted, compared with what the
//! round measured, and the two corrections learned from real executors.
//!
//! - **Slowness** q = cap x t_k / V_k: how much longer a round took than its bytes at its cap
//!   would (a TCG guest's CPU, a loaded host, per-page overhead). The planner works in
//!   effective bandwidth and asks for q times it.
//! - **Bias** kappa >= 1: how far the latest measured round lies above the refitted curve;
//!   the plan scales the curve by it, so that a round that left more than the fit explains is
//!   planned for as measured.
//!
//! A [`Course`] is the plan for the round under way: what it sends, at what effective
//! bandwidth, and what it is predicted to leave. Mid-round checks compare the round's progress
//! with it.

use super::growth::Growth;
use super::plan::{Curve, Dilated, Scaled};
use crate::stats::RoundStats;

/// Rounds shorter than this do not update the slowness: their time is mostly fixed costs.
pub const MIN_SLOW_ROUND_S: f64 = 0.1;
/// The slowness and the bias are taken within [1, this].
pub const MAX_CORRECTION: f64 = 3.0;
/// A measurement differs from the plan when it lies this far above it, or the fit's own
/// noise (`RESIDUAL_Z` x residual) when that is larger.
pub const NOISE_FLOOR: f64 = 0.05;
/// Mid-round: the first check comes this far into a round, and checks are this far apart.
pub const PROBE_EVERY_S: f64 = 0.2;
/// Mid-round: the round is off its plan when it dirtied this much more than planned so far
/// (or sent this much less), relative.
pub const PROBE_TOLERANCE: f64 = 0.15;
/// Mid-round: and by at least this fraction of h, so that a small early count is not noise.
pub const PROBE_MIN_EXCESS_OF_H: f64 = 0.1;
/// Mid-round: a raise smaller than this factor is not worth a change.
pub const MIN_RAISE: f64 = 1.05;
/// Mid-round: the throughput check waits this long into a round (QEMU's passes start with
/// the bitmap sync).
pub const SLOW_CHECK_AFTER_S: f64 = 0.5;

/// The plan for the round under way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Course {
    pub round: u32,
    /// Bytes the round has to send.
    pub to_send: f64,
    /// The effective bandwidth it was planned at (its cap / the slowness).
    pub effective: f64,
    /// The curve it was planned with, and the share of the time the guest runs in it (1 - the
    /// rescue's throttle).
    pub curve: Scaled,
    pub keep: f64,
    /// What the plan predicts the round leaves.
    pub predicted: f64,
    /// Rounds allowed after this one.
    pub rounds_after: u32,
    /// When in the round the last mid-round check ran.
    pub checked_s: f64,
    /// The plan's progress is counted from here: the round's start, or the last mid-round
    /// raise (when, and what the round had sent by then).
    pub mark_s: f64,
    pub mark_sent: f64,
    /// The last mid-round raise's cap: the floor after a round that left more than planned.
    pub raised_to: Option<f64>,
}

impl Course {
    /// The plan for round `round`, which sends `to_send` at `effective` under `curve`.
    pub fn new(
        round: u32,
        to_send: f64,
        effective: f64,
        curve: Scaled,
        keep: f64,
        rounds_after: u32,
    ) -> Course {
        Course {
            round,
            to_send,
            effective,
            curve,
            keep,
            predicted: predicted(&Dilated { curve, keep }, to_send, effective),
            rounds_after,
            checked_s: 0.0,
            mark_s: 0.0,
            mark_sent: 0.0,
            raised_to: None,
        }
    }

    /// Distinct bytes the plan expects dirtied `elapsed_s` into the round.
    pub fn expected_by(&self, elapsed_s: f64) -> f64 {
        self.seen().predict(elapsed_s)
    }

    /// The curve as the round sees it, throttle included.
    pub fn seen(&self) -> Dilated {
        Dilated {
            curve: self.curve,
            keep: self.keep,
        }
    }

    /// The bytes the plan expects sent `elapsed_s` into the round.
    pub fn sent_by(&self, elapsed_s: f64) -> f64 {
        (self.mark_sent + self.effective * (elapsed_s - self.mark_s).max(0.0)).min(self.to_send)
    }

    /// The round's slowness since the mark, at `cap`, when it sent anything since.
    pub fn slowness_since(&self, elapsed_s: f64, sent: f64, cap: f64) -> Option<f64> {
        let (dt, db) = (elapsed_s - self.mark_s, sent - self.mark_sent);
        (dt > 0.0 && db > 0.0 && cap > 0.0).then(|| (cap * dt / db).clamp(1.0, MAX_CORRECTION))
    }

    /// A raise to `cap` at `elapsed_s`, when the round had sent `sent`: progress counts from
    /// here at `effective`.
    pub fn raised(&mut self, elapsed_s: f64, sent: f64, cap: f64, effective: f64) {
        self.mark_s = elapsed_s;
        self.mark_sent = sent;
        self.effective = effective;
        self.raised_to = Some(cap);
    }
}

/// What `to_send` bytes at `effective` leave under `curve`.
pub fn predicted(curve: &impl Curve, to_send: f64, effective: f64) -> f64 {
    if effective > 0.0 {
        curve.predict(to_send / effective)
    } else {
        f64::INFINITY
    }
}

/// The round's slowness, when it ran long enough to tell.
pub fn slowness(s: &RoundStats) -> Option<f64> {
    (s.duration_s >= MIN_SLOW_ROUND_S && s.bytes_sent > 0.0 && s.cap_bytes_per_s > 0.0)
        .then(|| (s.cap_bytes_per_s * s.duration_s / s.bytes_sent).clamp(1.0, MAX_CORRECTION))
}

/// How far the round's measured dirt lies above `g` at its duration (1 when it does not).
pub fn bias(g: &Growth, s: &RoundStats) -> f64 {
    let at = g.predict(s.duration_s);
    if s.duration_s > 0.0 && at > 0.0 {
        (s.dirty_bytes / at).clamp(1.0, MAX_CORRECTION)
    } else {
        1.0
    }
}

/// The relative difference a measurement must exceed to count as off the plan.
pub fn tolerance(residual_z: f64, g: &Growth) -> f64 {
    NOISE_FLOOR.max(residual_z * g.residual)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(cap: f64, sent: f64, t: f64, dirty: f64) -> RoundStats {
        RoundStats {
            round: 1,
            cap_bytes_per_s: cap,
            bytes_sent: sent,
            duration_s: t,
            dirty_bytes: dirty,
        }
    }

    #[test]
    fn slowness_is_the_time_taken_over_the_time_the_cap_allows() {
        assert_eq!(slowness(&stats(100.0, 100.0, 1.25, 0.0)), Some(1.25));
        // Faster than the cap (zero pages as markers) counts as 1; a tiny round not at all.
        assert_eq!(slowness(&stats(100.0, 200.0, 1.0, 0.0)), Some(1.0));
        assert_eq!(slowness(&stats(100.0, 1.0, 0.05, 0.0)), None);
        assert_eq!(
            slowness(&stats(100.0, 1.0, 10.0, 0.0)),
            Some(MAX_CORRECTION)
        );
    }

    #[test]
    fn bias_is_how_far_the_round_lies_above_the_curve() {
        let g = Growth::linear(10.0, 1e9);
        assert_eq!(bias(&g, &stats(1.0, 1.0, 2.0, 30.0)), 1.5);
        assert_eq!(bias(&g, &stats(1.0, 1.0, 2.0, 10.0)), 1.0);
    }

    #[test]
    fn a_course_predicts_what_its_round_leaves() {
        let curve = Scaled {
            growth: Growth::linear(10.0, 1e9),
            bias: 2.0,
        };
        let c = Course::new(3, 1000.0, 100.0, curve, 1.0, 2);
        assert_eq!(c.predicted, 200.0);
        assert_eq!(c.expected_by(5.0), 100.0);
        assert_eq!(c.sent_by(5.0), 500.0);
        assert_eq!(c.sent_by(50.0), 1000.0);
        // After a raise, progress counts from the raise at the new rate.
        let mut r = c;
        r.raised(2.0, 150.0, 400.0, 200.0);
        assert_eq!(r.sent_by(3.0), 350.0);
        assert_eq!(r.slowness_since(3.0, 250.0, 200.0), Some(2.0));
        assert_eq!(r.raised_to, Some(400.0));
        // A guest throttled to half its time dirties as in half the time.
        let t = Course::new(3, 1000.0, 100.0, curve, 0.5, 2);
        assert_eq!(t.predicted, 100.0);
    }
}
