//! A piecewise-constant write rate over time, and how many bytes it writes in an interval.

use serde::{Deserialize, Serialize};

use crate::units::fmt_number;

/// Write rate (bytes/s) as steps: `steps[i] = (start_s, rate)`, each holding until the next
/// step starts; the first rate also holds before its start, the last one forever after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateSeries {
    steps: Vec<(f64, f64)>,
}

/// The fastest write rate a series may hold: 10 Tbit/s (1.25e12 bytes/s), the bound the
/// policy settings have too (`livemig_policy::MAX_RATE_BYTES_PER_S`).
pub const MAX_RATE: f64 = 10e12 / 8.0;

/// Why a series was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RateError {
    #[error("a rate series needs at least one step")]
    Empty,
    #[error(
        "step {index}: rate {} must be between 0 and 10 Tbit/s (1.25e12 bytes/s)",
        fmt_number(*.rate)
    )]
    Rate { index: usize, rate: f64 },
    #[error("step {index}: start time {start} s must be finite, non-negative and after the previous step")]
    Start { index: usize, start: f64 },
}

impl RateSeries {
    /// One constant rate.
    pub fn constant(rate: f64) -> Result<RateSeries, RateError> {
        RateSeries::steps(vec![(0.0, rate)])
    }

    /// Steps `(start_s, rate)` with strictly increasing, non-negative starts.
    pub fn steps(steps: Vec<(f64, f64)>) -> Result<RateSeries, RateError> {
        if steps.is_empty() {
            return Err(RateError::Empty);
        }
        let mut prev = f64::NEG_INFINITY;
        for (index, &(start, rate)) in steps.iter().enumerate() {
            if !(rate.is_finite() && (0.0..=MAX_RATE).contains(&rate)) {
                return Err(RateError::Rate { index, rate });
            }
            if !(start.is_finite() && start >= 0.0 && start > prev) {
                return Err(RateError::Start { index, start });
            }
            prev = start;
        }
        Ok(RateSeries { steps })
    }

    /// The steps.
    pub fn as_steps(&self) -> &[(f64, f64)] {
        &self.steps
    }

    /// The rate in force at time `t`.
    pub fn rate_at(&self, t: f64) -> f64 {
        let i = self.steps.partition_point(|&(start, _)| start <= t);
        self.steps[i.saturating_sub(1)].1
    }

    /// The highest rate of any step.
    pub fn peak(&self) -> f64 {
        self.steps.iter().map(|s| s.1).fold(0.0, f64::max)
    }

    /// Bytes written between `t0` and `t1` (the integral of the rate).
    pub fn written(&self, t0: f64, t1: f64) -> f64 {
        if t1 <= t0 {
            return 0.0;
        }
        if self.steps.len() == 1 {
            return self.steps[0].1 * (t1 - t0);
        }
        let mut total = 0.0;
        for (i, &(start, rate)) in self.steps.iter().enumerate() {
            let seg_start = if i == 0 { f64::NEG_INFINITY } else { start };
            let seg_end = self.steps.get(i + 1).map_or(f64::INFINITY, |s| s.0);
            let lo = t0.max(seg_start);
            let hi = t1.min(seg_end);
            if hi > lo {
                total += rate * (hi - lo);
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrates_steps() {
        let r = RateSeries::steps(vec![(0.0, 10.0), (5.0, 100.0), (10.0, 0.0)]).expect("valid");
        assert_eq!(r.written(0.0, 5.0), 50.0);
        assert_eq!(r.written(4.0, 6.0), 110.0);
        assert_eq!(r.written(9.0, 20.0), 100.0);
        assert_eq!(r.rate_at(7.0), 100.0);
        assert_eq!(r.rate_at(12.0), 0.0);
        assert_eq!(r.peak(), 100.0);
    }

    #[test]
    fn refuses_bad_steps() {
        assert_eq!(RateSeries::steps(vec![]), Err(RateError::Empty));
        assert!(matches!(
            RateSeries::steps(vec![(0.0, -1.0)]),
            Err(RateError::Rate { .. })
        ));
        // Regression (issue 8): rates that overflow every derived quantity.
        let e = RateSeries::constant(1e308).expect_err("too fast");
        assert_eq!(
            e,
            RateError::Rate {
                index: 0,
                rate: 1e308
            }
        );
        assert!(e.to_string().contains("rate 1e308 must be"), "{e}");
        assert!(RateSeries::constant(MAX_RATE).is_ok());
        assert!(matches!(
            RateSeries::steps(vec![(5.0, 1.0), (5.0, 2.0)]),
            Err(RateError::Start { index: 1, .. })
        ));
    }
}
