//! The planner: the lowest constant bandwidth that brings the remaining bytes to h within the
//! rounds left, under a growth estimate (the exact remaining-bytes recursion, not a mean).

use super::growth::Growth;

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
    g: &Growth,
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
pub fn left_after(g: &Growth, remaining: f64, rounds: u32, bandwidth: f64) -> f64 {
    (0..rounds).fold(remaining, |v, _| g.predict(v / bandwidth))
}

/// The lowest bandwidth in `[min, max]` that reaches `h` within `rounds` rounds from
/// `remaining` under `g`.
pub fn lowest(g: &Growth, remaining: f64, rounds: u32, h: f64, min: f64, max: f64) -> Plan {
    let Some(at_max) = rounds_to_reach(g, remaining, rounds, h, max) else {
        return Plan::Infeasible {
            remaining: left_after(g, remaining, rounds, max),
        };
    };
    if let Some(r) = rounds_to_reach(g, remaining, rounds, h, min) {
        return Plan::Converges {
            bandwidth: min,
            rounds: r,
        };
    }
    let (mut lo, mut hi, mut hi_rounds) = (min, max, at_max);
    while hi / lo > 1.0 + TOLERANCE {
        let mid = (lo * hi).sqrt();
        match rounds_to_reach(g, remaining, rounds, h, mid) {
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
}
