//! The lowest rate at which a migration still converges under its current estimate: the
//! method's threshold T = (h / M)^(1/N) turned around, with what is left in place of M and the
//! rounds left in place of N; or, with a growth estimate, the predictive policy's planner.
//!
//! Under a constant dirtying rate P and a constant cap B, every round sends what the previous
//! one let the guest dirty, so each round multiplies the remaining bytes by rho = P / B. From
//! R bytes, n rounds leave R rho^n; that is at most h exactly when
//! rho <= (h / R)^(1/n) = T(R, h, n), i.e. B >= P / T(R, h, n) = P (R / h)^(1/n).
//! Before the migration R = M and n = N, so the need is P / T, T the method's threshold.

use livemig_policy::predictive::growth::{Growth, Point};
use livemig_policy::predictive::plan::{self, Plan};
use livemig_policy::predictive::{B_MARGIN, RESIDUAL_Z};
use livemig_policy::stats::DirtySample;
use livemig_policy::threshold;
use serde::{Deserialize, Serialize};

use super::Demand;

/// What a migration needs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    /// It converges at this rate (bytes/s) or more; never below its floor.
    Converges(f64),
    /// No rate up to its reach converges (or its floor is above its reach).
    Infeasible,
}

/// `P / T(R, h, n) = P (R / h)^(1/n)`: the lowest constant rate that brings `remaining`
/// bytes to at most `stop` within `rounds` rounds at a constant dirtying rate. `Some(0)` when
/// nothing needs to be sent before stop-and-copy; `None` when no rate will do (no round left,
/// or the ratio overflows).
pub fn closed_form(dirty_rate: f64, remaining: f64, stop: f64, rounds: u32) -> Option<f64> {
    if remaining <= stop {
        return Some(0.0);
    }
    if rounds == 0 {
        return None;
    }
    if dirty_rate == 0.0 {
        return Some(0.0);
    }
    let t = threshold::derived(remaining, stop, rounds);
    let b = dirty_rate / t;
    (t > 0.0 && b.is_finite()).then_some(b)
}

/// The estimate of a migration that has not started, from its pre-migration dirty-log
/// sample (`(t, D(t))` points): the rate is the steepest line through the origin and a point,
/// `max D(t) / t` (what the policy's fit falls back to with too few points, the conservative
/// choice), and the growth is the predictive policy's fit of the same points (`None` when no
/// point is usable; then the rate is 0 and the need is the floor).
pub fn from_sample(sample: &DirtySample, memory_bytes: f64) -> (f64, Option<Growth>) {
    let points: Vec<Point> = sample
        .valid_points()
        .map(|(t, d)| Point {
            t_s: t,
            dirty_bytes: d,
            weight: 1.0,
        })
        .collect();
    let rate = points
        .iter()
        .map(|p| p.dirty_bytes / p.t_s)
        .filter(|r| r.is_finite())
        .fold(0.0, f64::max);
    (rate, Growth::fit(&points, memory_bytes))
}

/// The lowest rate, at least the floor and at most `reach` (the most the migration could
/// ever be granted), at which `d` converges under its estimate.
///
/// Without a growth estimate: [`closed_form`] from its dirty rate. With one: the predictive
/// policy's planner ([`plan::lowest`]) with the policy's own margins (it aims at
/// h / (1 + z x residual) and adds [`B_MARGIN`]), so the grant covers the cap the predictive
/// policy itself will ask for.
pub fn minimum(d: &Demand, reach: f64) -> Need {
    let floor = d.floor_bytes_per_s;
    if floor > reach {
        return Need::Infeasible;
    }
    if d.remaining_bytes <= d.stop_bytes {
        return Need::Converges(floor);
    }
    let Some(g) = &d.growth else {
        return match closed_form(
            d.dirty_rate_bytes_per_s,
            d.remaining_bytes,
            d.stop_bytes,
            d.rounds_left,
        ) {
            Some(b) if b <= reach => Need::Converges(b.max(floor)),
            _ => Need::Infeasible,
        };
    };
    if d.rounds_left == 0 {
        return Need::Infeasible;
    }
    let aim = d.stop_bytes / (1.0 + RESIDUAL_Z * g.residual);
    match plan::lowest(g, d.remaining_bytes, d.rounds_left, aim, floor, reach) {
        Plan::Converges { bandwidth, .. } => {
            Need::Converges((bandwidth * B_MARGIN).min(reach).max(floor))
        }
        Plan::Infeasible { .. } => Need::Infeasible,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;
    const GIB: f64 = 1024.0 * MIB;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn at_the_start_it_is_the_dirty_rate_over_the_methods_threshold() {
        // h / M = 1/100, N = 5: T = 0.398 (method.md section 3), so P = 10 MiB/s needs
        // 10 / 0.398 = 25.12 MiB/s.
        let b = closed_form(10.0 * MIB, GIB, GIB / 100.0, 5).expect("feasible");
        assert!(close(b, 10.0 * MIB / 0.398_107_170_553_497_3, 1e-12), "{b}");
        assert!(close(b / MIB, 25.118_864, 1e-6), "{}", b / MIB);
        // N = 10: T = 0.631, 15.85 MiB/s.
        let b = closed_form(10.0 * MIB, GIB, GIB / 100.0, 10).expect("feasible");
        assert!(close(b / MIB, 15.848_932, 1e-6), "{}", b / MIB);
    }

    #[test]
    fn the_minimum_reaches_h_in_the_rounds_left_and_a_little_less_does_not() {
        let (p, r, h, n) = (40.0 * MIB, 3.0 * GIB, 8.0 * MIB, 7);
        let b = closed_form(p, r, h, n).expect("feasible");
        let left = |b: f64| (0..n).fold(r, |v, _| v * p / b);
        assert!(left(b) <= h * (1.0 + 1e-9), "{}", left(b));
        assert!(left(b * 0.999) > h);
    }

    #[test]
    fn matches_the_predictive_planner_on_a_straight_line() {
        let (p, r, h, n) = (40.0 * MIB, GIB, 10.0 * MIB, 6);
        let g = Growth::linear(p, GIB);
        let Plan::Converges { bandwidth, .. } = plan::lowest(&g, r, n, h, 1.0, 1e12) else {
            panic!("feasible")
        };
        let b = closed_form(p, r, h, n).expect("feasible");
        assert!(
            close(bandwidth, b, 3.0 * plan::TOLERANCE),
            "{bandwidth} vs {b}"
        );
        // Through `minimum`, the policy's margin is added.
        let d = Demand::new(1, "a", "b", GIB, p, n, h)
            .bounds(1.0, None)
            .with_growth(g);
        let Need::Converges(m) = minimum(&d, 1e12) else {
            panic!("feasible")
        };
        assert!(close(m, b * B_MARGIN, 3.0 * plan::TOLERANCE), "{m} vs {b}");
    }

    #[test]
    fn a_saturating_hot_set_needs_less_than_its_rate_suggests() {
        // A hot set of 100 MiB that fills in 1 s: 100 MiB/s measured over a second, but a
        // round never leaves more than 100 MiB dirty, so h = 200 MiB is reached in round 1
        // near the floor.
        let g = Growth {
            working_set_bytes: 100.0 * MIB,
            tau_s: 0.5,
            linear_bytes_per_s: 0.0,
            exponent: 1.0,
            memory_bytes: 4.0 * GIB,
            residual: 0.0,
        };
        let d = Demand::new(1, "a", "b", 4.0 * GIB, 100.0 * MIB, 10, 200.0 * MIB).bounds(MIB, None);
        let line = match minimum(&d, 1e12) {
            Need::Converges(b) => b,
            Need::Infeasible => panic!("a line converges"),
        };
        // The floor (plus the policy's margin, as the predictive policy plans it).
        assert_eq!(
            minimum(&d.with_growth(g), 1e12),
            Need::Converges(MIB * B_MARGIN)
        );
        assert!(line > 100.0 * MIB);
    }

    #[test]
    fn a_sample_gives_the_steepest_line_and_the_policys_fit() {
        let sample = DirtySample {
            points: vec![
                (1.0, 10.0 * MIB),
                (2.0, 16.0 * MIB),
                (4.0, 20.0 * MIB),
                (f64::NAN, 1.0),
                (0.0, 5.0),
            ],
            ..DirtySample::default()
        };
        let (rate, g) = from_sample(&sample, GIB);
        assert_eq!(rate, 10.0 * MIB);
        let g = g.expect("three points fit");
        assert!(g.predict(4.0) < 40.0 * MIB, "saturates: {g:?}");
        assert_eq!(from_sample(&DirtySample::default(), GIB), (0.0, None));
    }

    #[test]
    fn floors_reaches_and_edges() {
        let d = Demand::new(1, "a", "b", GIB, 0.0, 10, MIB).bounds(5.0 * MIB, None);
        assert_eq!(minimum(&d, 1e12), Need::Converges(5.0 * MIB), "idle: floor");
        assert_eq!(minimum(&d, MIB), Need::Infeasible, "floor above reach");
        let busy = Demand::new(2, "a", "b", GIB, 100.0 * MIB, 10, MIB).bounds(MIB, None);
        let Need::Converges(b) = minimum(&busy, 1e12) else {
            panic!("feasible")
        };
        assert_eq!(minimum(&busy, b * 0.99), Need::Infeasible, "beyond reach");
        assert_eq!(minimum(&busy, b), Need::Converges(b));
        let done = busy.clone().progressed(MIB, 0);
        assert_eq!(minimum(&done, 1e12), Need::Converges(MIB), "at h: floor");
        let cut = busy.progressed(2.0 * MIB, 0);
        assert_eq!(minimum(&cut, 1e12), Need::Infeasible, "no round left");
        assert_eq!(closed_form(1.0, 1e300, 1e-300, 1), None, "overflow");
    }
}
