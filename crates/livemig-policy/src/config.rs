//! Operator settings shared by every policy, and their validation.

use serde::{Deserialize, Serialize};

/// QEMU's default `max-bandwidth` (128 MiB/s) used by the `qemu` baseline when none is given.
pub const QEMU_DEFAULT_BANDWIDTH: f64 = 128.0 * 1024.0 * 1024.0;
/// QEMU's default `downtime-limit` (300 ms).
pub const QEMU_DEFAULT_DOWNTIME_LIMIT_S: f64 = 0.3;
/// Round-count safety limit of the `qemu` baseline (QEMU itself has none; a timeout aborts).
pub const QEMU_DEFAULT_SAFETY_ROUNDS: u32 = 200;

/// The largest memory size any setting may name: 64 TiB (far beyond any guest today, small
/// enough that every derived time and byte count stays finite).
pub const MAX_MEMORY_BYTES: f64 = 64.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0;
/// The fastest rate any setting may name: 10 Tbit/s (1.25e12 bytes/s).
pub const MAX_RATE_BYTES_PER_S: f64 = 10e12 / 8.0;
/// The longest duration any setting may name: 3 days.
pub const MAX_DURATION_S: f64 = 3.0 * 24.0 * 3600.0;

/// A number as an error shows it: plain below 1e15, in exponent form above (`1e308`, not
/// 309 digits).
#[derive(Debug, Clone, Copy)]
struct Shown(f64);

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.abs() < 1e15 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{:e}", self.0)
        }
    }
}

/// The operator's settings: M, S, N, h, bandwidth bounds and per-policy knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// M: bytes of guest memory to migrate.
    pub memory_bytes: f64,
    /// S: page size in bytes.
    pub page_size: f64,
    /// N: maximum number of pre-copy rounds.
    pub max_rounds: u32,
    /// h: remaining dirty bytes at or below which pre-copy stops.
    pub stop_remaining: f64,
    /// B_min (bytes/s).
    pub min_bandwidth: f64,
    /// B_max (bytes/s).
    pub max_bandwidth: f64,
    /// B_1, round 1's cap; `None` means B_min.
    pub initial_bandwidth: Option<f64>,
    /// T set by the operator; `None` means (h / M)^(1 / N).
    pub threshold: Option<f64>,
    /// Constant cap of `fixed` (default B_max) and `qemu` (default 128 MiB/s).
    pub fixed_bandwidth: Option<f64>,
    /// `qemu`: downtime limit in seconds.
    pub downtime_limit_s: f64,
    /// `qemu`: round-count safety limit.
    pub safety_rounds: u32,
    /// B_stop, the stop-and-copy cap; `None` means B_max.
    pub stop_bandwidth: Option<f64>,
    /// Rescue: the largest share of the guest's CPU `predictive` may take away (0 < x <= 0.99)
    /// when no bandwidth up to B_max converges; `None`: no rescue.
    pub max_throttle: Option<f64>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            memory_bytes: 4.0 * 1024.0 * 1024.0 * 1024.0,
            page_size: 4096.0,
            max_rounds: 10,
            stop_remaining: 64.0 * 1024.0 * 1024.0,
            min_bandwidth: 100e6 / 8.0,
            max_bandwidth: 10e9 / 8.0,
            initial_bandwidth: None,
            threshold: None,
            fixed_bandwidth: None,
            downtime_limit_s: QEMU_DEFAULT_DOWNTIME_LIMIT_S,
            safety_rounds: QEMU_DEFAULT_SAFETY_ROUNDS,
            stop_bandwidth: None,
            max_throttle: None,
        }
    }
}

/// The most of a guest's CPU a rescue may take away (QEMU's `max-cpu-throttle` default).
pub const MAX_THROTTLE: f64 = 0.99;

/// Why a [`PolicyConfig`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("memory size must be a positive number of bytes up to 64 TiB, got {}", Shown(*.0))]
    Memory(f64),
    #[error("page size must be positive and at most the memory size, got {0}")]
    PageSize(f64),
    #[error("the round limit N must be at least 1, got {0}")]
    Rounds(u32),
    #[error("the stop level h must be between 0 and the memory size M ({memory}), got {value}")]
    StopRemaining { value: f64, memory: f64 },
    #[error(
        "{name} must be a positive rate in bytes/s up to 10 Tbit/s (1.25e12), got {}",
        Shown(*.value)
    )]
    Rate { name: &'static str, value: f64 },
    #[error("the minimum bandwidth ({min}) is above the maximum bandwidth ({max})")]
    Bounds { min: f64, max: f64 },
    #[error("the initial bandwidth {value} lies outside [{min}, {max}]")]
    Initial { value: f64, min: f64, max: f64 },
    #[error("the threshold T must be positive and finite, got {0}")]
    Threshold(f64),
    #[error("the downtime limit must be positive and at most 3 days, got {} s", Shown(*.0))]
    Downtime(f64),
    #[error("the safety round limit must be at least 1, got {0}")]
    Safety(u32),
    #[error("the largest throttle must be a fraction above 0 and at most 0.99, got {0}")]
    Throttle(f64),
}

fn positive_rate(name: &'static str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 && value <= MAX_RATE_BYTES_PER_S {
        Ok(())
    } else {
        Err(ConfigError::Rate { name, value })
    }
}

impl PolicyConfig {
    /// Checks every setting; policies assume a validated config.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.memory_bytes.is_finite()
            && self.memory_bytes > 0.0
            && self.memory_bytes <= MAX_MEMORY_BYTES)
        {
            return Err(ConfigError::Memory(self.memory_bytes));
        }
        if !(self.page_size.is_finite()
            && self.page_size > 0.0
            && self.page_size <= self.memory_bytes)
        {
            return Err(ConfigError::PageSize(self.page_size));
        }
        if self.max_rounds == 0 {
            return Err(ConfigError::Rounds(self.max_rounds));
        }
        if !(self.stop_remaining.is_finite()
            && self.stop_remaining >= 0.0
            && self.stop_remaining <= self.memory_bytes)
        {
            return Err(ConfigError::StopRemaining {
                value: self.stop_remaining,
                memory: self.memory_bytes,
            });
        }
        positive_rate("the minimum bandwidth", self.min_bandwidth)?;
        positive_rate("the maximum bandwidth", self.max_bandwidth)?;
        if self.min_bandwidth > self.max_bandwidth {
            return Err(ConfigError::Bounds {
                min: self.min_bandwidth,
                max: self.max_bandwidth,
            });
        }
        if let Some(b) = self.initial_bandwidth {
            positive_rate("the initial bandwidth", b)?;
            if b < self.min_bandwidth || b > self.max_bandwidth {
                return Err(ConfigError::Initial {
                    value: b,
                    min: self.min_bandwidth,
                    max: self.max_bandwidth,
                });
            }
        }
        if let Some(t) = self.threshold {
            if !(t.is_finite() && t > 0.0) {
                return Err(ConfigError::Threshold(t));
            }
        }
        if let Some(b) = self.fixed_bandwidth {
            positive_rate("the fixed bandwidth", b)?;
        }
        if let Some(b) = self.stop_bandwidth {
            positive_rate("the stop-and-copy bandwidth", b)?;
        }
        if !(self.downtime_limit_s.is_finite()
            && self.downtime_limit_s > 0.0
            && self.downtime_limit_s <= MAX_DURATION_S)
        {
            return Err(ConfigError::Downtime(self.downtime_limit_s));
        }
        if self.safety_rounds == 0 {
            return Err(ConfigError::Safety(self.safety_rounds));
        }
        if let Some(x) = self.max_throttle {
            if !(x > 0.0 && x <= MAX_THROTTLE) {
                return Err(ConfigError::Throttle(x));
            }
        }
        Ok(())
    }

    /// Clamps a rate to [B_min, B_max].
    pub fn clamp(&self, rate: f64) -> f64 {
        if rate.is_nan() {
            return self.min_bandwidth;
        }
        rate.clamp(self.min_bandwidth, self.max_bandwidth)
    }

    /// B_stop: the stop-and-copy cap.
    pub fn stop_cap(&self) -> f64 {
        self.stop_bandwidth.unwrap_or(self.max_bandwidth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(PolicyConfig::default().validate(), Ok(()));
    }

    #[test]
    fn refuses_bad_settings() {
        let base = PolicyConfig::default();
        let cases: Vec<(PolicyConfig, &str)> = vec![
            (
                PolicyConfig {
                    max_rounds: 0,
                    ..base.clone()
                },
                "N must be at least 1",
            ),
            (
                PolicyConfig {
                    stop_remaining: base.memory_bytes * 2.0,
                    ..base.clone()
                },
                "stop level h",
            ),
            (
                PolicyConfig {
                    min_bandwidth: 2.0 * base.max_bandwidth,
                    ..base.clone()
                },
                "above the maximum",
            ),
            (
                PolicyConfig {
                    min_bandwidth: -1.0,
                    ..base.clone()
                },
                "minimum bandwidth",
            ),
            (
                PolicyConfig {
                    threshold: Some(0.0),
                    ..base.clone()
                },
                "threshold",
            ),
            (
                PolicyConfig {
                    initial_bandwidth: Some(1.0),
                    ..base.clone()
                },
                "initial",
            ),
            (
                PolicyConfig {
                    memory_bytes: f64::NAN,
                    ..base.clone()
                },
                "memory size",
            ),
        ];
        for (cfg, needle) in cases {
            let err = cfg.validate().expect_err("must be refused");
            assert!(
                err.to_string().contains(needle),
                "{err} should mention {needle}"
            );
        }
    }

    /// Regression (issue 8): `simulate --memory 1e308` ran and printed `inf` and JSON nulls.
    #[test]
    fn refuses_sizes_rates_and_durations_beyond_the_bounds() {
        let base = PolicyConfig::default();
        let at_bounds = PolicyConfig {
            memory_bytes: MAX_MEMORY_BYTES,
            max_bandwidth: MAX_RATE_BYTES_PER_S,
            fixed_bandwidth: Some(MAX_RATE_BYTES_PER_S),
            downtime_limit_s: MAX_DURATION_S,
            ..base.clone()
        };
        assert_eq!(at_bounds.validate(), Ok(()));
        let cases: Vec<(PolicyConfig, &str)> = vec![
            (
                PolicyConfig {
                    memory_bytes: 1e308,
                    ..base.clone()
                },
                "up to 64 TiB, got 1e308",
            ),
            (
                PolicyConfig {
                    memory_bytes: MAX_MEMORY_BYTES * 2.0,
                    ..base.clone()
                },
                "up to 64 TiB",
            ),
            (
                PolicyConfig {
                    max_bandwidth: 1e308,
                    ..base.clone()
                },
                "maximum bandwidth must be a positive rate in bytes/s up to 10 Tbit/s",
            ),
            (
                PolicyConfig {
                    fixed_bandwidth: Some(MAX_RATE_BYTES_PER_S * 1.01),
                    ..base.clone()
                },
                "fixed bandwidth",
            ),
            (
                PolicyConfig {
                    stop_bandwidth: Some(f64::INFINITY),
                    ..base.clone()
                },
                "got inf",
            ),
            (
                PolicyConfig {
                    downtime_limit_s: MAX_DURATION_S + 1.0,
                    ..base.clone()
                },
                "at most 3 days",
            ),
        ];
        for (cfg, needle) in cases {
            let err = cfg.validate().expect_err("must be refused");
            assert!(
                err.to_string().contains(needle),
                "{err} should mention {needle}"
            );
        }
    }
}
