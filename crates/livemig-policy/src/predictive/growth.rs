//! The dirty-set growth estimator: distinct dirty bytes after `t` seconds, fitted to
//! `D(t) = W (1 - exp(-t / tau)) + c t^beta`, capped at M.
//!
//! `W` is a working set that saturates with time constant `tau` (a hot set), `c` the rate at
//! which the rest of memory keeps being dirtied (cold pages, scans). The fit minimises weighted
//! relative squared error over observed `(t, D)` points: for each `tau` on a log grid (then
//! refined by golden-section search) `W` and `c` solve a non-negative least-squares problem.
//! With fewer than three distinct points the curve is underdetermined and the estimator falls
//! back to the most conservative straight line through the origin.
//!
//! `tau` is never fitted below half the shortest observed time: points taken at `t_min` and
//! later cannot tell a working set that saturated in 1 ms from one that took `t_min / 2`, and
//! the sharper choice would claim that even the shortest round dirties the whole working set
//! (on real QEMU, a one-point 1 s sample and two rounds made `predictive` declare every cap
//! infeasible and jump to B_max). Rounds shorter than any seen are predicted from a curve the
//! data supports; the closed loop corrects it if the round leaves more.

use serde::{Deserialize, Serialize};

/// A fitted growth curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Growth {
    /// W: bytes of the saturating working set.
    pub working_set_bytes: f64,
    /// tau: its time constant (s).
    pub tau_s: f64,
    /// c: growth of the non-saturating part (bytes/s at t = 1 s).
    pub linear_bytes_per_s: f64,
    /// beta: exponent of the non-saturating part, `c t^beta` (1 = linear).
    pub exponent: f64,
    /// M: the cap on distinct bytes.
    pub memory_bytes: f64,
    /// Weighted relative RMS residual of the fit (0 for an exact fit or a fallback line).
    #[serde(default)]
    pub residual: f64,
}

/// One observation: after `t_s` seconds, `dirty_bytes` distinct bytes; `weight` > 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub t_s: f64,
    pub dirty_bytes: f64,
    pub weight: f64,
}

const TAU_MIN: f64 = 1e-3;
/// `tau` is fitted no lower than this share of the shortest observed time.
const TAU_FLOOR_OF_SHORTEST: f64 = 0.5;
const TAU_MAX: f64 = 1e5;
const GRID: usize = 80;
/// Exponents tried for the non-saturating part, linear first (preferred on ties).
const EXPONENTS: [f64; 8] = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3];

impl Growth {
    /// A straight line `D = c t`.
    pub fn linear(rate: f64, memory: f64) -> Growth {
        Growth {
            working_set_bytes: 0.0,
            tau_s: 1.0,
            linear_bytes_per_s: rate.max(0.0),
            exponent: 1.0,
            memory_bytes: memory,
            residual: 0.0,
        }
    }

    /// Predicted distinct dirty bytes after `t` seconds.
    pub fn predict(&self, t: f64) -> f64 {
        if t <= 0.0 {
            return 0.0;
        }
        let sat = -self.working_set_bytes * (-t / self.tau_s).exp_m1();
        (sat + self.linear_bytes_per_s * t.powf(self.exponent)).min(self.memory_bytes)
    }

    /// Fits the curve to `points`; `None` when no point carries information.
    pub fn fit(points: &[Point], memory: f64) -> Option<Growth> {
        let pts: Vec<Point> = points
            .iter()
            .copied()
            .filter(|p| {
                p.t_s.is_finite()
                    && p.t_s > 0.0
                    && p.dirty_bytes.is_finite()
                    && p.dirty_bytes >= 0.0
                    && p.weight > 0.0
            })
            .collect();
        if pts.is_empty() {
            return None;
        }
        let mut times: Vec<f64> = pts.iter().map(|p| p.t_s).collect();
        times.sort_by(f64::total_cmp);
        times.dedup_by(|a, b| (*a - *b).abs() <= 1e-9 * b.abs());
        if times.len() < 3 {
            let rate = pts
                .iter()
                .map(|p| p.dirty_bytes / p.t_s)
                .fold(0.0, f64::max);
            return Some(Growth::linear(rate, memory));
        }
        let scale = pts
            .iter()
            .map(|p| p.dirty_bytes)
            .fold(0.0, f64::max)
            .max(1.0)
            * 1e-3;
        let floor = (times[0] * TAU_FLOOR_OF_SHORTEST)
            .clamp(TAU_MIN, TAU_MAX)
            .ln();
        let cost_at = |log_tau: f64, beta: f64| -> (f64, Growth) {
            let tau = log_tau.max(floor).exp();
            let (w, c, cost) = nnls2(&pts, tau, beta, scale);
            (
                cost,
                Growth {
                    working_set_bytes: w,
                    tau_s: tau,
                    linear_bytes_per_s: c,
                    exponent: beta,
                    memory_bytes: memory,
                    residual: 0.0,
                },
            )
        };
        let (lo, hi) = (TAU_MIN.ln(), TAU_MAX.ln());
        let step = (hi - lo) / (GRID - 1) as f64;
        let mut best_i = 0;
        let mut best = cost_at(lo, 1.0);
        for beta in EXPONENTS {
            for i in 0..GRID {
                let c = cost_at(lo + step * i as f64, beta);
                if c.0 < best.0 * (1.0 - 1e-9) {
                    best = c;
                    best_i = i;
                }
            }
        }
        let beta = best.1.exponent;
        // Golden-section refinement in the neighbouring grid cells, above the floor (grid
        // points under it all stand for the floor).
        let mut a = (lo + step * best_i.saturating_sub(1) as f64).max(floor);
        let mut b = (lo + step * (best_i + 1).min(GRID - 1) as f64).max(a + step);
        let g = (5f64.sqrt() - 1.0) / 2.0;
        for _ in 0..40 {
            let x1 = b - g * (b - a);
            let x2 = a + g * (b - a);
            if cost_at(x1, beta).0 < cost_at(x2, beta).0 {
                b = x2;
            } else {
                a = x1;
            }
        }
        let refined = cost_at((a + b) / 2.0, beta);
        let (cost, mut g) = if refined.0 <= best.0 { refined } else { best };
        let total_weight: f64 = pts.iter().map(|p| p.weight).sum();
        g.residual = (cost / total_weight).sqrt();
        Some(g)
    }
}

/// Weighted relative least squares for `D = W g(t) + c t`, `W, c >= 0`; returns `(W, c, cost)`.
fn nnls2(pts: &[Point], tau: f64, beta: f64, scale: f64) -> (f64, f64, f64) {
    let rows: Vec<(f64, f64, f64)> = pts
        .iter()
        .map(|p| {
            let s = p.weight.sqrt() / p.dirty_bytes.max(scale);
            (
                -(-p.t_s / tau).exp_m1() * s,
                p.t_s.powf(beta) * s,
                p.dirty_bytes * s,
            )
        })
        .collect();
    let cost = |w: f64, c: f64| -> f64 {
        rows.iter()
            .map(|(g, t, d)| (w * g + c * t - d).powi(2))
            .sum()
    };
    let (mut aa, mut ab, mut bb, mut ay, mut by) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (g, t, d) in &rows {
        aa += g * g;
        ab += g * t;
        bb += t * t;
        ay += g * d;
        by += t * d;
    }
    let mut candidates = vec![(0.0, 0.0)];
    if aa > 0.0 {
        candidates.push(((ay / aa).max(0.0), 0.0));
    }
    if bb > 0.0 {
        candidates.push((0.0, (by / bb).max(0.0)));
    }
    let det = aa * bb - ab * ab;
    if det.abs() > 1e-12 * aa * bb {
        let w = (ay * bb - by * ab) / det;
        let c = (by * aa - ay * ab) / det;
        if w >= 0.0 && c >= 0.0 {
            candidates.push((w, c));
        }
    }
    candidates
        .into_iter()
        .map(|(w, c)| (w, c, cost(w, c)))
        .min_by(|x, y| x.2.total_cmp(&y.2))
        .unwrap_or((0.0, 0.0, f64::INFINITY))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;

    fn curve(w: f64, tau: f64, c: f64) -> Growth {
        Growth {
            working_set_bytes: w,
            tau_s: tau,
            linear_bytes_per_s: c,
            exponent: 1.0,
            memory_bytes: 1e15,
            residual: 0.0,
        }
    }

    #[test]
    fn recovers_an_exact_curve() {
        let truth = curve(400.0 * MIB, 1.5, 30.0 * MIB);
        let pts: Vec<Point> = [0.1, 0.3, 0.6, 1.0, 3.0, 10.0, 40.0]
            .iter()
            .map(|&t| Point {
                t_s: t,
                dirty_bytes: truth.predict(t),
                weight: 1.0,
            })
            .collect();
        let g = Growth::fit(&pts, 1e15).expect("fits");
        assert!(
            (g.working_set_bytes / truth.working_set_bytes - 1.0).abs() < 0.01,
            "{g:?}"
        );
        assert!((g.tau_s / truth.tau_s - 1.0).abs() < 0.01, "{g:?}");
        assert!(
            (g.linear_bytes_per_s / truth.linear_bytes_per_s - 1.0).abs() < 0.01,
            "{g:?}"
        );
    }

    #[test]
    fn few_points_give_the_steepest_line() {
        let pts = [
            Point {
                t_s: 1.0,
                dirty_bytes: 10.0,
                weight: 1.0,
            },
            Point {
                t_s: 4.0,
                dirty_bytes: 20.0,
                weight: 1.0,
            },
        ];
        let g = Growth::fit(&pts, 1e9).expect("fits");
        assert_eq!(g.working_set_bytes, 0.0);
        assert_eq!(g.linear_bytes_per_s, 10.0);
        assert_eq!(g.predict(2.0), 20.0);
        assert!(Growth::fit(&[], 1e9).is_none());
    }

    /// Three points all past saturation (a hot set seen only at 1 s and later): the fit may
    /// not claim that a round shorter than any seen dirties the whole set.
    #[test]
    fn no_time_constant_below_half_the_shortest_observation() {
        let pts: Vec<Point> = [(1.0, 30.0 * MIB), (1.4, 32.7 * MIB), (4.18, 51.1 * MIB)]
            .iter()
            .map(|&(t_s, dirty_bytes)| Point {
                t_s,
                dirty_bytes,
                weight: 1.0,
            })
            .collect();
        let g = Growth::fit(&pts, 1e15).expect("fits");
        assert!(g.tau_s >= 0.5 - 1e-9, "{g:?}");
        assert!(g.predict(0.25) < 0.7 * g.predict(1.0), "{g:?}");
        // Still a close fit where the data is.
        for p in &pts {
            assert!(
                (g.predict(p.t_s) / p.dirty_bytes - 1.0).abs() < 0.1,
                "{g:?}"
            );
        }
    }

    #[test]
    fn prediction_is_capped_at_memory_and_zero_at_zero() {
        let g = Growth {
            memory_bytes: 100.0,
            ..curve(50.0, 1.0, 10.0)
        };
        assert_eq!(g.predict(0.0), 0.0);
        assert_eq!(g.predict(1e6), 100.0);
    }
}
