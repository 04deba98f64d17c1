//! Workload specifications: `KIND:key=value,...` on the command line and in scenario files.
//!
//! | spec | meaning |
//! |---|---|
//! | `idle` | nothing is written |
//! | `uniform:rate=R` | R bytes/s of page writes spread uniformly over all pages |
//! | `hotcold:rate=R,hot=F,share=S` | a fraction F of the pages receives a share S of the writes |
//! | `zipf:rate=R,s=X` | page ranks drawn from a Zipf law with exponent X |
//! | `scan:rate=R` | a sequential sweep: every write hits a new page until it wraps |
//! | `phased:steps=R1@T1;R2@T2;...[,pattern=P][,hot=..,share=..,s=..]` | rate R_i from time T_i on |
//! | `trace:file=PATH[,pattern=P][,scale=X][,replay=curve\|rate]` | a recorded trace (see [`crate::trace`]) |
//! | `workingset:points=T1@W1;T2@W2;...` | a measured working-set curve: W_i distinct bytes dirtied in T_i |
//!
//! A write of R bytes/s means R / S page-sized writes per second, each dirtying one page.
//! For `phased` and `trace` the access pattern P is `uniform` (default), `hotcold`, `zipf` or
//! `scan`; giving `hot`/`share` implies `hotcold` and `s` implies `zipf`.
//!
//! A `trace` whose rows were measured over two or more periods (`livemig qemu dirty-trace
//! --periods`) replays its working-set curve (`replay=curve`, the default for such a trace):
//! distinct dirt after `t` seconds is the measured `W(t)` (see [`crate::workingset`]), no
//! pattern is assumed and none may be given. `replay=rate` replays its rows as a rate series
//! with a pattern, as for any other trace. `workingset` is the same curve inline (what a
//! `trace` becomes when sent to a peer); its write rate is `W_1 / T_1` and its pattern, for
//! executors that write real pages (the engine's simulated guest), `uniform`.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::rate::{RateError, RateSeries};
use crate::trace::{self, TraceError};
use crate::units::{self, UnitError};
use crate::workingset::{CurveError, WorkingSet, MAX_POINTS};

/// Where a workload writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// Every page equally likely.
    Uniform,
    /// A fraction `hot` of the pages receives a share `share` of the writes.
    HotCold { hot: f64, share: f64 },
    /// Zipf law over page ranks with exponent `s`.
    Zipf { s: f64 },
    /// Sequential sweep.
    Scan,
}

impl Pattern {
    /// The pattern called `name` (`uniform`, `hotcold`, `zipf` or `scan`), its parameters read
    /// through `get`: `hot` and `share` for `hotcold` (defaults 10 % and 90 %), `s` for `zipf`
    /// (default 1). The one place these parameters are parsed and their ranges checked, for
    /// workload specs and the test guest's load specs alike; other keys are not read.
    pub fn parse_named<'a>(
        name: &str,
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Pattern, SpecError> {
        Ok(match name {
            "uniform" => Pattern::Uniform,
            "scan" => Pattern::Scan,
            "hotcold" => Pattern::HotCold {
                hot: fraction("hot", get("hot"), 0.1, true)?,
                share: fraction("share", get("share"), 0.9, false)?,
            },
            "zipf" => Pattern::Zipf {
                s: number("s", get("s"), 1.0)?,
            },
            other => return Err(SpecError::UnknownPattern(other.to_string())),
        })
    }
}

/// A parsed workload: an access pattern and a write-rate series.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Where writes land.
    pub pattern: Pattern,
    /// How fast writes come (bytes/s over time).
    pub rate: RateSeries,
    /// A measured working-set curve that replaces the pattern's model (see the module docs).
    curve: Option<WorkingSet>,
    spec: String,
}

/// Why a workload spec was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "unknown workload `{0}` (expected idle, uniform, hotcold, zipf, scan, phased, trace or workingset)"
    )]
    UnknownKind(String),
    #[error("workload `{kind}` needs `{key}=...`")]
    Missing { kind: String, key: &'static str },
    #[error("workload `{kind}` has no parameter `{key}` (it takes: {allowed})")]
    UnknownKey {
        kind: String,
        key: String,
        allowed: &'static str,
    },
    #[error("`{0}` is not `key=value`")]
    NotKeyValue(String),
    #[error("workload `{kind}` gives `{key}` twice")]
    DuplicateKey { kind: String, key: String },
    #[error("{key}={value}")]
    Value {
        key: String,
        value: String,
        #[source]
        source: UnitError,
    },
    #[error("{key}={value} is out of range: {expected}")]
    Range {
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("steps: `{0}` is not RATE@TIME (e.g. 100MiB/s@30s)")]
    Step(String),
    #[error(transparent)]
    Series(#[from] RateError),
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("unknown pattern `{0}` (expected uniform, hotcold, zipf or scan)")]
    UnknownPattern(String),
    #[error("workload `{0}` names a file; only self-contained specs are accepted here")]
    FileNotAllowed(String),
    #[error("the workload has {steps} rate steps; at most {max} can be inlined")]
    TooManySteps { steps: usize, max: usize },
    #[error("points: `{0}` is not PERIOD@BYTES (e.g. 4s@160MiB)")]
    Point(String),
    #[error("the working-set curve")]
    Curve(#[from] CurveError),
    #[error(
        "a working-set trace replays its curve, which replaces the access pattern: pattern, \
         hot, share and s apply only with replay=rate"
    )]
    PatternWithCurve,
    #[error("replay=curve needs a trace with a period_s column (livemig qemu dirty-trace)")]
    NoPeriods,
}

/// Most rate steps [`Workload::inline_spec`] writes into a `phased` spec.
pub const MAX_INLINE_STEPS: usize = 4096;

struct Params<'a> {
    kind: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Params<'a> {
    fn parse(kind: &'a str, rest: &'a str, allowed: &'static str) -> Result<Self, SpecError> {
        let mut pairs = Vec::new();
        for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| SpecError::NotKeyValue(part.to_string()))?;
            let k = k.trim();
            if !allowed.split(", ").any(|a| a == k) {
                return Err(SpecError::UnknownKey {
                    kind: kind.to_string(),
                    key: k.to_string(),
                    allowed,
                });
            }
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(SpecError::DuplicateKey {
                    kind: kind.to_string(),
                    key: k.to_string(),
                });
            }
            pairs.push((k, v.trim()));
        }
        Ok(Params { kind, pairs })
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn need(&self, key: &'static str) -> Result<&'a str, SpecError> {
        self.get(key).ok_or_else(|| SpecError::Missing {
            kind: self.kind.to_string(),
            key,
        })
    }

    fn rate(&self, key: &'static str) -> Result<f64, SpecError> {
        let v = self.need(key)?;
        units::parse_rate(v).map_err(|source| value_err(key, v, source))
    }

    /// The pattern of `phased` and `trace`: explicit `pattern=` or inferred from its keys.
    fn pattern(&self) -> Result<Pattern, SpecError> {
        let name = match self.get("pattern") {
            Some(p) => p,
            None if self.get("hot").is_some() || self.get("share").is_some() => "hotcold",
            None if self.get("s").is_some() => "zipf",
            None => "uniform",
        };
        self.named_pattern(name)
    }

    fn named_pattern(&self, name: &str) -> Result<Pattern, SpecError> {
        Pattern::parse_named(name, |key| self.get(key))
    }
}

/// A fraction given as `key=value`, `default` when absent; `open_low`: strictly between 0 and 1
/// (else 0 and 1 are allowed).
fn fraction(
    key: &'static str,
    value: Option<&str>,
    default: f64,
    open_low: bool,
) -> Result<f64, SpecError> {
    let Some(v) = value else {
        return Ok(default);
    };
    let f = units::parse_fraction(v).map_err(|source| value_err(key, v, source))?;
    let ok = if open_low {
        f > 0.0 && f < 1.0
    } else {
        (0.0..=1.0).contains(&f)
    };
    if !ok {
        return Err(SpecError::Range {
            key: key.to_string(),
            value: v.to_string(),
            expected: if open_low {
                "strictly between 0% and 100%"
            } else {
                "between 0% and 100%"
            },
        });
    }
    Ok(f)
}

/// A positive finite number given as `key=value`, `default` when absent.
fn number(key: &'static str, value: Option<&str>, default: f64) -> Result<f64, SpecError> {
    let Some(v) = value else {
        return Ok(default);
    };
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(SpecError::Range {
            key: key.to_string(),
            value: v.to_string(),
            expected: "a positive number",
        }),
    }
}

fn value_err(key: &str, value: &str, source: UnitError) -> SpecError {
    SpecError::Value {
        key: key.to_string(),
        value: value.to_string(),
        source,
    }
}

fn parse_steps(v: &str) -> Result<RateSeries, SpecError> {
    let mut steps = Vec::new();
    for step in v.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (r, t) = step
            .split_once('@')
            .ok_or_else(|| SpecError::Step(step.to_string()))?;
        let rate = units::parse_rate(r).map_err(|source| value_err("steps", r, source))?;
        let at = units::parse_duration(t).map_err(|source| value_err("steps", t, source))?;
        steps.push((at, rate));
    }
    Ok(RateSeries::steps(steps)?)
}

fn parse_points(v: &str) -> Result<WorkingSet, SpecError> {
    let mut points = Vec::new();
    for point in v.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        if points.len() >= MAX_POINTS {
            return Err(CurveError::TooMany(points.len() + 1).into());
        }
        let (t, w) = point
            .split_once('@')
            .ok_or_else(|| SpecError::Point(point.to_string()))?;
        let t = units::parse_duration(t).map_err(|source| value_err("points", t, source))?;
        let w = units::parse_size(w).map_err(|source| value_err("points", w, source))?;
        points.push((t, w));
    }
    Ok(WorkingSet::new(points)?)
}

/// A curve workload: the curve, replayed at its initial rate (uniform pages for writers).
fn curve_workload(
    curve: WorkingSet,
) -> Result<(Pattern, RateSeries, Option<WorkingSet>), SpecError> {
    let rate = RateSeries::constant(curve.initial_rate())?;
    Ok((Pattern::Uniform, rate, Some(curve)))
}

impl Workload {
    /// The same workload with its write rate held at its heaviest phase from the start, for a
    /// workload whose rate changes (`None` when it is constant): what a causal policy could at
    /// best be compared with when a burst or a ramp is coming.
    pub fn held_at_peak(&self) -> Option<Workload> {
        if self.rate.as_steps().len() < 2 {
            return None;
        }
        let peak = self.rate.peak();
        Some(Workload {
            pattern: self.pattern,
            rate: RateSeries::constant(peak).ok()?,
            curve: self.curve.clone(),
            spec: format!("{} (held at its peak, {peak:.0} B/s)", self.spec),
        })
    }

    /// Parses a spec; `trace` files are resolved relative to `base` when not absolute.
    pub fn parse_in(spec: &str, base: Option<&Path>) -> Result<Workload, SpecError> {
        let spec = spec.trim();
        let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let kind = kind.trim();
        let (pattern, rate, curve) = match kind {
            "idle" => {
                Params::parse(kind, rest, "")?;
                (Pattern::Uniform, RateSeries::constant(0.0)?, None)
            }
            "uniform" | "scan" => {
                let p = Params::parse(kind, rest, "rate")?;
                (
                    p.named_pattern(kind)?,
                    RateSeries::constant(p.rate("rate")?)?,
                    None,
                )
            }
            "hotcold" => {
                let p = Params::parse(kind, rest, "rate, hot, share")?;
                p.need("hot")?;
                p.need("share")?;
                (
                    p.named_pattern(kind)?,
                    RateSeries::constant(p.rate("rate")?)?,
                    None,
                )
            }
            "zipf" => {
                let p = Params::parse(kind, rest, "rate, s")?;
                p.need("s")?;
                (
                    p.named_pattern(kind)?,
                    RateSeries::constant(p.rate("rate")?)?,
                    None,
                )
            }
            "phased" => {
                let p = Params::parse(kind, rest, "steps, pattern, hot, share, s")?;
                (p.pattern()?, parse_steps(p.need("steps")?)?, None)
            }
            "workingset" => {
                let p = Params::parse(kind, rest, "points")?;
                curve_workload(parse_points(p.need("points")?)?)?
            }
            "trace" => {
                let p = Params::parse(kind, rest, "file, pattern, hot, share, s, scale, replay")?;
                let file = Path::new(p.need("file")?);
                let path = match base {
                    Some(b) if file.is_relative() => b.join(file),
                    _ => file.to_path_buf(),
                };
                let scale = number("scale", p.get("scale"), 1.0)?;
                let recorded = trace::read_trace(&path)?;
                let curve = match p.get("replay") {
                    None => recorded.distinct_periods() >= 2,
                    Some("curve") => true,
                    Some("rate") => false,
                    Some(v) => {
                        return Err(SpecError::Range {
                            key: "replay".into(),
                            value: v.to_string(),
                            expected: "curve or rate",
                        })
                    }
                };
                if curve {
                    if ["pattern", "hot", "share", "s"]
                        .iter()
                        .any(|k| p.get(k).is_some())
                    {
                        return Err(SpecError::PatternWithCurve);
                    }
                    let ws = recorded.working_set(scale).ok_or(SpecError::NoPeriods)??;
                    curve_workload(ws)?
                } else {
                    let scaled = recorded
                        .series
                        .as_steps()
                        .iter()
                        .map(|&(t, r)| (t, r * scale))
                        .collect();
                    (p.pattern()?, RateSeries::steps(scaled)?, None)
                }
            }
            other => return Err(SpecError::UnknownKind(other.to_string())),
        };
        Ok(Workload {
            pattern,
            rate,
            curve,
            spec: spec.to_string(),
        })
    }

    /// The measured working-set curve that replaces the pattern's model, if any.
    pub fn curve(&self) -> Option<&WorkingSet> {
        self.curve.as_ref()
    }

    /// The spec as written.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// Parses a spec that must not name a file (`trace:`): for specs from a peer.
    pub fn parse_self_contained(spec: &str) -> Result<Workload, SpecError> {
        let (kind, _) = spec.trim().split_once(':').unwrap_or((spec.trim(), ""));
        if kind.trim() == "trace" {
            return Err(SpecError::FileNotAllowed(spec.trim().to_string()));
        }
        Workload::parse_in(spec, None)
    }

    /// A spec that needs no file and describes the same workload: the spec itself, except
    /// that a `trace:` spec becomes `phased:steps=...` with the same rate series and pattern
    /// (at most [`MAX_INLINE_STEPS`] steps), or `workingset:points=...` when it replays a
    /// working-set curve.
    pub fn inline_spec(&self) -> Result<String, SpecError> {
        let (kind, _) = self.spec.split_once(':').unwrap_or((&self.spec, ""));
        if kind.trim() != "trace" {
            return Ok(self.spec.clone());
        }
        if let Some(curve) = &self.curve {
            return Ok(format!("workingset:points={}", curve.to_points_spec()));
        }
        let steps = self.rate.as_steps();
        if steps.len() > MAX_INLINE_STEPS {
            return Err(SpecError::TooManySteps {
                steps: steps.len(),
                max: MAX_INLINE_STEPS,
            });
        }
        // `{}` prints an f64 in plain decimal digits that parse back to the same value.
        let list: Vec<String> = steps.iter().map(|(t, r)| format!("{r}@{t}")).collect();
        let pattern = match self.pattern {
            Pattern::Uniform => "pattern=uniform".to_string(),
            Pattern::Scan => "pattern=scan".to_string(),
            Pattern::HotCold { hot, share } => format!("pattern=hotcold,hot={hot},share={share}"),
            Pattern::Zipf { s } => format!("pattern=zipf,s={s}"),
        };
        Ok(format!("phased:steps={},{pattern}", list.join(";")))
    }
}

impl FromStr for Workload {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Workload::parse_in(s, None)
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;

    fn err(spec: &str) -> String {
        crate::chain(&spec.parse::<Workload>().expect_err(spec))
    }

    #[test]
    fn parses_every_kind() {
        let w: Workload = "hotcold:rate=300MiB/s,hot=10%,share=90%"
            .parse()
            .expect("valid");
        assert_eq!(
            w.pattern,
            Pattern::HotCold {
                hot: 0.1,
                share: 0.9
            }
        );
        assert_eq!(w.rate.rate_at(0.0), 300.0 * MIB);
        let w: Workload = "idle".parse().expect("valid");
        assert_eq!(w.rate.peak(), 0.0);
        let w: Workload = "zipf:rate=1MiB/s,s=1.2".parse().expect("valid");
        assert_eq!(w.pattern, Pattern::Zipf { s: 1.2 });
        let w: Workload = "scan:rate=1MiB/s".parse().expect("valid");
        assert_eq!(w.pattern, Pattern::Scan);
        let w: Workload = "phased:steps=10MiB/s@0s;100MiB/s@30s,hot=5%,share=80%"
            .parse()
            .expect("valid");
        assert_eq!(
            w.pattern,
            Pattern::HotCold {
                hot: 0.05,
                share: 0.8
            }
        );
        assert_eq!(w.rate.rate_at(31.0), 100.0 * MIB);
        assert_eq!(
            w.to_string(),
            "phased:steps=10MiB/s@0s;100MiB/s@30s,hot=5%,share=80%"
        );
    }

    #[test]
    fn bad_specs_name_the_offending_value() {
        assert!(err("bogus:rate=1").contains("`bogus`"));
        assert!(err("uniform:rate=-1").contains("`-1`"));
        assert!(err("hotcold:rate=1MiB/s,hot=150%,share=90%").contains("hot=150%"));
        assert!(err("hotcold:rate=1MiB/s,hot=10%").contains("share"));
        assert!(err("uniform:speed=1").contains("`speed`"));
        assert!(err("uniform").contains("rate"));
        assert!(err("phased:steps=1MiB/s").contains("RATE@TIME"));
        assert!(err("zipf:rate=1,s=-2").contains("s=-2"));
        assert!(err("trace:file=/no/such/file.csv").contains("/no/such/file.csv"));
        assert!(err("phased:steps=1@0s,pattern=spiral").contains("spiral"));
    }

    /// Regression (issue 8): a key given twice was silently last-wins.
    #[test]
    fn a_key_given_twice_is_refused() {
        for spec in [
            "hotcold:rate=1MiB/s,rate=2MiB/s,hot=5%",
            "hotcold:rate=1MiB/s,hot=5%,share=90%,hot=10%",
            "uniform:rate=1MiB/s, rate = 1MiB/s",
            "phased:steps=1MiB/s@0s,pattern=zipf,s=1.1,s=1.2",
            "trace:file=a.csv,file=b.csv",
        ] {
            let e = spec.parse::<Workload>().expect_err(spec);
            assert!(matches!(e, SpecError::DuplicateKey { .. }), "{spec}: {e}");
        }
        assert_eq!(
            err("hotcold:rate=1MiB/s,rate=2MiB/s,hot=5%"),
            "workload `hotcold` gives `rate` twice"
        );
    }

    #[test]
    fn trace_specs_inline_as_phased_and_peers_cannot_name_files() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(
            dir.path().join("t.csv"),
            "time_s,dirty_rate_bytes_per_s\n0,1000.5\n2.25,3000000\n7,0\n",
        )
        .expect("write");
        let w = Workload::parse_in(
            "trace:file=t.csv,scale=2,hot=5%,share=80%",
            Some(dir.path()),
        )
        .expect("valid");
        let inline = w.inline_spec().expect("inlines");
        assert!(inline.starts_with("phased:"), "{inline}");
        let back = Workload::parse_self_contained(&inline).expect("self-contained");
        assert_eq!(back.rate, w.rate);
        assert_eq!(back.pattern, w.pattern);
        let plain: Workload = "uniform:rate=1MiB/s".parse().expect("valid");
        assert_eq!(plain.inline_spec().expect("same"), "uniform:rate=1MiB/s");
        let e = Workload::parse_self_contained(" trace:file=/dev/zero").expect_err("refused");
        assert!(matches!(e, SpecError::FileNotAllowed(_)), "{e}");
    }

    const WS_TRACE: &str = "time_s,dirty_rate_bytes_per_s,period_s\n\
        0,67108864,1\n1,67108864,2\n3,41943040,4\n7,20971520,8\n";

    #[test]
    fn working_set_traces_replay_their_curve_and_inline_as_workingset() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("ws.csv"), WS_TRACE).expect("write");
        let w = Workload::parse_in("trace:file=ws.csv", Some(dir.path())).expect("valid");
        let curve = w.curve().expect("a curve");
        assert_eq!(curve.at(4.0), 160.0 * MIB);
        assert_eq!(w.rate.as_steps(), &[(0.0, 64.0 * MIB)]);
        let inline = w.inline_spec().expect("inlines");
        assert!(inline.starts_with("workingset:points="), "{inline}");
        let back = Workload::parse_self_contained(&inline).expect("self-contained");
        assert_eq!(back.curve(), w.curve());
        assert_eq!(back.rate, w.rate);
        assert_eq!(back.inline_spec().expect("same"), inline);
        // The same file as a rate series, with a pattern.
        let r = Workload::parse_in(
            "trace:file=ws.csv,replay=rate,pattern=scan",
            Some(dir.path()),
        )
        .expect("valid");
        assert!(r.curve().is_none());
        assert_eq!(r.rate.as_steps().len(), 4);
        assert!(r.inline_spec().expect("inlines").starts_with("phased:"));
        // scale multiplies the measured rates, hence the curve.
        let s = Workload::parse_in("trace:file=ws.csv,scale=0.5", Some(dir.path())).expect("ok");
        assert_eq!(s.curve().expect("curve").at(4.0), 80.0 * MIB);
        // A pattern cannot be combined with a curve, nor a curve asked of a plain trace.
        let e = Workload::parse_in("trace:file=ws.csv,pattern=scan", Some(dir.path()))
            .expect_err("pattern with curve");
        assert!(matches!(e, SpecError::PatternWithCurve), "{e}");
        std::fs::write(
            dir.path().join("plain.csv"),
            "time_s,dirty_rate_bytes_per_s\n0,1\n",
        )
        .expect("write");
        let e = Workload::parse_in("trace:file=plain.csv,replay=curve", Some(dir.path()))
            .expect_err("no periods");
        assert!(matches!(e, SpecError::NoPeriods), "{e}");
        let e = Workload::parse_in("trace:file=ws.csv,replay=sometimes", Some(dir.path()))
            .expect_err("bad replay");
        assert!(matches!(e, SpecError::Range { .. }), "{e}");
    }

    #[test]
    fn workingset_specs_parse_and_refuse_hostile_points() {
        let w: Workload = "workingset:points=1s@64MiB;2s@128MiB;4s@160MiB;8s@160MiB"
            .parse()
            .expect("valid");
        assert_eq!(w.curve().expect("curve").at(8.0), 160.0 * MIB);
        assert_eq!(w.rate.peak(), 64.0 * MIB);
        assert_eq!(w.inline_spec().expect("same"), w.spec());
        assert!(err("workingset:points=1s").contains("PERIOD@BYTES"));
        assert!(err("workingset:points=1s@-5").contains("-5"));
        assert!(err("workingset:points=2s@1MiB;1s@2MiB").contains("period 1 s"));
        assert!(err("workingset:points=0s@1MiB").contains("period 0 s"));
        assert!(err("workingset:points=1s@2000TiB").contains("1 PiB"));
        assert!(err("workingset").contains("points"));
        let many: Vec<String> = (1..=MAX_POINTS + 1).map(|i| format!("{i}@1")).collect();
        let e = format!("workingset:points={}", many.join(";"))
            .parse::<Workload>()
            .expect_err("too many");
        assert!(matches!(e, SpecError::Curve(CurveError::TooMany(_))), "{e}");
    }

    #[test]
    fn named_patterns_take_defaults_and_check_ranges() {
        let none = |_: &str| None;
        assert_eq!(
            Pattern::parse_named("hotcold", none).expect("defaults"),
            Pattern::HotCold {
                hot: 0.1,
                share: 0.9
            }
        );
        assert_eq!(
            Pattern::parse_named("zipf", none).expect("default"),
            Pattern::Zipf { s: 1.0 }
        );
        let hot_one = |k: &str| (k == "hot").then_some("100%");
        let e = Pattern::parse_named("hotcold", hot_one).expect_err("hot set is everything");
        assert!(matches!(e, SpecError::Range { .. }), "{e}");
        // Keys a pattern does not use are not read.
        assert_eq!(
            Pattern::parse_named("uniform", hot_one).expect("ignored"),
            Pattern::Uniform
        );
        assert!(matches!(
            Pattern::parse_named("idle", none),
            Err(SpecError::UnknownPattern(_))
        ));
    }

    #[test]
    fn trace_files_are_read_relative_to_base() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("t.csv"),
            "time_s,dirty_rate_bytes_per_s\n0,100\n10,200\n",
        )
        .expect("write");
        let w = Workload::parse_in("trace:file=t.csv,scale=2", Some(dir.path())).expect("valid");
        assert_eq!(w.rate.rate_at(11.0), 400.0);
        assert_eq!(w.pattern, Pattern::Uniform);
    }
}
