//! Scenarios: memory, workload, the operator's settings and the link, from TOML or flags.
//!
//! A scenario file holds one or more `[[scenario]]` tables; sizes, rates and durations are
//! strings with units:
//!
//! ```toml
//! [[scenario]]
//! name = "hotcold-4g"
//! description = "4 GiB, 10 % hot set taking 90 % of 300 MiB/s"
//! memory = "4GiB"
//! workload = "hotcold:rate=300MiB/s,hot=10%,share=90%"
//! rounds = 10                 # N (default 10)
//! stop_remaining = "64MiB"    # h (default 64MiB)
//! min_bandwidth = "100Mbit/s" # B_min (default)
//! max_bandwidth = "10Gbit/s"  # B_max (default)
//! # optional: initial_bandwidth, threshold, bandwidth (fixed/qemu), downtime_limit,
//! # page_size, link_capacity, state_size, resume_latency, noise, seed, sample
//! ```

use std::path::Path;

use livemig_policy::{
    ConfigError, PolicyConfig, PolicySpec, SettingsError, MAX_DURATION_S, MAX_MEMORY_BYTES,
    MAX_RATE_BYTES_PER_S,
};
use livemig_workload::units::{self, UnitError};
use livemig_workload::{DirtyModel, SpecError, Workload};
use serde::{Deserialize, Serialize};

use crate::link::Link;

/// A scenario as written: every quantity a string with units.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub memory: String,
    pub workload: String,
    /// The policy settings (N, h, bandwidth bounds, per-policy knobs), as keys of the scenario
    /// table itself.
    #[serde(flatten)]
    pub policy: PolicySpec,
    #[serde(default)]
    pub link_capacity: Option<String>,
    #[serde(default)]
    pub state_size: Option<String>,
    #[serde(default)]
    pub resume_latency: Option<String>,
    #[serde(default)]
    pub noise: Option<f64>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// Pre-migration dirty-log sample length (default 1s; 0s = none).
    #[serde(default)]
    pub sample: Option<String>,
}

/// A resolved, validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub cfg: PolicyConfig,
    pub workload: Workload,
    pub model: DirtyModel,
    pub link: Link,
}

/// Why a scenario was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario file {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Toml { path: String, message: String },
    #[error("{path}: no [[scenario]] table")]
    Empty { path: String },
    #[error("scenario `{scenario}`: {field}")]
    Unit {
        scenario: String,
        field: &'static str,
        #[source]
        source: UnitError,
    },
    #[error("scenario `{scenario}`: workload `{spec}`")]
    Workload {
        scenario: String,
        spec: String,
        #[source]
        source: Box<SpecError>,
    },
    #[error("scenario `{scenario}`")]
    Config {
        scenario: String,
        #[source]
        source: ConfigError,
    },
    #[error(
        "scenario `{scenario}`: {field} must be {expected}, got {}",
        units::fmt_number(*.value)
    )]
    Range {
        scenario: String,
        field: &'static str,
        expected: &'static str,
        value: f64,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    scenario: Vec<ScenarioSpec>,
}

impl ScenarioSpec {
    /// Resolves units, parses the workload (trace paths relative to `base`) and validates.
    pub fn resolve(&self, base: Option<&Path>) -> Result<Scenario, ScenarioError> {
        let name = self.name.clone();
        let unit = |field: &'static str, v: &str, f: fn(&str) -> Result<f64, UnitError>| {
            f(v).map_err(|source| ScenarioError::Unit {
                scenario: name.clone(),
                field,
                source,
            })
        };
        let opt = |field: &'static str,
                   v: &Option<String>,
                   f: fn(&str) -> Result<f64, UnitError>|
         -> Result<Option<f64>, ScenarioError> {
            v.as_deref().map(|v| unit(field, v, f)).transpose()
        };
        let memory_bytes = unit("memory", &self.memory, units::parse_size)?;
        let cfg = self.policy.resolve(memory_bytes).map_err(|e| match e {
            SettingsError::Unit { field, source } => ScenarioError::Unit {
                scenario: name.clone(),
                field,
                source,
            },
            SettingsError::Config(source) => ScenarioError::Config {
                scenario: name.clone(),
                source,
            },
        })?;
        let workload =
            Workload::parse_in(&self.workload, base).map_err(|source| ScenarioError::Workload {
                scenario: name.clone(),
                spec: self.workload.clone(),
                source: Box::new(source),
            })?;
        let range = |field: &'static str, value: f64, ok: bool, expected: &'static str| {
            if ok && value.is_finite() {
                Ok(value)
            } else {
                Err(ScenarioError::Range {
                    scenario: name.clone(),
                    field,
                    expected,
                    value,
                })
            }
        };
        let capacity = opt(
            "link_capacity",
            &self.link_capacity,
            units::parse_rate_with_unit,
        )?
        .map(|c| {
            range(
                "link_capacity",
                c,
                c > 0.0 && c <= MAX_RATE_BYTES_PER_S,
                "positive and at most 10 Tbit/s (1.25e12 bytes/s)",
            )
        })
        .transpose()?;
        let noise = self.noise.unwrap_or(0.0);
        range(
            "noise",
            noise,
            (0.0..=1.0).contains(&noise),
            "between 0 and 1",
        )?;
        let state_bytes = opt("state_size", &self.state_size, units::parse_size)?.unwrap_or(0.0);
        range(
            "state_size",
            state_bytes,
            state_bytes <= MAX_MEMORY_BYTES,
            "at most 64 TiB",
        )?;
        let resume_latency_s = opt(
            "resume_latency",
            &self.resume_latency,
            units::parse_duration_with_unit,
        )?
        .unwrap_or(0.0);
        range(
            "resume_latency",
            resume_latency_s,
            resume_latency_s <= MAX_DURATION_S,
            "at most 3 days",
        )?;
        let sample_s = opt("sample", &self.sample, units::parse_duration_with_unit)?.unwrap_or(1.0);
        range(
            "sample",
            sample_s,
            sample_s <= MAX_DURATION_S,
            "at most 3 days",
        )?;
        let link = Link {
            capacity,
            state_bytes,
            resume_latency_s,
            noise,
            seed: self.seed.unwrap_or(1),
            sample_s,
        };
        let model = DirtyModel::new(&workload, cfg.memory_bytes, cfg.page_size);
        Ok(Scenario {
            name: self.name.clone(),
            description: self.description.clone().unwrap_or_default(),
            cfg,
            workload,
            model,
            link,
        })
    }
}

/// Parses scenario TOML text into unresolved specs; `path` names it in errors.
pub fn parse_specs(path: &Path, text: &str) -> Result<Vec<ScenarioSpec>, ScenarioError> {
    let shown = path.display().to_string();
    let file: File = toml::from_str(text).map_err(|e| ScenarioError::Toml {
        path: shown.clone(),
        message: e.message().to_string(),
    })?;
    if file.scenario.is_empty() {
        return Err(ScenarioError::Empty { path: shown });
    }
    Ok(file.scenario)
}

/// Reads a scenario file into unresolved specs.
pub fn read_specs(path: &Path) -> Result<Vec<ScenarioSpec>, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_specs(path, &text)
}

/// Parses scenario TOML text; `path` names it in errors and anchors relative trace paths.
pub fn parse_suite(path: &Path, text: &str) -> Result<Vec<Scenario>, ScenarioError> {
    let base = path.parent();
    parse_specs(path, text)?
        .iter()
        .map(|s| s.resolve(base))
        .collect()
}

/// Reads a scenario file.
pub fn load_suite(path: &Path) -> Result<Vec<Scenario>, ScenarioError> {
    let base = path.parent();
    read_specs(path)?.iter().map(|s| s.resolve(base)).collect()
}

impl Scenario {
    /// The simulator's inputs for this scenario.
    pub fn setup(&self) -> crate::run::Setup<'_> {
        crate::run::Setup {
            workload: &self.workload,
            model: &self.model,
            link: &self.link,
            memory_bytes: self.cfg.memory_bytes,
            stop_remaining: self.cfg.stop_remaining,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ScenarioSpec {
        ScenarioSpec {
            name: "t".into(),
            memory: "4GiB".into(),
            workload: "uniform:rate=10MiB/s".into(),
            ..ScenarioSpec::default()
        }
    }

    /// The policy settings are flattened: they stay keys of the `[[scenario]]` table, and an
    /// unknown key is still refused.
    #[test]
    fn policy_keys_stay_in_the_scenario_table() {
        let text = r#"
[[scenario]]
name = "f"
memory = "1GiB"
workload = "idle"
rounds = 7
stop_remaining = "8MiB"
threshold = 1
downtime_limit = "300"
"#;
        let specs = parse_specs(Path::new("t.toml"), text).expect("parses");
        assert_eq!(specs[0].policy.rounds, Some(7));
        assert_eq!(specs[0].policy.threshold, Some(1.0));
        let s = specs[0].resolve(None).expect("valid");
        assert_eq!(s.cfg.max_rounds, 7);
        assert_eq!(s.cfg.stop_remaining, 8.0 * 1024.0 * 1024.0);
        assert!((s.cfg.downtime_limit_s - 0.3).abs() < 1e-12);
        let e = parse_specs(
            Path::new("t.toml"),
            "[[scenario]]\nname = \"f\"\nmemory = \"1GiB\"\nworkload = \"idle\"\nrouns = 7\n",
        )
        .expect_err("unknown key");
        assert!(e.to_string().contains("rouns"), "{e}");
    }

    #[test]
    fn defaults_resolve() {
        let s = spec().resolve(None).expect("valid");
        assert_eq!(s.cfg.max_rounds, 10);
        assert_eq!(s.cfg.stop_remaining, 64.0 * 1024.0 * 1024.0);
        assert_eq!(s.cfg.min_bandwidth, 12.5e6);
    }

    /// The error with its whole source chain, as the CLI prints it.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut out = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            out.push_str(": ");
            out.push_str(&s.to_string());
            src = s.source();
        }
        out
    }

    #[test]
    fn bad_values_are_named() {
        let e = ScenarioSpec {
            memory: "lots".into(),
            ..spec()
        }
        .resolve(None)
        .expect_err("bad");
        assert!(chain(&e).contains("`lots`"), "{e}");
        let e = ScenarioSpec {
            policy: PolicySpec {
                rounds: Some(0),
                ..PolicySpec::default()
            },
            ..spec()
        }
        .resolve(None)
        .expect_err("bad");
        assert!(chain(&e).contains("N must be at least 1"), "{e}");
        let e = ScenarioSpec {
            policy: PolicySpec {
                stop_remaining: Some("8GiB".into()),
                ..PolicySpec::default()
            },
            ..spec()
        }
        .resolve(None)
        .expect_err("bad");
        assert!(chain(&e).contains("stop level h"), "{e}");
        let e = ScenarioSpec {
            policy: PolicySpec {
                min_bandwidth: Some("10Gbit/s".into()),
                max_bandwidth: Some("1Gbit/s".into()),
                ..PolicySpec::default()
            },
            ..spec()
        }
        .resolve(None)
        .expect_err("bad");
        assert!(chain(&e).contains("above the maximum"), "{e}");
    }

    /// Regression (issue 8): `simulate --memory 1e308` printed `inf` and JSON nulls; every
    /// size, rate and duration of a scenario now has a finite upper bound.
    #[test]
    fn quantities_beyond_the_bounds_are_refused() {
        let cases: Vec<(ScenarioSpec, &str)> = vec![
            (
                ScenarioSpec {
                    memory: "1e308".into(),
                    ..spec()
                },
                "memory size must be a positive number of bytes up to 64 TiB, got 1e308",
            ),
            (
                ScenarioSpec {
                    memory: "65TiB".into(),
                    ..spec()
                },
                "up to 64 TiB",
            ),
            (
                ScenarioSpec {
                    policy: PolicySpec {
                        max_bandwidth: Some("1e308B/s".into()),
                        ..PolicySpec::default()
                    },
                    ..spec()
                },
                "up to 10 Tbit/s",
            ),
            (
                ScenarioSpec {
                    policy: PolicySpec {
                        downtime_limit: Some("1e308s".into()),
                        ..PolicySpec::default()
                    },
                    ..spec()
                },
                "at most 3 days",
            ),
            (
                ScenarioSpec {
                    workload: "uniform:rate=1e308".into(),
                    ..spec()
                },
                "rate 1e308 must be between 0 and 10 Tbit/s",
            ),
            (
                ScenarioSpec {
                    workload: "phased:steps=1MiB/s@0s;20000Gbit/s@5s".into(),
                    ..spec()
                },
                "10 Tbit/s",
            ),
            (
                ScenarioSpec {
                    link_capacity: Some("1e308B/s".into()),
                    ..spec()
                },
                "link_capacity must be positive and at most 10 Tbit/s (1.25e12 bytes/s), got 1e308",
            ),
            (
                ScenarioSpec {
                    state_size: Some("1e308".into()),
                    ..spec()
                },
                "state_size must be at most 64 TiB",
            ),
            (
                ScenarioSpec {
                    resume_latency: Some("1e308s".into()),
                    ..spec()
                },
                "resume_latency must be at most 3 days",
            ),
            (
                ScenarioSpec {
                    sample: Some("73h".into()),
                    ..spec()
                },
                "sample must be at most 3 days",
            ),
        ];
        for (s, needle) in cases {
            let e = s.resolve(None).expect_err("out of bounds");
            assert!(
                chain(&e).contains(needle),
                "`{}` should contain `{needle}`",
                chain(&e)
            );
        }
        let at_bounds = ScenarioSpec {
            policy: PolicySpec {
                max_bandwidth: Some("10000Gbit/s".into()),
                ..PolicySpec::default()
            },
            memory: "64TiB".into(),
            link_capacity: Some("10000Gbit/s".into()),
            state_size: Some("64TiB".into()),
            resume_latency: Some("72h".into()),
            sample: Some("72h".into()),
            workload: "uniform:rate=10000Gbit/s".into(),
            ..spec()
        };
        at_bounds
            .resolve(None)
            .expect("the bounds themselves are accepted");
    }

    /// The workload's rates (checked by `RateSeries`) and the policy's share one bound.
    #[test]
    fn the_workload_and_the_policy_share_one_rate_bound() {
        assert_eq!(livemig_workload::rate::MAX_RATE, MAX_RATE_BYTES_PER_S);
    }

    #[test]
    fn toml_errors_name_the_file() {
        let e = parse_suite(Path::new("x.toml"), "[[scenario]]\nname = 1\n").expect_err("bad");
        assert!(e.to_string().starts_with("x.toml"), "{e}");
        let e = parse_suite(Path::new("x.toml"), "scenario = []\n").expect_err("empty");
        assert!(e.to_string().contains("no [[scenario]]"), "{e}");
    }
}
