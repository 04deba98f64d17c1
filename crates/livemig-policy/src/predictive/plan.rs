//! The planner: the lowest constant bandwidth that brings the remaining bytes to h within the
//! rounds left, under a growth estimate (the exact remaining-bytes recursion, not a mean).
//!
//! The estimate is any [`Curve`] `D(t)` (distinct dirty bytes after `t` seconds): a fitted
//! [`Growth`], or one scaled by the closed loop's bias ([`Scaled`]).

use super::growth::Growth;

/// Distinct dirty bytes after `t` seconds.
pub trait Curve {
    fn predict(&self, t: f64) -> f64;
}

impl Curve for Growth {
    fn predict(&self, t: f64) -> f64 {
        Growth::predict(self, t)
    }
}

/// A growth estimate scaled by `bias` (at least 1: the closed loop's correction when the
/// latest measured round lies above the fit), still capped at M.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scaled {
    pub growth: Growth,
    pub bias: f64,
}

/// A curve seen through a throttle: the guest runs `keep` (= 1 - throttle) of the time, so it
/// makes the same writes `1 / keep` times slower.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dilated {
    pub curve: Scaled,
    pub keep: f64,
}

impl Curve for Dilated {
    fn predict(&self, t: f64) -> f64 {
        self.curve.predict(self.keep * t)
    }
}

impl Curve for Scaled {
    fn predict(&self, t: f64) -> f64 {
        (self.bias * self.growth.predict(t)).min(self.growth.memory_bytes)
    }
}

/// Relative width at which the bandwidth bisection stops.
pub const TOLERANCE: f64 = 1e-4;

/// The planner's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plan {
    /// `bandwidth` reaches h after `rounds` more rounds.
    Converges { bandwidth: f64, rounds: u32 },
    /// Not even B_max reaches h in time; `remaining` is what B_max leaves after the rounds.
    Infeasible { remaining: f64 },
}

/// Runs the recursion `V <- D(V / B)` from `remaining` for up to `rounds` rounds; returns the
/// number of rounds after which at most `h` is left, if any.
pub fn rounds_to_reach(
    g: &impl Curve,
    remaining: f64,
    rounds: u32,
    h: f64,
    bandwidth: f64,
) -> Option<u32> {
    let mut v = remaining;
    for j in 1..=rounds {
        v = g.predict(v / bandwidth);
        if v <= h {
            return Some(j);
        }
    }
    None
}

/// What `bandwidth` leaves after `rounds` rounds from `remaining`.
pub fn left_after(g: &impl Curve, remaining: f64, rounds: u32, bandwidth: f64) -> f64 {
    (0..rounds).fold(remaining, |v, _| g.predict(v / bandwidth))
}

/// The lowest bandwidth in `[min, max]` that reaches `h` within `rounds` rounds from
/// `remaining` under `g`.
pub fn lowest(g: &impl Curve, remaining: f64, rounds: u32, h: f64, min: f64, max: f64) -> Plan {
    lowest_by(
        &|b| rounds_to_reach(g, remaining, rounds, h, b),
        &|b| left_after(g, remaining, rounds, b),
        min,
        max,
    )
}

/// Mid-round: the round under way has run `elapsed_s` and has `left` bytes still to send; the
/// lowest bandwidth that finishes it and then reaches `h` within `rounds` more rounds. Its
/// answer's `rounds` counts the round under way (1: it ends at most at h).
pub fn lowest_mid(
    g: &impl Curve,
    elapsed_s: f64,
    left: f64,
    rounds: u32,
    h: f64,
    min: f64,
    max: f64,
) -> Plan {
    let after = |b: f64| g.predict(elapsed_s + left / b);
    lowest_by(
        &|b| {
            let v = after(b);
            if v <= h {
                Some(1)
            } else {
                rounds_to_reach(g, v, rounds, h, b).map(|r| r + 1)
            }
        },
        &|b| left_after(g, after(b), rounds, b),
        min,
        max,
    )
}

/// Log-scale bisection over `[min, max]` for the lowest bandwidth `reach` accepts.
fn lowest_by(
    reach: &dyn Fn(f64) -> Option<u32>,
    left: &dyn Fn(f64) -> f64,
    min: f64,
    max: f64,
) -> Plan {
    let Some(at_max) = reach(max) else {
        return Plan::Infeasible {
            remaining: left(max),
        };
    };
    if let Some(r) = reach(min) {
        return Plan::Converges {
            bandwidth: min,
            rounds: r,
        };
    }
    let (mut lo, mut hi, mut hi_rounds) = (min, max, at_max);
    while hi / lo > 1.0 + TOLERANCE {
        let mid = (lo * hi).sqrt();
        match reach(mid) {
            Some(r) => {
                hi = mid;
                hi_rounds = r;
            }
            None => lo = mid,
        }
    }
    Plan::Converges {
        bandwidth: hi,
        rounds: hi_rounds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_for_a_pure_line_match_the_geometric_series() {
        // D = c t: each round multiplies the remaining by c / B; from M to h in n rounds
        // needs B = c (M / h)^(1/n).
        let g = Growth::linear(10.0, 1e12);
        let (m, h, n) = (1e6, 1e3, 3);
        let Plan::Converges { bandwidth, rounds } = lowest(&g, m, n, h, 1.0, 1e6) else {
            panic!("feasible")
        };
        let expected = 10.0 * (m / h).powf(1.0 / f64::from(n));
        assert!(
            (bandwidth / expected - 1.0).abs() < 2.0 * TOLERANCE,
            "{bandwidth} vs {expected}"
        );
        assert_eq!(rounds, n);
    }

    #[test]
    fn saturated_working_set_above_h_is_infeasible_at_low_max() {
        let g = Growth {
            working_set_bytes: 100.0,
            tau_s: 1.0,
            linear_bytes_per_s: 0.0,
            exponent: 1.0,
            memory_bytes: 1000.0,
            residual: 0.0,
        };
        assert!(matches!(
            lowest(&g, 1000.0, 5, 10.0, 1.0, 10.0),
            Plan::Infeasible { .. }
        ));
    }

    #[test]
    fn mid_round_plan_needs_more_when_the_round_has_dirtied_more() {
        // D = c t. Halfway through a round that must send 1e6 at 1e3 B/s (elapsed 500 s),
        // the rest of the round and 3 more rounds must reach h.
        let line = |c: f64| Growth::linear(c, 1e12);
        let plan = |c: f64| match lowest_mid(&line(c), 500.0, 5e5, 3, 1e3, 1.0, 1e9) {
            Plan::Converges { bandwidth, .. } => bandwidth,
            Plan::Infeasible { .. } => panic!("feasible"),
        };
        assert!(plan(20.0) > plan(10.0));
        // With nothing left to send, the round ends now: its dirt is c x elapsed.
        let Plan::Converges { rounds, .. } = lowest_mid(&line(1.0), 500.0, 0.0, 3, 1e3, 1.0, 1e9)
        else {
            panic!("feasible")
        };
        assert_eq!(rounds, 1);
    }
}
