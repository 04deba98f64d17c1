//! What an executor measured in one pre-copy round, and the running dirty-factor averages.

use serde::{Deserialize, Serialize};

/// The measurements of one finished pre-copy round (section 2 of `method.md`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RoundStats {
    /// k, starting at 1.
    pub round: u32,
    /// B_k^set: the cap that was set for the round (bytes/s).
    pub cap_bytes_per_s: f64,
    /// V_k: bytes sent in the round.
    pub bytes_sent: f64,
    /// t_k: wall duration of the round in seconds.
    pub duration_s: f64,
    /// D_k: bytes of distinct pages dirtied during the round (what round k+1 must send).
    pub dirty_bytes: f64,
}

/// What an executor sees of the round under way, for a mid-round check
/// ([`crate::Policy::during_round`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundProbe {
    /// k, the round under way.
    pub round: u32,
    /// Seconds since the round began.
    pub elapsed_s: f64,
    /// Bytes sent in the round so far.
    pub bytes_sent: f64,
    /// Distinct bytes dirtied since the round began, where the executor sees them mid-round
    /// (the engine's dirty log, the simulator); `None` for QEMU, whose dirty bitmap is synced
    /// only at the end of a pass.
    pub dirtied_bytes: Option<f64>,
    /// The cap in force.
    pub cap_bytes_per_s: f64,
}

/// A dirty-log sample taken before migration: after clearing the log, the distinct dirty bytes
/// seen at each elapsed time. Points are `(elapsed_s, distinct_dirty_bytes)`, elapsed > 0,
/// in increasing order of time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct DirtySample {
    pub points: Vec<(f64, f64)>,
    /// How finely the executor measured the rate behind the points (bytes/s), when it is
    /// coarse: QEMU's `calc-dirty-rate` answers in whole MiB/s from sampled pages. Absent for
    /// an exact dirty log (the simulator, the engine's `SimGuest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution_bytes_per_s: Option<f64>,
}

impl DirtySample {
    /// The points that are finite, with positive elapsed time and non-negative bytes.
    pub fn valid_points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.points
            .iter()
            .copied()
            .filter(|&(t, d)| t.is_finite() && t > 0.0 && d.is_finite() && d >= 0.0)
    }
}

/// Why a [`RoundStats`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error("round {got} reported where round {expected} was expected")]
    OutOfOrder { expected: u32, got: u32 },
    #[error("{field} of round {round} must be finite and non-negative, got {value}")]
    Invalid {
        round: u32,
        field: &'static str,
        value: f64,
    },
    #[error("round {0} reported after the policy already chose stop-and-copy")]
    AfterStop(u32),
}

impl RoundStats {
    /// Checks that every number is finite and non-negative.
    pub fn validate(&self) -> Result<(), StatsError> {
        for (field, value) in [
            ("the cap", self.cap_bytes_per_s),
            ("the bytes sent", self.bytes_sent),
            ("the duration", self.duration_s),
            ("the dirty bytes", self.dirty_bytes),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(StatsError::Invalid {
                    round: self.round,
                    field,
                    value,
                });
            }
        }
        Ok(())
    }

    /// V_k / t_k. A round that sent nothing or took no time has no measurable bandwidth; the
    /// cap it ran under stands in for it.
    pub fn effective_bytes_per_s(&self) -> f64 {
        if self.duration_s > 0.0 && self.bytes_sent > 0.0 {
            self.bytes_sent / self.duration_s
        } else {
            self.cap_bytes_per_s
        }
    }

    /// P_k = D_k / t_k (zero for a round that took no time).
    pub fn dirty_rate_bytes_per_s(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.dirty_bytes / self.duration_s
        } else {
            0.0
        }
    }

    /// rho_k = P_k / B_k with the effective bandwidth.
    pub fn factor(&self) -> f64 {
        let b = self.effective_bytes_per_s();
        if b > 0.0 {
            self.dirty_rate_bytes_per_s() / b
        } else {
            0.0
        }
    }
}

/// The derived quantities after round k.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Factors {
    /// k.
    pub round: u32,
    /// P_k.
    pub dirty_rate: f64,
    /// V_k / t_k.
    pub effective_bandwidth: f64,
    /// rho_k.
    pub factor: f64,
    /// rho_1 + ... + rho_k.
    pub factor_sum: f64,
    /// rhobar_k.
    pub avg_factor: f64,
    /// Phat = (P_1 + ... + P_k) / k.
    pub mean_dirty_rate: f64,
}

/// Running sums over the finished rounds; checks that rounds arrive in order.
#[derive(Debug, Clone, Default)]
pub struct FactorTracker {
    rounds: u32,
    factor_sum: f64,
    rate_sum: f64,
    bytes_sent: f64,
    last_sent: Option<f64>,
}

impl FactorTracker {
    /// Adds round k's statistics and returns the quantities after it.
    pub fn push(&mut self, s: &RoundStats) -> Result<Factors, StatsError> {
        s.validate()?;
        let expected = self.rounds + 1;
        if s.round != expected {
            return Err(StatsError::OutOfOrder {
                expected,
                got: s.round,
            });
        }
        self.rounds = expected;
        let factor = s.factor();
        let rate = s.dirty_rate_bytes_per_s();
        self.factor_sum += factor;
        self.rate_sum += rate;
        self.last_sent = Some(self.bytes_sent);
        self.bytes_sent += s.bytes_sent;
        let k = f64::from(self.rounds);
        Ok(Factors {
            round: self.rounds,
            dirty_rate: rate,
            effective_bandwidth: s.effective_bytes_per_s(),
            factor,
            factor_sum: self.factor_sum,
            avg_factor: self.factor_sum / k,
            mean_dirty_rate: self.rate_sum / k,
        })
    }

    /// Rounds pushed so far.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// Bytes sent over all pushed rounds.
    pub fn total_sent(&self) -> f64 {
        self.bytes_sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(k: u32, sent: f64, t: f64, dirty: f64) -> RoundStats {
        RoundStats {
            round: k,
            cap_bytes_per_s: 100.0,
            bytes_sent: sent,
            duration_s: t,
            dirty_bytes: dirty,
        }
    }

    #[test]
    fn factors_follow_the_definitions() {
        let mut t = FactorTracker::default();
        let f1 = t.push(&round(1, 1000.0, 10.0, 200.0)).expect("valid");
        assert_eq!(f1.effective_bandwidth, 100.0);
        assert_eq!(f1.dirty_rate, 20.0);
        assert!((f1.factor - 0.2).abs() < 1e-12);
        let f2 = t.push(&round(2, 200.0, 4.0, 100.0)).expect("valid");
        // P_2 = 25, B_2 = 50, rho_2 = 0.5.
        assert!((f2.factor - 0.5).abs() < 1e-12);
        assert!((f2.avg_factor - 0.35).abs() < 1e-12);
        assert!((f2.mean_dirty_rate - 22.5).abs() < 1e-12);
        assert_eq!(t.total_sent(), 1200.0);
    }

    #[test]
    fn refuses_out_of_order_and_invalid_rounds() {
        let mut t = FactorTracker::default();
        assert_eq!(
            t.push(&round(2, 1.0, 1.0, 1.0)),
            Err(StatsError::OutOfOrder {
                expected: 1,
                got: 2
            })
        );
        assert!(matches!(
            t.push(&round(1, f64::NAN, 1.0, 1.0)),
            Err(StatsError::Invalid { .. })
        ));
        assert!(matches!(
            t.push(&round(1, 1.0, -1.0, 1.0)),
            Err(StatsError::Invalid { .. })
        ));
        assert_eq!(t.rounds(), 0);
    }

    #[test]
    fn empty_round_uses_the_cap() {
        let s = round(1, 0.0, 0.0, 0.0);
        assert_eq!(s.effective_bytes_per_s(), 100.0);
        assert_eq!(s.factor(), 0.0);
    }
}
