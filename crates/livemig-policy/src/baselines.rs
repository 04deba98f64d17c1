//! The baselines of `method.md` section 7: `xen`, `xen-v2`, `qemu`, `fixed`.

use crate::config::QEMU_DEFAULT_BANDWIDTH;
use crate::decision::{Audit, Branch, Decision, StopReason};
use crate::dirty_factor::termination;
use crate::stats::{FactorTracker, Factors, RoundStats, StatsError};
use crate::{Policy, PolicyConfig};

/// Xen's rate step: 50 Mbit/s in bytes/s.
pub const XEN_STEP: f64 = 50e6 / 8.0;
/// Xen's "few pages remain" level, in pages.
pub const XEN_FEW_PAGES: f64 = 50.0;
/// Legacy Xen's round limit.
pub const XEN_MAX_ROUNDS: u32 = 30;
/// Legacy Xen stops once it has sent more than this many times the memory size.
pub const XEN_MAX_FACTOR: f64 = 3.0;
/// Xen 4.6+ (`xg_sr_save.c`) round limit.
pub const XEN_V2_MAX_ROUNDS: u32 = 5;

/// Shared bookkeeping: the factor tracker and the "already stopped" guard.
#[derive(Debug, Clone, Default)]
struct Rounds {
    tracker: FactorTracker,
    stopped: bool,
}

impl Rounds {
    fn push(&mut self, s: &RoundStats) -> Result<Factors, StatsError> {
        if self.stopped {
            return Err(StatsError::AfterStop(s.round));
        }
        self.tracker.push(s)
    }

    fn stop(&mut self, reason: StopReason, audit: Audit) -> Decision {
        self.stopped = true;
        Decision::stop(reason, audit)
    }
}

/// `xen`: legacy adaptive rate (`xc_domain_save.c`). Round 1 at B_min; when the dirty rate
/// exceeds the current rate, rate = dirty rate + 50 Mbit/s capped at B_max; never lowered.
/// Xen's own bounds are 100 and 500 Mbit/s; here the operator's B_min and B_max are used.
#[derive(Debug, Clone)]
pub struct Xen {
    cfg: PolicyConfig,
    rounds: Rounds,
    last_sent: Option<f64>,
}

impl Xen {
    /// A policy for a validated config.
    pub fn new(cfg: PolicyConfig) -> Xen {
        Xen {
            cfg,
            rounds: Rounds::default(),
            last_sent: None,
        }
    }
}

impl Policy for Xen {
    fn name(&self) -> &'static str {
        "xen"
    }
    fn threshold(&self) -> Option<f64> {
        None
    }
    fn first_cap(&self) -> f64 {
        self.cfg.min_bandwidth
    }
    fn stop_copy_cap(&self) -> f64 {
        self.cfg.stop_cap()
    }
    fn after_round(&mut self, s: &RoundStats) -> Result<Decision, StatsError> {
        let f = self.rounds.push(s)?;
        let audit = Audit::measured(&f, s.cap_bytes_per_s, s.dirty_bytes, None);
        let previous = self.last_sent.replace(s.bytes_sent);
        let few_pages = s.dirty_bytes < XEN_FEW_PAGES * self.cfg.page_size;
        let at_max = s.cap_bytes_per_s >= self.cfg.max_bandwidth;
        let growing = previous.is_some_and(|p| s.bytes_sent > p);
        let reason = if few_pages {
            Some(StopReason::FewPagesRemain)
        } else if growing && at_max {
            Some(StopReason::NotShrinkingAtMax)
        } else if f.round >= XEN_MAX_ROUNDS {
            Some(StopReason::RoundLimit)
        } else if self.rounds.tracker.total_sent() > XEN_MAX_FACTOR * self.cfg.memory_bytes {
            Some(StopReason::TotalSentLimit)
        } else {
            None
        };
        if let Some(reason) = reason {
            return Ok(self.rounds.stop(reason, audit));
        }
        if f.dirty_rate > s.cap_bytes_per_s {
            let next = (f.dirty_rate + XEN_STEP).min(self.cfg.max_bandwidth);
            let mut audit = audit;
            audit.estimate_bytes_per_s = Some(f.dirty_rate + XEN_STEP);
            audit.clamped = next < f.dirty_rate + XEN_STEP;
            Ok(Decision::next(
                next.max(s.cap_bytes_per_s),
                Branch::XenRaise,
                audit,
            ))
        } else {
            Ok(Decision::next(s.cap_bytes_per_s, Branch::XenKeep, audit))
        }
    }
}

/// When a constant-cap baseline ends pre-copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRule {
    /// `xen-v2`: fewer than 50 pages remain, or 5 rounds.
    XenV2,
    /// `qemu`: the remainder fits the downtime limit at the measured bandwidth, or the safety
    /// round limit.
    Qemu,
    /// `fixed`: N rounds or at most h left.
    Fixed,
}

/// The baselines that hold one cap for every round:
/// - `xen-v2`: Xen 4.6+ stream (`xg_sr_save.c`), no rate limit (the link's speed, modelled as
///   B_max); stops when fewer than 50 pages remain or after 5 rounds.
/// - `qemu`: a fixed `max-bandwidth` (default 128 MiB/s); switches over once the remaining
///   bytes fit in the downtime limit at the bandwidth measured in the last round; a round-count
///   safety limit stands in for QEMU's abort-by-timeout.
/// - `fixed`: one cap B (default B_max); stops at N rounds or when at most h remains.
#[derive(Debug, Clone)]
pub struct Constant {
    cfg: PolicyConfig,
    cap: f64,
    rule: StopRule,
    rounds: Rounds,
}

impl Constant {
    /// `xen-v2` for a validated config.
    pub fn xen_v2(cfg: PolicyConfig) -> Constant {
        let cap = cfg.max_bandwidth;
        Constant::new(cfg, cap, StopRule::XenV2)
    }

    /// `qemu` for a validated config.
    pub fn qemu(cfg: PolicyConfig) -> Constant {
        let cap = cfg.fixed_bandwidth.unwrap_or(QEMU_DEFAULT_BANDWIDTH);
        Constant::new(cfg, cap, StopRule::Qemu)
    }

    /// `fixed` for a validated config.
    pub fn fixed(cfg: PolicyConfig) -> Constant {
        let cap = cfg.fixed_bandwidth.unwrap_or(cfg.max_bandwidth);
        Constant::new(cfg, cap, StopRule::Fixed)
    }

    fn new(cfg: PolicyConfig, cap: f64, rule: StopRule) -> Constant {
        Constant {
            cfg,
            cap,
            rule,
            rounds: Rounds::default(),
        }
    }

    fn stop_reason(&self, f: &Factors, remaining: f64) -> Option<StopReason> {
        match self.rule {
            StopRule::XenV2 if remaining < XEN_FEW_PAGES * self.cfg.page_size => {
                Some(StopReason::FewPagesRemain)
            }
            StopRule::XenV2 => (f.round >= XEN_V2_MAX_ROUNDS).then_some(StopReason::RoundLimit),
            StopRule::Qemu if remaining <= f.effective_bandwidth * self.cfg.downtime_limit_s => {
                Some(StopReason::DowntimeFits)
            }
            StopRule::Qemu => {
                (f.round >= self.cfg.safety_rounds).then_some(StopReason::SafetyLimit)
            }
            StopRule::Fixed => termination(&self.cfg, f.round, remaining),
        }
    }
}

impl Policy for Constant {
    fn name(&self) -> &'static str {
        match self.rule {
            StopRule::XenV2 => "xen-v2",
            StopRule::Qemu => "qemu",
            StopRule::Fixed => "fixed",
        }
    }
    fn threshold(&self) -> Option<f64> {
        None
    }
    fn first_cap(&self) -> f64 {
        self.cap
    }
    fn stop_copy_cap(&self) -> f64 {
        self.cfg.stop_cap()
    }
    fn after_round(&mut self, s: &RoundStats) -> Result<Decision, StatsError> {
        let f = self.rounds.push(s)?;
        let mut audit = Audit::measured(&f, s.cap_bytes_per_s, s.dirty_bytes, None);
        if self.rule == StopRule::Qemu {
            audit.estimate_bytes_per_s = Some(f.effective_bandwidth);
        }
        match self.stop_reason(&f, s.dirty_bytes) {
            Some(reason) => Ok(self.rounds.stop(reason, audit)),
            None => Ok(Decision::next(self.cap, Branch::Constant, audit)),
        }
    }
}
