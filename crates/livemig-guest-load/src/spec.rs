//! The load spec: `PATTERN:rate=R,buffer=B[,hot=F,share=S][,heartbeat=D]`.

use livemig_workload::units::{parse_duration, parse_fraction, parse_rate, parse_size};

/// Which pages the writes hit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// No writes at all (only the heartbeat).
    Idle,
    /// Every page of the buffer equally likely.
    Uniform,
    /// A fraction `hot` of the pages takes a share `share` of the writes.
    HotCold { hot: f64, share: f64 },
    /// A sequential sweep over the buffer, wrapping around.
    Scan,
}

/// What the guest program does.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSpec {
    pub pattern: Pattern,
    /// Page writes per second times the page size (bytes/s).
    pub rate: f64,
    /// Bytes of the buffer the writes go to (filled once at start).
    pub buffer: usize,
    /// Seconds between two heartbeat lines.
    pub heartbeat_s: f64,
}

/// Why a load spec was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("unknown load pattern `{0}` (expected idle, uniform, hotcold or scan)")]
    Pattern(String),
    #[error("`{0}` is not a key=value pair")]
    Pair(String),
    #[error("unknown key `{0}` (expected rate, buffer, hot, share, heartbeat)")]
    Key(String),
    #[error("key `{0}` is given twice")]
    Duplicate(String),
    #[error("bad value for `{key}`: {message}")]
    Value { key: String, message: String },
    #[error("the buffer must be at least one page, got {0} bytes")]
    Buffer(usize),
    #[error("hot must be in (0, 1) and share in [0, 1], got hot={hot}, share={share}")]
    HotCold { hot: f64, share: f64 },
    #[error("no `livemig.load=` parameter on the kernel command line")]
    NotOnCmdline,
}

impl LoadSpec {
    /// Parses `PATTERN:key=value,...`; a bare `PATTERN` takes the defaults (rate 0, 16 MiB).
    pub fn parse(s: &str) -> Result<LoadSpec, SpecError> {
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        let mut rate = 0.0;
        let mut buffer = 16usize << 20;
        let mut heartbeat_s = 0.1;
        let mut hot = 0.1;
        let mut share = 0.9;
        let mut seen: Vec<&str> = Vec::new();
        for pair in rest.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| SpecError::Pair(pair.to_string()))?;
            if seen.contains(&k) {
                return Err(SpecError::Duplicate(k.to_string()));
            }
            seen.push(k);
            let bad = |e: livemig_workload::units::UnitError| SpecError::Value {
                key: k.to_string(),
                message: e.to_string(),
            };
            match k {
                "rate" => rate = parse_rate(v).map_err(bad)?,
                "buffer" => buffer = parse_size(v).map_err(bad)? as usize,
                "heartbeat" => heartbeat_s = parse_duration(v).map_err(bad)?,
                "hot" => hot = parse_fraction(v).map_err(bad)?,
                "share" => share = parse_fraction(v).map_err(bad)?,
                _ => return Err(SpecError::Key(k.to_string())),
            }
        }
        let pattern = match kind {
            "idle" => Pattern::Idle,
            "uniform" => Pattern::Uniform,
            "scan" => Pattern::Scan,
            "hotcold" => {
                if !(hot > 0.0 && hot < 1.0 && (0.0..=1.0).contains(&share)) {
                    return Err(SpecError::HotCold { hot, share });
                }
                Pattern::HotCold { hot, share }
            }
            other => return Err(SpecError::Pattern(other.to_string())),
        };
        if buffer < crate::PAGE {
            return Err(SpecError::Buffer(buffer));
        }
        if heartbeat_s <= 0.0 {
            return Err(SpecError::Value {
                key: "heartbeat".into(),
                message: "must be positive".into(),
            });
        }
        Ok(LoadSpec {
            pattern,
            rate: if pattern == Pattern::Idle { 0.0 } else { rate },
            buffer,
            heartbeat_s,
        })
    }

    /// Finds `livemig.load=SPEC` in a kernel command line and parses it.
    pub fn from_cmdline(cmdline: &str) -> Result<LoadSpec, SpecError> {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("livemig.load="))
            .ok_or(SpecError::NotOnCmdline)
            .and_then(LoadSpec::parse)
    }

    /// Pages in the buffer.
    pub fn pages(&self) -> usize {
        self.buffer / crate::PAGE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_pattern_and_unit() {
        let s = LoadSpec::parse("hotcold:rate=8MiB/s,buffer=64MiB,hot=25%,share=0.9").expect("ok");
        assert_eq!(s.rate, 8.0 * 1024.0 * 1024.0);
        assert_eq!(s.buffer, 64 << 20);
        assert_eq!(s.pages(), 16384);
        assert_eq!(
            s.pattern,
            Pattern::HotCold {
                hot: 0.25,
                share: 0.9
            }
        );
        assert_eq!(LoadSpec::parse("idle").expect("ok").rate, 0.0);
        let u = LoadSpec::parse("uniform:rate=1MiB/s,heartbeat=200ms").expect("ok");
        assert_eq!(u.heartbeat_s, 0.2);
        assert_eq!(u.pattern, Pattern::Uniform);
    }

    #[test]
    fn refuses_bad_specs_with_reasons() {
        assert!(matches!(
            LoadSpec::parse("zigzag:rate=1"),
            Err(SpecError::Pattern(_))
        ));
        assert!(matches!(
            LoadSpec::parse("uniform:speed=1"),
            Err(SpecError::Key(_))
        ));
        assert!(matches!(
            LoadSpec::parse("uniform:rate"),
            Err(SpecError::Pair(_))
        ));
        assert!(matches!(
            LoadSpec::parse("uniform:rate=fast"),
            Err(SpecError::Value { .. })
        ));
        assert!(matches!(
            LoadSpec::parse("hotcold:hot=2"),
            Err(SpecError::HotCold { .. })
        ));
        assert!(matches!(
            LoadSpec::parse("uniform:buffer=100"),
            Err(SpecError::Buffer(100))
        ));
    }

    /// Regression (issue 8): a key given twice was silently last-wins.
    #[test]
    fn a_key_given_twice_is_refused() {
        assert_eq!(
            LoadSpec::parse("uniform:rate=1MiB/s,buffer=32MiB,rate=2MiB/s"),
            Err(SpecError::Duplicate("rate".into()))
        );
        assert_eq!(
            LoadSpec::parse("hotcold:hot=5%,hot=10%"),
            Err(SpecError::Duplicate("hot".into()))
        );
    }

    #[test]
    fn finds_the_spec_on_a_kernel_command_line() {
        let s =
            LoadSpec::from_cmdline("console=ttyS0 quiet livemig.load=scan:rate=2MiB/s panic=-1")
                .expect("found");
        assert_eq!(s.pattern, Pattern::Scan);
        assert_eq!(
            LoadSpec::from_cmdline("console=ttyS0"),
            Err(SpecError::NotOnCmdline)
        );
    }
}
