//! A measured working-set curve: the distinct bytes a guest dirties in `t` seconds, `W(t)`.
//!
//! Recorded by `livemig qemu dirty-trace --periods ...` as dirty rates over several periods
//! (`W(T) = rate x T`), and replayed by the simulator in place of an access pattern. Between
//! measured periods the curve is linear (through the origin before the first); past the
//! longest it follows the last segment's slope, decaying as fast as the slopes of the last
//! two segments did (an exponential approach to a plateau, which is exact for uniform writes
//! over a buffer), and it stays flat when the last segment did not grow. Measured points are
//! made monotone (a running maximum) first, so the curve never shrinks.

use crate::units::fmt_number;

/// Most measured points a curve may have.
pub const MAX_POINTS: usize = 64;
/// The longest period a point may have: a day.
pub const MAX_PERIOD_S: f64 = 86_400.0;
/// The most distinct bytes a point may claim: 1 PiB.
pub const MAX_BYTES: f64 = 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0;

/// Why a curve was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CurveError {
    #[error("a working-set curve needs at least one point")]
    Empty,
    #[error("a working-set curve has at most {MAX_POINTS} points, got {0}")]
    TooMany(usize),
    #[error(
        "point {index}: period {} s must be finite, above 0, at most a day and longer than the previous point's",
        fmt_number(*.period)
    )]
    Period { index: usize, period: f64 },
    #[error(
        "point {index}: {} distinct bytes must be finite, non-negative and at most 1 PiB",
        fmt_number(*.bytes)
    )]
    Bytes { index: usize, bytes: f64 },
}

/// Distinct dirtied bytes after `t` seconds of dirtying, from measured `(period_s, bytes)`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkingSet {
    /// Measured points, periods strictly increasing, bytes made monotone.
    points: Vec<(f64, f64)>,
}

impl WorkingSet {
    /// A curve through `(period_s, distinct_bytes)` points, periods strictly increasing.
    pub fn new(points: Vec<(f64, f64)>) -> Result<WorkingSet, CurveError> {
        if points.is_empty() {
            return Err(CurveError::Empty);
        }
        if points.len() > MAX_POINTS {
            return Err(CurveError::TooMany(points.len()));
        }
        let mut prev = 0.0;
        let mut high = 0.0_f64;
        let mut out = Vec::with_capacity(points.len());
        for (index, (period, bytes)) in points.into_iter().enumerate() {
            if !(period.is_finite() && period > prev && period <= MAX_PERIOD_S) {
                return Err(CurveError::Period { index, period });
            }
            if !(bytes.is_finite() && (0.0..=MAX_BYTES).contains(&bytes)) {
                return Err(CurveError::Bytes { index, bytes });
            }
            prev = period;
            high = high.max(bytes);
            out.push((period, high));
        }
        Ok(WorkingSet { points: out })
    }

    /// The curve from measured `(period_s, rate_bytes_per_s)` rows in any order: the median
    /// rate of each period times the period.
    pub fn from_rates(rows: &[(f64, f64)]) -> Result<WorkingSet, CurveError> {
        let mut rows: Vec<(f64, f64)> = rows.to_vec();
        rows.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut points = Vec::new();
        let mut i = 0;
        while i < rows.len() {
            let period = rows[i].0;
            // total_cmp: a NaN period groups with itself (and is refused below), never 0 rows.
            let n = rows[i..]
                .iter()
                .take_while(|r| r.0.total_cmp(&period).is_eq())
                .count();
            let median = (rows[i + (n - 1) / 2].1 + rows[i + n / 2].1) / 2.0;
            points.push((period, median * period));
            i += n;
        }
        WorkingSet::new(points)
    }

    /// The measured points (monotone).
    pub fn points(&self) -> &[(f64, f64)] {
        &self.points
    }

    /// The dirtying rate of the shortest period that dirtied anything, `W(T) / T` (bytes/s):
    /// the write rate a replay runs at, so that `w` written bytes stand for `w / rate` seconds
    /// of dirtying. 0 only for a curve that never dirties (an idle guest); a guest idle in its
    /// shortest period but not later still replays its later growth.
    pub fn initial_rate(&self) -> f64 {
        self.points
            .iter()
            .find(|&&(_, w)| w > 0.0)
            .map_or(0.0, |&(t, w)| w / t)
    }

    /// Distinct bytes dirtied in `t` seconds.
    pub fn at(&self, t: f64) -> f64 {
        if t.is_nan() || t <= 0.0 {
            return 0.0;
        }
        let mut prev = (0.0, 0.0);
        for &(tp, wp) in &self.points {
            if t <= tp {
                return prev.1 + (wp - prev.1) * (t - prev.0) / (tp - prev.0);
            }
            prev = (tp, wp);
        }
        self.beyond(t)
    }

    /// The curve past its longest period (see the module's docs).
    fn beyond(&self, t: f64) -> f64 {
        let n = self.points.len();
        let (tn, wn) = self.points[n - 1];
        let (t1, w1) = if n >= 2 {
            self.points[n - 2]
        } else {
            (0.0, 0.0)
        };
        let s2 = (wn - w1) / (tn - t1);
        if s2 <= 0.0 {
            return wn;
        }
        let decay = if n >= 2 {
            let (t0, w0) = if n >= 3 {
                self.points[n - 3]
            } else {
                (0.0, 0.0)
            };
            let s1 = (w1 - w0) / (t1 - t0);
            // Slopes at the segments' midpoints: s(t) = s2 * exp(-(t - m2) / tau).
            let (m1, m2) = ((t0 + t1) / 2.0, (t1 + tn) / 2.0);
            (s1 > s2).then(|| ((m2 - m1) / (s1 / s2).ln(), m2))
        } else {
            None
        };
        let dt = t - tn;
        match decay {
            Some((tau, m2)) => {
                let slope_at_tn = s2 * (-(tn - m2) / tau).exp();
                wn + slope_at_tn * tau * -(-dt / tau).exp_m1()
            }
            None => wn + s2 * dt,
        }
    }

    /// The inline form, `T1@W1;T2@W2;...` in seconds and bytes (plain numbers that parse
    /// back to the same values).
    pub fn to_points_spec(&self) -> String {
        let list: Vec<String> = self
            .points
            .iter()
            .map(|(t, w)| format!("{t}@{w}"))
            .collect();
        list.join(";")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;

    fn scan_like() -> WorkingSet {
        // A 160 MiB sweep at 64 MiB/s, measured at 1, 2, 4 and 8 s.
        WorkingSet::new(vec![
            (1.0, 64.0 * MIB),
            (2.0, 128.0 * MIB),
            (4.0, 160.0 * MIB),
            (8.0, 160.0 * MIB),
        ])
        .expect("valid")
    }

    #[test]
    fn a_curve_idle_at_first_still_replays_its_growth() {
        let c = WorkingSet::new(vec![(1.0, 0.0), (2.0, 10.0 * MIB)]).expect("valid");
        assert_eq!(c.initial_rate(), 5.0 * MIB);
        assert!(c.at(2.0) > 0.0);
        let idle = WorkingSet::new(vec![(1.0, 0.0), (2.0, 0.0)]).expect("valid");
        assert_eq!(idle.initial_rate(), 0.0);
    }

    #[test]
    fn exact_at_measured_points_and_linear_between() {
        let c = scan_like();
        for &(t, w) in c.points() {
            assert_eq!(c.at(t), w);
        }
        assert_eq!(c.at(0.5), 32.0 * MIB);
        assert_eq!(c.at(3.0), 144.0 * MIB);
        assert_eq!(c.at(0.0), 0.0);
        assert_eq!(c.at(-1.0), 0.0);
        assert_eq!(c.initial_rate(), 64.0 * MIB);
    }

    #[test]
    fn saturates_at_the_measured_plateau() {
        let c = scan_like();
        assert_eq!(c.at(100.0), 160.0 * MIB);
        assert_eq!(c.at(1e9), 160.0 * MIB);
    }

    #[test]
    fn is_monotone_even_when_measurements_are_not() {
        let c = WorkingSet::new(vec![
            (1.0, 50.0 * MIB),
            (2.0, 40.0 * MIB),
            (4.0, 90.0 * MIB),
        ])
        .expect("valid");
        assert_eq!(c.points()[1].1, 50.0 * MIB);
        let mut last = 0.0;
        for i in 0..2000 {
            let w = c.at(f64::from(i) * 0.05);
            assert!(w >= last, "{w} < {last} at step {i}");
            last = w;
        }
    }

    #[test]
    fn uniform_over_a_buffer_extrapolates_to_its_plateau() {
        // W(t) = B (1 - exp(-r t / B)): the slope-decay extrapolation is exact for it.
        let (b, r) = (128.0 * MIB, 32.0 * MIB);
        let w = |t: f64| b * -(-r * t / b).exp_m1();
        let c =
            WorkingSet::new([2.0, 4.0, 8.0].iter().map(|&t| (t, w(t))).collect()).expect("valid");
        for t in [10.0, 16.0, 30.0, 60.0] {
            let rel = (c.at(t) - w(t)).abs() / w(t);
            assert!(rel < 0.03, "t={t}: {} vs {}", c.at(t), w(t));
        }
        assert!(c.at(1e6) <= b * 1.05, "{}", c.at(1e6));
    }

    #[test]
    fn one_point_or_a_steepening_tail_continues_linearly() {
        let one = WorkingSet::new(vec![(2.0, 10.0 * MIB)]).expect("valid");
        assert_eq!(one.at(4.0), 20.0 * MIB);
        let steep = WorkingSet::new(vec![(1.0, MIB), (2.0, 4.0 * MIB)]).expect("valid");
        assert_eq!(steep.at(3.0), 7.0 * MIB);
    }

    #[test]
    fn medians_per_period() {
        let rows = [
            (2.0, 30.0),
            (1.0, 50.0),
            (2.0, 31.0),
            (1.0, 1000.0),
            (1.0, 52.0),
            (2.0, 29.0),
        ];
        let c = WorkingSet::from_rates(&rows).expect("valid");
        assert_eq!(c.points(), &[(1.0, 52.0), (2.0, 60.0)]);
    }

    #[test]
    fn refuses_hostile_points() {
        assert_eq!(WorkingSet::new(vec![]), Err(CurveError::Empty));
        assert!(matches!(
            WorkingSet::new(vec![(1.0, 1.0); MAX_POINTS + 1]),
            Err(CurveError::TooMany(_))
        ));
        for bad in [
            vec![(0.0, 1.0)],
            vec![(f64::NAN, 1.0)],
            vec![(1e9, 1.0)],
            vec![(2.0, 1.0), (2.0, 1.0)],
            vec![(2.0, 1.0), (1.0, 1.0)],
        ] {
            assert!(
                matches!(WorkingSet::new(bad.clone()), Err(CurveError::Period { .. })),
                "{bad:?}"
            );
        }
        for bad in [-1.0, f64::INFINITY, f64::NAN, 1e300] {
            assert!(matches!(
                WorkingSet::new(vec![(1.0, bad)]),
                Err(CurveError::Bytes { .. })
            ));
        }
    }

    #[test]
    fn points_spec_round_trips_exactly() {
        let c = WorkingSet::new(vec![(1.0, 67_108_864.5), (2.5, 1e8 / 3.0)]).expect("valid");
        let back: Vec<(f64, f64)> = c
            .to_points_spec()
            .split(';')
            .map(|p| {
                let (t, w) = p.split_once('@').expect("T@W");
                (t.parse().expect("t"), w.parse().expect("w"))
            })
            .collect();
        assert_eq!(back, c.points());
    }
}
