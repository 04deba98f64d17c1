//! Quantities with units: parsing (`4GiB`, `100Mbit/s`, `300ms`, `10%`) and human printing.
//!
//! A leaf crate: the policy crate reads its settings with it and the workload crate re-exports
//! it as `livemig_workload::units`.

/// A value that could not be read as a quantity of the expected kind.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{value}` is not a valid {kind} (examples: {examples})")]
pub struct UnitError {
    /// The offending text.
    pub value: String,
    /// What was expected.
    pub kind: &'static str,
    /// Valid examples.
    pub examples: &'static str,
}

/// Splits `4GiB` into (4.0, "GiB"): the longest leading part that reads as a finite number.
fn split_number(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    (1..=s.len())
        .rev()
        .filter(|&i| s.is_char_boundary(i))
        .find_map(|i| s[..i].parse::<f64>().ok().map(|v| (v, s[i..].trim())))
        .filter(|(v, _)| v.is_finite())
}

fn size_unit(u: &str) -> Option<f64> {
    Some(match u {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" | "K" | "k" => 1024.0,
        "MiB" | "M" => 1024.0 * 1024.0,
        "GiB" | "G" => 1024.0 * 1024.0 * 1024.0,
        "TiB" | "T" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    })
}

fn bit_unit(u: &str) -> Option<f64> {
    Some(match u {
        "bit" | "b" => 1.0 / 8.0,
        "kbit" | "Kbit" | "kb" => 1e3 / 8.0,
        "Mbit" | "Mb" => 1e6 / 8.0,
        "Gbit" | "Gb" => 1e9 / 8.0,
        _ => return None,
    })
}

/// Parses a size in bytes: `4GiB`, `512MiB`, `64M` (binary), `1.5GB` (decimal), `4096`.
/// Negative sizes are refused.
pub fn parse_size(s: &str) -> Result<f64, UnitError> {
    let err = || UnitError {
        value: s.to_string(),
        kind: "size",
        examples: "4GiB, 512MiB, 1.5GB, 4096",
    };
    let (v, unit) = split_number(s).ok_or_else(err)?;
    let mult = size_unit(unit).ok_or_else(err)?;
    if v < 0.0 {
        return Err(err());
    }
    Ok(v * mult)
}

/// Parses a rate in bytes/s: `100Mbit/s`, `10Gbit/s`, `125MB/s`, `300MiB/s`, `1Gbps`, or a
/// plain number of bytes/s. Negative rates are refused.
pub fn parse_rate(s: &str) -> Result<f64, UnitError> {
    let err = || UnitError {
        value: s.to_string(),
        kind: "rate",
        examples: "100Mbit/s, 10Gbit/s, 125MB/s, 300MiB/s",
    };
    let (v, unit) = split_number(s).ok_or_else(err)?;
    if v < 0.0 {
        return Err(err());
    }
    let unit = unit.trim();
    let mult = if unit.is_empty() {
        1.0
    } else if let Some(base) = unit.strip_suffix("ps") {
        bit_unit(&format!("{base}bit"))
            .or_else(|| bit_unit(base))
            .ok_or_else(err)?
    } else if let Some(base) = unit.strip_suffix("/s") {
        bit_unit(base).or_else(|| size_unit(base)).ok_or_else(err)?
    } else {
        return Err(err());
    };
    Ok(v * mult)
}

/// Parses a duration in seconds: `300ms`, `1.5s`, `2m`, `1h`, `20us`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<f64, UnitError> {
    let err = || UnitError {
        value: s.to_string(),
        kind: "duration",
        examples: "300ms, 1.5s, 2m, 1h",
    };
    let (v, unit) = split_number(s).ok_or_else(err)?;
    if v < 0.0 {
        return Err(err());
    }
    let mult = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    Ok(v * mult)
}

/// Whether `s` is a plain number other than zero (zero needs no unit).
fn unitless(s: &str) -> bool {
    split_number(s).is_some_and(|(v, u)| u.is_empty() && v != 0.0)
}

/// [`parse_rate`] for what an operator types (flags, scenario files): a plain number is refused,
/// since `--min-bandwidth 100` read as 100 bytes/s is never what was meant.
pub fn parse_rate_with_unit(s: &str) -> Result<f64, UnitError> {
    if unitless(s) {
        return Err(UnitError {
            value: s.to_string(),
            kind: "rate with a unit",
            examples: "100Mbit/s, 10Gbit/s, 125MB/s, 300MiB/s",
        });
    }
    parse_rate(s)
}

/// [`parse_duration`] for what an operator types: a plain number is refused.
pub fn parse_duration_with_unit(s: &str) -> Result<f64, UnitError> {
    if unitless(s) {
        return Err(UnitError {
            value: s.to_string(),
            kind: "duration with a unit",
            examples: "300ms, 1.5s, 2m, 1h",
        });
    }
    parse_duration(s)
}

/// A downtime limit in seconds: a plain number is milliseconds, as QEMU, libvirt and every
/// tool an operator knows read it (`300` = 300 ms); with a unit, that unit (`0.3s`, `300ms`).
pub fn parse_downtime(s: &str) -> Result<f64, UnitError> {
    if unitless(s) {
        return parse_duration(s).map(|ms| ms * 1e-3);
    }
    parse_duration(s)
}

/// Parses a fraction: `10%` or `0.1`. Does not check the range.
pub fn parse_fraction(s: &str) -> Result<f64, UnitError> {
    let err = || UnitError {
        value: s.to_string(),
        kind: "fraction",
        examples: "10%, 0.1",
    };
    let (v, unit) = split_number(s).ok_or_else(err)?;
    match unit {
        "%" => Ok(v / 100.0),
        "" => Ok(v),
        _ => Err(err()),
    }
}

/// A number as an error message shows it: plain below 1e15, in exponent form from there
/// (`1e308` rather than 309 digits).
pub fn fmt_number(x: f64) -> String {
    if x.abs() < 1e15 {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

/// `1.50 GiB`, `64.0 MiB`, `512 B`.
pub fn fmt_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v.abs() >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

/// A rate in MiB/s, the unit operators read on QEMU and most dashboards.
pub fn fmt_rate(bps: f64) -> String {
    format!("{:.1} MiB/s", bps / (1024.0 * 1024.0))
}

/// `523 ms`, `12.4 s`, `9m 40s`.
pub fn fmt_duration(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 600.0 {
        format!("{s:.2} s")
    } else {
        format!("{}m {:02.0}s", (s / 60.0).floor(), s % 60.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4GiB"), Ok(4.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse_size("512MiB"), Ok(512.0 * 1024.0 * 1024.0));
        assert_eq!(parse_size("1.5GB"), Ok(1.5e9));
        assert_eq!(parse_size("4096"), Ok(4096.0));
        assert_eq!(parse_size("64M"), Ok(64.0 * 1024.0 * 1024.0));
        assert!(parse_size("-1GiB").is_err());
        assert!(parse_size("4 potatoes").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100Mbit/s"), Ok(12.5e6));
        assert_eq!(parse_rate("10Gbit/s"), Ok(1.25e9));
        assert_eq!(parse_rate("125MB/s"), Ok(125e6));
        assert_eq!(parse_rate("300MiB/s"), Ok(300.0 * 1024.0 * 1024.0));
        assert_eq!(parse_rate("1Gbps"), Ok(1.25e8));
        assert_eq!(parse_rate("1e6"), Ok(1e6));
        let e = parse_rate("-1").expect_err("negative");
        assert!(e.to_string().contains("`-1`"));
        assert!(parse_rate("5MiB").is_err());
    }

    #[test]
    fn durations_and_fractions() {
        assert_eq!(parse_duration("300ms"), Ok(0.3));
        assert_eq!(parse_duration("2m"), Ok(120.0));
        assert_eq!(parse_fraction("10%"), Ok(0.1));
        assert_eq!(parse_fraction("0.25"), Ok(0.25));
        assert!(parse_fraction("ten").is_err());
    }

    #[test]
    fn printing() {
        assert_eq!(fmt_bytes(64.0 * 1024.0 * 1024.0), "64.00 MiB");
        assert_eq!(fmt_rate(128.0 * 1024.0 * 1024.0), "128.0 MiB/s");
        assert_eq!(fmt_duration(0.3), "300 ms");
        assert_eq!(fmt_number(1.5), "1.5");
        assert_eq!(fmt_number(1e308), "1e308");
        assert_eq!(fmt_number(f64::INFINITY), "inf");
    }

    #[test]
    fn operator_values_need_units_and_downtime_reads_ms() {
        assert!(parse_rate_with_unit("100").is_err());
        assert_eq!(parse_rate_with_unit("0"), Ok(0.0), "zero needs no unit");
        assert_eq!(parse_rate_with_unit("100Mbit/s"), Ok(12.5e6));
        assert!(parse_duration_with_unit("10").is_err());
        assert_eq!(parse_duration_with_unit("300ms"), Ok(0.3));
        assert!((parse_downtime("300").expect("ms") - 0.3).abs() < 1e-12);
        assert_eq!(parse_downtime("2s"), Ok(2.0));
        assert!(parse_downtime("soon").is_err());
    }
}
