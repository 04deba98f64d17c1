//! The trace CSV format: a recorded dirty-rate time series, replayed as a write rate.
//!
//! ```text
//! # comment lines start with '#'; blank lines are ignored
//! time_s,dirty_rate_bytes_per_s
//! 0,104857600
//! 1.0,125829120
//! ```
//!
//! Each row's rate holds from its time until the next row's; the last one holds after the end.
//! Times are seconds from the start of the recording, strictly increasing. Extra columns after
//! the second are ignored (so `livemig qemu dirty-trace` may add its own), except one:
//!
//! **Working-set traces.** When the header's third column is `period_s`, each row also says
//! over how many seconds its rate was measured (QEMU's `calc-dirty-rate` counts distinct pages,
//! so `rate x period` is the distinct bytes dirtied in that period). A trace whose rows carry
//! two or more different periods is a working-set trace: [`Trace::working_set`] turns it into
//! the curve `W(period)` (the median rate of each period times the period), and a `trace:`
//! workload replays that curve rather than the rate series (see [`crate::spec`]). Readers that
//! know only the first two columns still read it as a rate series.
//!
//! ```text
//! time_s,dirty_rate_bytes_per_s,period_s
//! 0,67108864,1
//! 1.1,66060288,2
//! 3.2,41943040,4
//! ```

use std::path::Path;

use crate::rate::{RateError, RateSeries};
use crate::workingset::{CurveError, WorkingSet, MAX_POINTS};

/// The header line every trace starts with.
pub const HEADER: &str = "time_s,dirty_rate_bytes_per_s";

/// The optional third column of a working-set trace.
pub const PERIOD_COLUMN: &str = "period_s";

/// Hard cap on a trace's size (rows), so a hostile file cannot exhaust memory.
pub const MAX_ROWS: usize = 1_000_000;

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read trace file {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the first line must be the header `{HEADER}`, got `{got}`")]
    Header { path: String, got: String },
    #[error("{path}:{line}: `{text}` is not `time_s,rate` with two numbers")]
    Row {
        path: String,
        line: usize,
        text: String,
    },
    #[error("{path}: more than {MAX_ROWS} rows")]
    TooLong { path: String },
    #[error("{path}")]
    Series {
        path: String,
        #[source]
        source: RateError,
    },
    #[error("{path}: the working-set curve of its periods")]
    Curve {
        path: String,
        #[source]
        source: CurveError,
    },
}

/// A parsed trace: its rate series and, when the header has a `period_s` column, each row's
/// measurement period.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The rates over time.
    pub series: RateSeries,
    /// Each row's period (seconds), in row order; `None` without a `period_s` column.
    pub periods: Option<Vec<f64>>,
}

impl Trace {
    /// How many different periods the rows were measured over (0 without periods).
    pub fn distinct_periods(&self) -> usize {
        let Some(periods) = &self.periods else {
            return 0;
        };
        let mut p = periods.clone();
        p.sort_by(f64::total_cmp);
        p.dedup();
        p.len()
    }

    /// The working-set curve of the rows' `(period, rate)` (median per period), its rates
    /// multiplied by `scale`; `None` without periods.
    pub fn working_set(&self, scale: f64) -> Option<Result<WorkingSet, CurveError>> {
        let periods = self.periods.as_ref()?;
        if self.distinct_periods() > MAX_POINTS {
            return Some(Err(CurveError::TooMany(self.distinct_periods())));
        }
        let rows: Vec<(f64, f64)> = periods
            .iter()
            .zip(self.series.as_steps())
            .map(|(&p, &(_, r))| (p, r * scale))
            .collect();
        Some(WorkingSet::from_rates(&rows))
    }
}

/// Reads a trace file into a rate series.
pub fn read(path: &Path) -> Result<RateSeries, TraceError> {
    Ok(read_trace(path)?.series)
}

/// Reads a trace file with its periods, if it has them.
pub fn read_trace(path: &Path) -> Result<Trace, TraceError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
        path: name.clone(),
        source,
    })?;
    parse_trace(&name, &text)
}

/// Parses trace text into a rate series; `name` is used in error messages.
pub fn parse(name: &str, text: &str) -> Result<RateSeries, TraceError> {
    Ok(parse_trace(name, text)?.series)
}

/// Parses trace text with its periods, if the header has a `period_s` column.
pub fn parse_trace(name: &str, text: &str) -> Result<Trace, TraceError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let with_periods = match lines.next() {
        Some((_, h)) if h.replace(' ', "").starts_with(HEADER) => {
            h.split(',').nth(2).map(str::trim) == Some(PERIOD_COLUMN)
        }
        other => {
            return Err(TraceError::Header {
                path: name.to_string(),
                got: other.map(|(_, l)| l.to_string()).unwrap_or_default(),
            })
        }
    };
    let mut steps = Vec::new();
    let mut periods = Vec::new();
    for (line, text) in lines {
        if steps.len() >= MAX_ROWS {
            return Err(TraceError::TooLong {
                path: name.to_string(),
            });
        }
        let mut cols = text.split(',').map(str::trim);
        let row = || TraceError::Row {
            path: name.to_string(),
            line,
            text: text.to_string(),
        };
        let t: f64 = cols.next().and_then(|c| c.parse().ok()).ok_or_else(row)?;
        let r: f64 = cols.next().and_then(|c| c.parse().ok()).ok_or_else(row)?;
        if with_periods {
            let p: f64 = cols.next().and_then(|c| c.parse().ok()).ok_or_else(row)?;
            periods.push(p);
        }
        steps.push((t, r));
    }
    let series = RateSeries::steps(steps).map_err(|source| TraceError::Series {
        path: name.to_string(),
        source,
    })?;
    let trace = Trace {
        series,
        periods: with_periods.then_some(periods),
    };
    // Periods are checked here, so that a trace that reads is a trace that replays.
    if let Some(Err(source)) = trace.working_set(1.0) {
        return Err(TraceError::Curve {
            path: name.to_string(),
            source,
        });
    }
    Ok(trace)
}

/// Writes a series in the trace format.
pub fn to_csv(steps: &[(f64, f64)]) -> String {
    let mut out = format!("{HEADER}\n");
    for (t, r) in steps {
        out.push_str(&format!("{t},{r}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let steps = vec![(0.0, 1e6), (1.5, 2e6)];
        let s = parse("t", &to_csv(&steps)).expect("valid");
        assert_eq!(s.as_steps(), &steps[..]);
    }

    #[test]
    fn reports_bad_rows_with_line_numbers() {
        let e = parse("t.csv", "# x\ntime_s,dirty_rate_bytes_per_s\n0,1\nzero,2\n")
            .expect_err("bad row");
        assert!(crate::chain(&e).contains("t.csv:4"), "{e}");
        let e = parse("t.csv", "time,rate\n0,1\n").expect_err("bad header");
        assert!(crate::chain(&e).contains("header"));
        let e = parse("t.csv", "time_s,dirty_rate_bytes_per_s\n0,-5\n").expect_err("negative");
        assert!(crate::chain(&e).contains("rate -5"), "{e}");
    }

    const WS: &str = "# recorded\ntime_s,dirty_rate_bytes_per_s,period_s\n\
        0,67108864,1\n1,68157440,2\n3,41943040,4\n7,66060288,1\n8,67108864,2\n10,40894464,4\n";

    #[test]
    fn working_set_traces_read_as_a_curve_and_as_a_rate_series() {
        let t = parse_trace("t", WS).expect("valid");
        assert_eq!(t.distinct_periods(), 3);
        let c = t.working_set(1.0).expect("periods").expect("valid");
        let mib = 1024.0 * 1024.0;
        // Medians: 63.5, 64.5 and 39.5 MiB/s.
        assert_eq!(
            c.points(),
            &[(1.0, 63.5 * mib), (2.0, 129.0 * mib), (4.0, 158.0 * mib)]
        );
        let doubled = t.working_set(2.0).expect("periods").expect("valid");
        assert_eq!(doubled.points()[0].1, 127.0 * mib);
        // Old readers: the same file is a rate series.
        assert_eq!(parse("t", WS).expect("valid").as_steps().len(), 6);
        // A two-column trace has no periods.
        let plain = parse_trace("t", "time_s,dirty_rate_bytes_per_s\n0,1\n").expect("valid");
        assert_eq!(plain.periods, None);
        assert!(plain.working_set(1.0).is_none());
    }

    #[test]
    fn hostile_working_set_traces_are_refused() {
        let head = "time_s,dirty_rate_bytes_per_s,period_s\n";
        let e = parse_trace("t.csv", &format!("{head}0,1\n")).expect_err("no period");
        assert!(matches!(e, TraceError::Row { line: 2, .. }), "{e}");
        for bad in ["0,1,0", "0,1,-2", "0,1,NaN", "0,1,inf", "0,1,1e9"] {
            let e = parse_trace("t.csv", &format!("{head}{bad}\n")).expect_err(bad);
            assert!(matches!(e, TraceError::Curve { .. }), "{bad}: {e}");
            assert!(crate::chain(&e).contains("period"), "{}", crate::chain(&e));
        }
        // More distinct periods than a curve may have points.
        let many: String = (1..=MAX_POINTS + 1)
            .map(|i| format!("{i},1,{i}\n"))
            .collect();
        let e = parse_trace("t.csv", &format!("{head}{many}")).expect_err("too many");
        assert!(
            matches!(
                e,
                TraceError::Curve {
                    source: CurveError::TooMany(_),
                    ..
                }
            ),
            "{e}"
        );
        // A huge rate over a long period overflows no curve.
        let e = parse_trace("t.csv", &format!("{head}0,1e12,80000\n")).expect_err("too big");
        assert!(matches!(e, TraceError::Curve { .. }), "{e}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let e = read(Path::new("/nonexistent/trace.csv")).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/trace.csv"));
    }
}
