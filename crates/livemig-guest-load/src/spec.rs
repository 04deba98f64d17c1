//! The load spec: `PATTERN:rate=R,buffer=B[,hot=F,share=S][,s=X][,heartbeat=D][,work=N]`.
//!
//! `work=N` makes every page write cost CPU: N rounds of a multiply-xorshift mix before the
//! write (default 0). A guest with work dirties at most what its vCPU can compute, so a CPU
//! throttle slows its dirtying; without it a page write is one store and a guest keeps its rate
//! on a sliver of its vCPU.
//!
//! The pattern is the workload crate's [`Pattern`], parsed by [`Pattern::parse_named`], so the
//! guest writes exactly what the simulator models (`livemig_workload::DirtyModel`): `uniform`,
//! `hotcold` (hot and share default to 10 % and 90 %), `zipf` (`s` defaults to 1) and `scan`.
//! `idle` is `uniform` at rate 0, as in workload specs. Keys that the pattern does not use
//! (`hot` on `uniform`, ...) are accepted and ignored, as they always were.

use livemig_workload::units::{parse_duration, parse_rate, parse_size, UnitError};
use livemig_workload::Pattern;

/// What the guest program does.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSpec {
    /// Which pages the writes hit.
    pub pattern: Pattern,
    /// Page writes per second times the page size (bytes/s); 0 for `idle`.
    pub rate: f64,
    /// Bytes of the buffer the writes go to (filled once at start).
    pub buffer: usize,
    /// Seconds between two heartbeat lines.
    pub heartbeat_s: f64,
    /// Rounds of CPU work before every page write (0: none).
    pub work: u32,
}

/// Why a load spec was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("unknown load pattern `{0}` (expected idle, uniform, hotcold, zipf or scan)")]
    Pattern(String),
    #[error("`{0}` is not a key=value pair")]
    Pair(String),
    #[error("unknown key `{0}` (expected rate, buffer, hot, share, s, heartbeat, work)")]
    Key(String),
    #[error("key `{0}` is given twice")]
    Duplicate(String),
    #[error("bad value for `{key}`")]
    Value {
        key: String,
        #[source]
        source: UnitError,
    },
    #[error("bad parameter of the `{pattern}` pattern")]
    Params {
        pattern: String,
        #[source]
        source: Box<livemig_workload::SpecError>,
    },
    #[error("the buffer must be at least one page, got {0} bytes")]
    Buffer(usize),
    #[error("the heartbeat period must be positive")]
    Heartbeat,
    #[error("work must be a whole number from 0 to {MAX_WORK}, got `{0}`")]
    Work(String),
    #[error("no `livemig.load=` parameter on the kernel command line")]
    NotOnCmdline,
}

/// Keys a load spec may give.
const KEYS: [&str; 7] = ["rate", "buffer", "hot", "share", "s", "heartbeat", "work"];
/// The most rounds of work per page write (about a millisecond of a TCG vCPU).
pub const MAX_WORK: u32 = 100_000;

impl LoadSpec {
    /// Parses `PATTERN:key=value,...`; a bare `PATTERN` takes the defaults (rate 0, 16 MiB,
    /// heartbeat 100 ms).
    pub fn parse(s: &str) -> Result<LoadSpec, SpecError> {
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for pair in rest.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| SpecError::Pair(pair.to_string()))?;
            if !KEYS.contains(&k) {
                return Err(SpecError::Key(k.to_string()));
            }
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(SpecError::Duplicate(k.to_string()));
            }
            pairs.push((k, v));
        }
        let get = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let value = |key: &str, parse: fn(&str) -> Result<f64, UnitError>, default: f64| {
            get(key).map_or(Ok(default), |v| {
                parse(v).map_err(|source| SpecError::Value {
                    key: key.to_string(),
                    source,
                })
            })
        };
        let rate = value("rate", parse_rate, 0.0)?;
        let buffer = value("buffer", parse_size, (16u64 << 20) as f64)? as usize;
        let heartbeat_s = value("heartbeat", parse_duration, 0.1)?;
        let work = match get("work") {
            None => 0,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|&n| n <= MAX_WORK)
                .ok_or_else(|| SpecError::Work(v.to_string()))?,
        };
        let (pattern, rate) = match kind {
            "idle" => (Pattern::Uniform, 0.0),
            name => {
                let pattern = Pattern::parse_named(name, get).map_err(|e| match e {
                    livemig_workload::SpecError::UnknownPattern(p) => SpecError::Pattern(p),
                    source => SpecError::Params {
                        pattern: name.to_string(),
                        source: Box::new(source),
                    },
                })?;
                (pattern, rate)
            }
        };
        if buffer < crate::PAGE {
            return Err(SpecError::Buffer(buffer));
        }
        if heartbeat_s <= 0.0 {
            return Err(SpecError::Heartbeat);
        }
        Ok(LoadSpec {
            pattern,
            rate,
            buffer,
            heartbeat_s,
            work,
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
    fn work_is_a_bounded_whole_number() {
        assert_eq!(LoadSpec::parse("scan:rate=8MiB/s").expect("ok").work, 0);
        assert_eq!(
            LoadSpec::parse("scan:rate=8MiB/s,work=400")
                .expect("ok")
                .work,
            400
        );
        for bad in ["work=-1", "work=1.5", "work=x", "work=100001", "work="] {
            let e = LoadSpec::parse(&format!("scan:rate=8MiB/s,{bad}")).expect_err(bad);
            assert!(matches!(e, SpecError::Work(_)), "{bad}: {e}");
        }
    }

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
        let idle = LoadSpec::parse("idle").expect("ok");
        assert_eq!((idle.pattern, idle.rate), (Pattern::Uniform, 0.0));
        // Idle never writes, whatever rate it is given (as before).
        assert_eq!(LoadSpec::parse("idle:rate=1MiB/s").expect("ok").rate, 0.0);
        let u = LoadSpec::parse("uniform:rate=1MiB/s,heartbeat=200ms").expect("ok");
        assert_eq!(u.heartbeat_s, 0.2);
        assert_eq!(u.pattern, Pattern::Uniform);
        assert_eq!(u.buffer, 16 << 20);
        let z = LoadSpec::parse("zipf:rate=1MiB/s,s=1.2").expect("ok");
        assert_eq!(z.pattern, Pattern::Zipf { s: 1.2 });
    }

    #[test]
    fn hotcold_takes_the_workload_defaults() {
        let s = LoadSpec::parse("hotcold:rate=1MiB/s").expect("ok");
        assert_eq!(
            s.pattern,
            Pattern::HotCold {
                hot: 0.1,
                share: 0.9
            }
        );
    }

    /// Specs of the old format keep their meaning: keys a pattern does not use are ignored.
    #[test]
    fn old_specs_still_parse() {
        for spec in [
            "uniform:rate=1MiB/s,buffer=32MiB",
            "uniform:rate=32MiB/s,buffer=96MiB",
            "hotcold:rate=3MiB/s,buffer=48MiB,hot=20%,share=0.9",
            "scan:rate=2MiB/s,heartbeat=50ms",
            "uniform:rate=1MiB/s,hot=5%",
            "idle",
        ] {
            LoadSpec::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        }
    }

    #[test]
    fn refuses_bad_specs_with_reasons() {
        assert!(matches!(
            LoadSpec::parse("zigzag:rate=1"),
            Err(SpecError::Pattern(p)) if p == "zigzag"
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
        let e = LoadSpec::parse("hotcold:hot=2").expect_err("out of range");
        assert!(matches!(e, SpecError::Params { .. }), "{e}");
        let why = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(
            why.as_deref(),
            Some("hot=2 is out of range: strictly between 0% and 100%")
        );
        assert!(matches!(
            LoadSpec::parse("hotcold:share=101%"),
            Err(SpecError::Params { .. })
        ));
        assert!(matches!(
            LoadSpec::parse("zipf:s=-1"),
            Err(SpecError::Params { .. })
        ));
        assert!(matches!(
            LoadSpec::parse("uniform:buffer=100"),
            Err(SpecError::Buffer(100))
        ));
        assert!(matches!(
            LoadSpec::parse("uniform:heartbeat=0s"),
            Err(SpecError::Heartbeat)
        ));
    }

    /// Regression (issue 8): a key given twice was silently last-wins.
    #[test]
    fn a_key_given_twice_is_refused() {
        assert!(matches!(
            LoadSpec::parse("uniform:rate=1MiB/s,buffer=32MiB,rate=2MiB/s"),
            Err(SpecError::Duplicate(k)) if k == "rate"
        ));
        assert!(matches!(
            LoadSpec::parse("hotcold:hot=5%,hot=10%"),
            Err(SpecError::Duplicate(k)) if k == "hot"
        ));
    }

    #[test]
    fn finds_the_spec_on_a_kernel_command_line() {
        let s =
            LoadSpec::from_cmdline("console=ttyS0 quiet livemig.load=scan:rate=2MiB/s panic=-1")
                .expect("found");
        assert_eq!(s.pattern, Pattern::Scan);
        assert!(matches!(
            LoadSpec::from_cmdline("console=ttyS0"),
            Err(SpecError::NotOnCmdline)
        ));
    }
}
