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

/// `xen-v2`: Xen 4.6+ stream (`xg_sr_save.c`): no rate limit (the link's speed, modelled as
/// B_max), stop when fewer than 50 pages remain or after 5 rounds.
#[derive(Debug, Clone)]
pub struct XenV2 {
    cfg: PolicyConfig,
    rounds: Rounds,
}

impl XenV2 {
    /// A policy for a validated config.
    pub fn new(cfg: PolicyConfig) -> XenV2 {
        XenV2 {
            cfg,
            rounds: Rounds::default(),
        }
    }
}

impl Policy for XenV2 {
    fn name(&self) -> &'static str {
        "xen-v2"
    }
    fn threshold(&self) -> Option<f64> {
        None
    }
    fn first_cap(&self) -> f64 {
        self.cfg.max_bandwidth
    }
    fn stop_copy_cap(&self) -> f64 {
        self.cfg.stop_cap()
    }
    fn after_round(&mut self, s: &RoundStats) -> Result<Decision, StatsError> {
        let f = self.rounds.push(s)?;
        let audit = Audit::measured(&f, s.cap_bytes_per_s, s.dirty_bytes, None);
        if s.dirty_bytes < XEN_FEW_PAGES * self.cfg.page_size {
            return Ok(self.rounds.stop(StopReason::FewPagesRemain, audit));
        }
        if f.round >= XEN_V2_MAX_ROUNDS {
            return Ok(self.rounds.stop(StopReason::RoundLimit, audit));
        }
        Ok(Decision::next(
            self.cfg.max_bandwidth,
            Branch::Constant,
            audit,
        ))
    }
}

/// `qemu`: a fixed `max-bandwidth` (default 128 MiB/s); switch over once the remaining bytes
/// fit in the downtime limit at the bandwidth measured in the last round; a round-count safety
/// limit stands in for QEMU's abort-by-timeout.
#[derive(Debug, Clone)]
pub struct Qemu {
    cfg: PolicyConfig,
    cap: f64,
    rounds: Rounds,
}

impl Qemu {
    /// A policy for a validated config.
    pub fn new(cfg: PolicyConfig) -> Qemu {
        let cap = cfg.fixed_bandwidth.unwrap_or(QEMU_DEFAULT_BANDWIDTH);
        Qemu {
            cfg,
            cap,
            rounds: Rounds::default(),
        }
    }
}

impl Policy for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
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
        let fits = f.effective_bandwidth * self.cfg.downtime_limit_s;
        audit.estimate_bytes_per_s = Some(f.effective_bandwidth);
        if s.dirty_bytes <= fits {
            return Ok(self.rounds.stop(StopReason::DowntimeFits, audit));
        }
        if f.round >= self.cfg.safety_rounds {
            return Ok(self.rounds.stop(StopReason::SafetyLimit, audit));
        }
        Ok(Decision::next(self.cap, Branch::Constant, audit))
    }
}

/// `fixed`: one constant cap B (default B_max); stop at N rounds or when at most h remains.
#[derive(Debug, Clone)]
pub struct Fixed {
    cfg: PolicyConfig,
    cap: f64,
    rounds: Rounds,
}

impl Fixed {
    /// A policy for a validated config.
    pub fn new(cfg: PolicyConfig) -> Fixed {
        let cap = cfg.fixed_bandwidth.unwrap_or(cfg.max_bandwidth);
        Fixed {
            cfg,
            cap,
            rounds: Rounds::default(),
        }
    }
}

impl Policy for Fixed {
    fn name(&self) -> &'static str {
        "fixed"
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
        let audit = Audit::measured(&f, s.cap_bytes_per_s, s.dirty_bytes, None);
        if let Some(reason) = termination(&self.cfg, f.round, s.dirty_bytes) {
            return Ok(self.rounds.stop(reason, audit));
        }
        Ok(Decision::next(self.cap, Branch::Constant, audit))
    }
}
