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
//! the second are ignored (so `livemig qemu dirty-trace` may add its own).

use std::path::Path;

use crate::rate::{RateError, RateSeries};

/// The header line every trace starts with.
pub const HEADER: &str = "time_s,dirty_rate_bytes_per_s";

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
}

/// Reads a trace file into a rate series.
pub fn read(path: &Path) -> Result<RateSeries, TraceError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
        path: name.clone(),
        source,
    })?;
    parse(&name, &text)
}

/// Parses trace text; `name` is used in error messages.
pub fn parse(name: &str, text: &str) -> Result<RateSeries, TraceError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    match lines.next() {
        Some((_, h)) if h.replace(' ', "").starts_with(HEADER) => {}
        other => {
            return Err(TraceError::Header {
                path: name.to_string(),
                got: other.map(|(_, l)| l.to_string()).unwrap_or_default(),
            })
        }
    }
    let mut steps = Vec::new();
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
        steps.push((t, r));
    }
    RateSeries::steps(steps).map_err(|source| TraceError::Series {
        path: name.to_string(),
        source,
    })
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

    #[test]
    fn missing_file_is_an_error() {
        let e = read(Path::new("/nonexistent/trace.csv")).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/trace.csv"));
    }
}
