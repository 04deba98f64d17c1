//! The operator's policy settings as written (scenario files, flags): quantities with units,
//! each optional, resolved into a validated [`PolicyConfig`] for a given memory size.
//!
//! Every executor reads its settings through [`PolicySpec`]: the simulator's scenario files
//! flatten it, the command line fills it from flags. The defaults an operator sees are the
//! `DEFAULT_*` texts below, which resolve to [`PolicyConfig::default`].

use livemig_units::{self as units, UnitError};
use serde::{Deserialize, Serialize};

use crate::{ConfigError, PolicyConfig};

/// N, the round limit, by default.
pub const DEFAULT_ROUNDS: u32 = 10;
/// h, the stop level, by default.
pub const DEFAULT_STOP_REMAINING: &str = "64MiB";
/// B_min by default.
pub const DEFAULT_MIN_BANDWIDTH: &str = "100Mbit/s";
/// B_max by default.
pub const DEFAULT_MAX_BANDWIDTH: &str = "10Gbit/s";
/// The `qemu` baseline's downtime limit by default (QEMU's own).
pub const DEFAULT_DOWNTIME_LIMIT: &str = "300ms";
/// The page size by default.
pub const DEFAULT_PAGE_SIZE: &str = "4096";
/// The `qemu` baseline's constant cap by default (QEMU's own `max-bandwidth`).
pub const DEFAULT_QEMU_BANDWIDTH: &str = "128MiB/s";

/// The policy settings as written: every field optional, sizes and rates strings with units.
///
/// Unknown keys are refused by the structure that holds it (a scenario), not here: serde
/// cannot refuse unknown keys inside a flattened structure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct PolicySpec {
    /// N, the round limit.
    #[serde(default)]
    pub rounds: Option<u32>,
    /// h, the stop level (a size).
    #[serde(default)]
    pub stop_remaining: Option<String>,
    /// B_min (a rate).
    #[serde(default)]
    pub min_bandwidth: Option<String>,
    /// B_max, also the stop-and-copy cap (a rate).
    #[serde(default)]
    pub max_bandwidth: Option<String>,
    /// Round 1's cap (a rate); B_min when unset.
    #[serde(default)]
    pub initial_bandwidth: Option<String>,
    /// T set by hand.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// The constant cap of `fixed` and `qemu` (a rate).
    #[serde(default)]
    pub bandwidth: Option<String>,
    /// `qemu`'s downtime limit (a plain number is milliseconds).
    #[serde(default)]
    pub downtime_limit: Option<String>,
    /// The page size S (a size).
    #[serde(default)]
    pub page_size: Option<String>,
    /// `predictive`'s rescue: the largest share of the guest's CPU it may take away when no
    /// bandwidth up to B_max converges (a fraction, 0.9 = 90 %); unset: no rescue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_throttle: Option<f64>,
}

/// Why policy settings were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    /// A quantity that does not read; `field` is its key as written (`stop_remaining`).
    #[error("{field}")]
    Unit {
        field: &'static str,
        #[source]
        source: UnitError,
    },
    /// Values that read but do not make a valid configuration.
    #[error("invalid policy settings")]
    Config(#[source] ConfigError),
}

fn set(field: &mut Option<String>, over: &Option<String>) {
    if over.is_some() {
        field.clone_from(over);
    }
}

impl PolicySpec {
    /// Overrides these settings with every field that `over` sets.
    pub fn apply(&mut self, over: &PolicySpec) {
        self.rounds = over.rounds.or(self.rounds);
        self.threshold = over.threshold.or(self.threshold);
        self.max_throttle = over.max_throttle.or(self.max_throttle);
        set(&mut self.stop_remaining, &over.stop_remaining);
        set(&mut self.min_bandwidth, &over.min_bandwidth);
        set(&mut self.max_bandwidth, &over.max_bandwidth);
        set(&mut self.initial_bandwidth, &over.initial_bandwidth);
        set(&mut self.bandwidth, &over.bandwidth);
        set(&mut self.downtime_limit, &over.downtime_limit);
        set(&mut self.page_size, &over.page_size);
    }

    /// These settings for a guest of `memory_bytes`: without a stop level, a guest no larger
    /// than the default one (64 MiB) stops at an eighth of its memory (the default would
    /// stop before round 1). The agents and the RMS's budget use the same rule.
    pub fn for_guest(mut self, memory_bytes: u64) -> PolicySpec {
        if self.stop_remaining.is_none() {
            let default = PolicyConfig::default().stop_remaining;
            if default >= memory_bytes as f64 {
                self.stop_remaining = Some((memory_bytes / 8).to_string());
            }
        }
        self
    }

    /// Reads the units, fills unset fields with the defaults and validates, for a guest of
    /// `memory_bytes`.
    pub fn resolve(&self, memory_bytes: f64) -> Result<PolicyConfig, SettingsError> {
        let opt = |field: &'static str,
                   v: &Option<String>,
                   f: fn(&str) -> Result<f64, UnitError>|
         -> Result<Option<f64>, SettingsError> {
            v.as_deref()
                .map(|v| f(v).map_err(|source| SettingsError::Unit { field, source }))
                .transpose()
        };
        let d = PolicyConfig::default();
        let rate = units::parse_rate_with_unit;
        let cfg = PolicyConfig {
            memory_bytes,
            page_size: opt("page_size", &self.page_size, units::parse_size)?.unwrap_or(d.page_size),
            max_rounds: self.rounds.unwrap_or(d.max_rounds),
            stop_remaining: opt("stop_remaining", &self.stop_remaining, units::parse_size)?
                .unwrap_or(d.stop_remaining),
            min_bandwidth: opt("min_bandwidth", &self.min_bandwidth, rate)?
                .unwrap_or(d.min_bandwidth),
            max_bandwidth: opt("max_bandwidth", &self.max_bandwidth, rate)?
                .unwrap_or(d.max_bandwidth),
            initial_bandwidth: opt("initial_bandwidth", &self.initial_bandwidth, rate)?,
            threshold: self.threshold,
            fixed_bandwidth: opt("bandwidth", &self.bandwidth, rate)?,
            downtime_limit_s: opt(
                "downtime_limit",
                &self.downtime_limit,
                units::parse_downtime,
            )?
            .unwrap_or(d.downtime_limit_s),
            safety_rounds: d.safety_rounds,
            stop_bandwidth: None,
            max_throttle: self.max_throttle,
        };
        cfg.validate().map_err(SettingsError::Config)?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

    #[test]
    fn the_written_defaults_are_the_config_defaults() {
        let d = PolicyConfig::default();
        let written = PolicySpec {
            rounds: Some(DEFAULT_ROUNDS),
            stop_remaining: Some(DEFAULT_STOP_REMAINING.into()),
            min_bandwidth: Some(DEFAULT_MIN_BANDWIDTH.into()),
            max_bandwidth: Some(DEFAULT_MAX_BANDWIDTH.into()),
            downtime_limit: Some(DEFAULT_DOWNTIME_LIMIT.into()),
            page_size: Some(DEFAULT_PAGE_SIZE.into()),
            ..PolicySpec::default()
        };
        let cfg = written.resolve(d.memory_bytes).expect("valid");
        assert_eq!(cfg, d);
        assert_eq!(PolicySpec::default().resolve(d.memory_bytes), Ok(d));
        assert_eq!(
            units::parse_rate_with_unit(DEFAULT_QEMU_BANDWIDTH),
            Ok(crate::config::QEMU_DEFAULT_BANDWIDTH)
        );
    }

    #[test]
    fn given_fields_override() {
        let mut s = PolicySpec {
            rounds: Some(5),
            stop_remaining: Some("8MiB".into()),
            ..PolicySpec::default()
        };
        s.apply(&PolicySpec {
            stop_remaining: Some("4MiB".into()),
            threshold: Some(0.5),
            ..PolicySpec::default()
        });
        let cfg = s.resolve(GIB).expect("valid");
        assert_eq!(cfg.max_rounds, 5);
        assert_eq!(cfg.stop_remaining, 4.0 * 1024.0 * 1024.0);
        assert_eq!(cfg.threshold, Some(0.5));
    }

    #[test]
    fn bad_values_name_their_field() {
        let e = PolicySpec {
            min_bandwidth: Some("100".into()),
            ..PolicySpec::default()
        }
        .resolve(GIB)
        .expect_err("no unit");
        assert!(
            matches!(
                e,
                SettingsError::Unit {
                    field: "min_bandwidth",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = PolicySpec {
            rounds: Some(0),
            ..PolicySpec::default()
        }
        .resolve(GIB)
        .expect_err("N = 0");
        assert_eq!(e, SettingsError::Config(ConfigError::Rounds(0)));
        // A plain downtime limit is milliseconds.
        let cfg = PolicySpec {
            downtime_limit: Some("300".into()),
            ..PolicySpec::default()
        }
        .resolve(GIB)
        .expect("valid");
        assert!((cfg.downtime_limit_s - 0.3).abs() < 1e-12);
    }
}
