//! QEMU's `calc-dirty-rate`: one measurement, the pre-migration [`DirtySample`] for the
//! policy, and dirty-rate traces in the simulator's CSV format. A trace cycles through one or
//! more periods; with several it is a working-set trace (`livemig_workload::trace`): each
//! row's `rate x period` is the distinct bytes dirtied in that period, so the rows trace the
//! curve `W(period)`.

use std::time::Duration;

use livemig_policy::DirtySample;
use livemig_workload::trace::{HEADER, PERIOD_COLUMN};
use serde_json::json;

use crate::features::{self, DirtyMode};
use crate::qmp::{QmpClient, QmpError};
use crate::types::{DirtyRateInfo, DirtyRateStatus};

/// QEMU reports dirty rates in units of 2^20 bytes per second.
pub const RATE_UNIT: f64 = 1024.0 * 1024.0;
/// How often `query-dirty-rate` is polled while a measurement runs.
pub const POLL: Duration = Duration::from_millis(100);
/// Extra wait beyond the measurement's own period before giving up.
pub const GRACE: Duration = Duration::from_secs(10);

/// Why a dirty-rate measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    #[error("the QMP exchange for the dirty-rate measurement failed")]
    Qmp(#[from] QmpError),
    #[error("the measurement period must be a whole number of seconds >= 1 (QEMU 7.2), got {0:?}")]
    Period(Duration),
    #[error("QEMU did not finish the dirty-rate measurement within {0:?}")]
    Timeout(Duration),
    #[error("QEMU finished the measurement without a dirty rate")]
    NoRate,
}

/// One finished measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Seconds the measurement covered.
    pub period_s: f64,
    /// Distinct dirtied bytes per second over the period (QEMU's integer MiB/s, in bytes/s).
    pub rate_bytes_per_s: f64,
}

impl Measurement {
    /// The distinct bytes dirtied over the period, as a one-point [`DirtySample`].
    pub fn sample(&self) -> DirtySample {
        DirtySample {
            points: vec![(self.period_s, self.rate_bytes_per_s * self.period_s)],
            resolution_bytes_per_s: Some(RATE_UNIT),
        }
    }
}

/// Runs `calc-dirty-rate` for `period` in QEMU's default page-sampling mode (the only one
/// QEMU 7.2 survives under TCG) and waits for the result.
pub async fn measure(qmp: &mut QmpClient, period: Duration) -> Result<Measurement, DirtyError> {
    measure_in(qmp, period, DirtyMode::PageSampling, None).await
}

/// Runs `calc-dirty-rate` for `period` in `mode` (page-sampling: `sample_pages` per GiB, else
/// QEMU's default) and waits for the result. The mode is sent only when it is not the
/// default, so QEMUs without modes are asked as before. Take both from `features::probe`.
pub async fn measure_in(
    qmp: &mut QmpClient,
    period: Duration,
    mode: DirtyMode,
    sample_pages: Option<u64>,
) -> Result<Measurement, DirtyError> {
    let secs = period.as_secs();
    if secs == 0 || period.subsec_nanos() != 0 {
        return Err(DirtyError::Period(period));
    }
    let mut args = json!({ "calc-time": secs });
    match (mode, sample_pages) {
        (DirtyMode::PageSampling, Some(pages)) => args["sample-pages"] = json!(pages),
        (DirtyMode::PageSampling, None) => {}
        (other, _) => args["mode"] = json!(other.as_qmp()),
    }
    qmp.execute("calc-dirty-rate", Some(args)).await?;
    let limit = period + GRACE;
    let started = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(POLL).await;
        let info: DirtyRateInfo = qmp.execute_as("query-dirty-rate", None).await?;
        match info.status {
            DirtyRateStatus::Measured => {
                let rate = info.dirty_rate.ok_or(DirtyError::NoRate)?;
                return Ok(Measurement {
                    period_s: info.period_s().unwrap_or(secs as f64),
                    rate_bytes_per_s: rate.max(0.0) * RATE_UNIT,
                });
            }
            _ if started.elapsed() > limit => return Err(DirtyError::Timeout(limit)),
            _ => {}
        }
    }
}

/// One row of a recorded trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceRow {
    /// Seconds from the start of the recording to the start of this measurement.
    pub time_s: f64,
    pub rate_bytes_per_s: f64,
    pub period_s: f64,
}

/// The trace CSV (`livemig_workload::trace` format) with one extra column, the period.
pub fn to_csv(rows: &[TraceRow]) -> String {
    let mut out = format!(
        "# recorded by livemig qemu dirty-trace (calc-dirty-rate, page-sampling)\n\
         {HEADER},{PERIOD_COLUMN}\n"
    );
    for r in rows {
        out.push_str(&format!(
            "{},{},{}\n",
            r.time_s, r.rate_bytes_per_s, r.period_s
        ));
    }
    out
}

/// Measures back to back for `duration`, cycling through `periods` (whole seconds each; at
/// least one measurement of each, however short `duration`), calling `each` with every row as
/// it comes. Measures as the governor's pre-migration sample does: the mode and the pages per
/// GiB from [`features::probe`] (page-sampling with QEMU's most pages under TCG).
pub async fn record(
    qmp: &mut QmpClient,
    periods: &[Duration],
    duration: Duration,
    mut each: impl FnMut(&TraceRow),
) -> Result<Vec<TraceRow>, DirtyError> {
    if let Some(&bad) = periods
        .iter()
        .find(|p| p.is_zero() || p.subsec_nanos() != 0)
    {
        return Err(DirtyError::Period(bad));
    }
    let f = features::probe(qmp).await;
    let started = tokio::time::Instant::now();
    let mut rows: Vec<TraceRow> = Vec::new();
    for (i, &period) in periods.iter().cycle().enumerate() {
        let first_cycle = i < periods.len();
        if !first_cycle && started.elapsed() + period > duration + POLL {
            break;
        }
        let time_s = started.elapsed().as_secs_f64();
        let m = measure_in(qmp, period, f.dirty_rate_mode, f.dirty_sample_pages).await?;
        let row = TraceRow {
            time_s,
            rate_bytes_per_s: m.rate_bytes_per_s,
            period_s: m.period_s,
        };
        each(&row);
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_is_readable_by_the_trace_parser() {
        let rows = [
            TraceRow {
                time_s: 0.0,
                rate_bytes_per_s: 8.0 * RATE_UNIT,
                period_s: 1.0,
            },
            TraceRow {
                time_s: 1.1,
                rate_bytes_per_s: 2.0 * RATE_UNIT,
                period_s: 1.0,
            },
        ];
        let series = livemig_workload::trace::parse("t", &to_csv(&rows)).expect("valid trace");
        assert_eq!(
            series.as_steps(),
            &[(0.0, 8.0 * RATE_UNIT), (1.1, 2.0 * RATE_UNIT)][..]
        );
    }

    #[test]
    fn a_measurement_is_a_one_point_sample() {
        let m = Measurement {
            period_s: 2.0,
            rate_bytes_per_s: 100.0,
        };
        assert_eq!(m.sample().points, vec![(2.0, 200.0)]);
    }
}
