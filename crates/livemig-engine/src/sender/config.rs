//! The sender's settings and their checks (deadlines, pauses, the lowest usable cap).

use std::time::Duration;

use livemig_policy::Timeouts;

use crate::keepalive;
use crate::wire::{Versions, ONE_PAGE_FRAME};

/// Sender settings.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Try lz4 on every non-zero page.
    pub compress: bool,
    /// h, for the report.
    pub stop_remaining: f64,
    /// How long to sample the dirty log before round 1 (0 = no sample).
    pub sample_s: f64,
    /// The workload spec, for the report.
    pub workload: Option<String>,
    /// Deadline of the handshake, of every frame read or written, and of every keep-alive gap.
    pub timeout: Duration,
    /// Longest pause of the guest before the source has committed: past it, the source aborts
    /// the hand-over and resumes its guest.
    pub max_pause: Duration,
    /// After `Commit`, how long the source keeps trying to learn the destination's outcome
    /// (reconnecting) before it reports the outcome unknown.
    pub resolve_timeout: Duration,
    /// How often to send `Wait` during long local work (the digest at pause).
    pub keepalive: Duration,
    /// The per-GiB completion and no-progress timeouts of pre-copy, and their action.
    pub timeouts: Timeouts,
    /// The protocol versions offered in `Hello` (this build's; a narrower range within it
    /// plays an older source, for tests and for a fleet pinned to one version).
    pub versions: Versions,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            compress: false,
            stop_remaining: 0.0,
            sample_s: 0.5,
            workload: None,
            timeout: Duration::from_secs(10),
            max_pause: Duration::from_secs(30),
            resolve_timeout: Duration::from_secs(60),
            keepalive: keepalive::EVERY,
            timeouts: Timeouts::default(),
            versions: Versions::THIS_BUILD,
        }
    }
}

/// Why sender settings cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("a cap of {cap:.0} bytes/s cannot move one page frame ({ONE_PAGE_FRAME} bytes) within half the timeout of {timeout:?}; raise the cap to at least {need:.0} bytes/s or the timeout")]
    CapTooLow {
        cap: f64,
        timeout: Duration,
        need: f64,
    },
    #[error("the {what} must be positive")]
    Zero { what: &'static str },
    #[error("the maximum pause ({max_pause:?}) must be longer than the timeout ({timeout:?}): the destination's digest and answer must fit in it")]
    PauseTooShort {
        max_pause: Duration,
        timeout: Duration,
    },
    #[error("the resolve timeout ({resolve_timeout:?}) must be longer than the timeout ({timeout:?}): a destination may take that long to notice a lost commit")]
    ResolveTooShort {
        resolve_timeout: Duration,
        timeout: Duration,
    },
    #[error("the dirty-log sample ({sample_s} s) must be shorter than half the timeout ({timeout:?}): the destination hears nothing while it runs")]
    SampleTooLong { sample_s: f64, timeout: Duration },
    #[error("the versions to offer ({0}) are not all spoken by this build ({this})", this = Versions::THIS_BUILD)]
    Versions(Versions),
}

impl SenderConfig {
    /// The lowest cap accepted: one frame of one page in half the timeout (the other half is
    /// margin for the token bucket's burst and the peer's deadline).
    pub fn min_cap(timeout: Duration) -> f64 {
        2.0 * ONE_PAGE_FRAME as f64 / timeout.as_secs_f64().max(1e-9)
    }

    /// Checks the settings against the lowest cap the policy may set.
    pub fn check(&self, lowest_cap: f64) -> Result<(), ConfigError> {
        for (what, d) in [
            ("timeout", self.timeout),
            ("maximum pause", self.max_pause),
            ("resolve timeout", self.resolve_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Zero { what });
            }
        }
        if self.max_pause <= self.timeout {
            return Err(ConfigError::PauseTooShort {
                max_pause: self.max_pause,
                timeout: self.timeout,
            });
        }
        if self.resolve_timeout <= self.timeout {
            return Err(ConfigError::ResolveTooShort {
                resolve_timeout: self.resolve_timeout,
                timeout: self.timeout,
            });
        }
        // The destination hears nothing during the sample: it must end well within its
        // frame deadline (taken to be ours).
        if self.sample_s >= self.timeout.as_secs_f64() / 2.0 {
            return Err(ConfigError::SampleTooLong {
                sample_s: self.sample_s,
                timeout: self.timeout,
            });
        }
        let v = self.versions;
        if !(Versions::THIS_BUILD.contains(v.min()) && Versions::THIS_BUILD.contains(v.max())) {
            return Err(ConfigError::Versions(v));
        }
        let need = SenderConfig::min_cap(self.timeout);
        if lowest_cap.is_nan() || lowest_cap < need {
            return Err(ConfigError::CapTooLow {
                cap: lowest_cap,
                timeout: self.timeout,
                need,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_too_low_for_one_frame_are_refused() {
        let cfg = SenderConfig {
            timeout: Duration::from_secs(10),
            ..SenderConfig::default()
        };
        assert!(matches!(cfg.check(1.0), Err(ConfigError::CapTooLow { .. })));
        assert!(matches!(
            cfg.check(f64::NAN),
            Err(ConfigError::CapTooLow { .. })
        ));
        assert!(cfg.check(SenderConfig::min_cap(cfg.timeout)).is_ok());
        let short = SenderConfig {
            max_pause: Duration::from_secs(5),
            ..cfg.clone()
        };
        assert!(matches!(
            short.check(1e9),
            Err(ConfigError::PauseTooShort { .. })
        ));
        let resolve = SenderConfig {
            resolve_timeout: Duration::from_secs(10),
            ..cfg.clone()
        };
        assert!(matches!(
            resolve.check(1e9),
            Err(ConfigError::ResolveTooShort { .. })
        ));
        let sample = SenderConfig {
            sample_s: 5.0,
            ..cfg.clone()
        };
        assert!(matches!(
            sample.check(1e9),
            Err(ConfigError::SampleTooLong { .. })
        ));
        let future = SenderConfig {
            versions: Versions::new(3, 9).expect("a range"),
            ..cfg.clone()
        };
        assert!(matches!(future.check(1e9), Err(ConfigError::Versions(_))));
        let v3 = SenderConfig {
            versions: Versions::new(3, 3).expect("a range"),
            ..cfg.clone()
        };
        assert!(v3.check(1e9).is_ok());
    }
}
