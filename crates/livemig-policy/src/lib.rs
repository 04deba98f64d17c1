//! The method of `shared/docs/method.md`: per-round dirty-page factors, the threshold, the
//! bandwidth decision, termination; and the baselines it is compared against.
//!
//! Map of the crate:
//! - [`config`]: the operator's settings (M, N, h, bandwidth bounds) and their validation.
//! - [`settings`]: [`PolicySpec`], the same settings as written (units, every field optional),
//!   resolved into a [`PolicyConfig`]; scenario files and the command line both use it.
//! - [`stats`]: [`RoundStats`], what an executor measured in one round, and the running
//!   [`stats::FactorTracker`] (P_k, rho_k, rhobar_k, Phat).
//! - [`threshold`]: T = (h / M)^(1 / N).
//! - [`decision`]: [`Decision`], [`Action`] and the [`Audit`] record every policy returns.
//! - [`dirty_factor`]: the method itself (section 4).
//! - [`baselines`]: `xen`, `xen-v2`, `qemu`, `fixed` (section 7).
//! - [`predictive`]: the method's structure with a fitted growth model and an exact planner.
//! - [`PolicyKind`]: names and construction of every policy.
//! - [`report`]: the one JSON result shape every executor produces.
//! - [`event`]: [`Event`], the one progress vocabulary every executor (and `receive`) emits.
//! - [`control`]: [`Control`], the live handle on a running migration (granted cap, cancel).
//! - [`timeout`]: the per-GiB completion and no-progress timeouts and their action.
//! - [`pilot`]: [`Pilot`], the round sequencer every executor drives (rounds, grant, timeouts,
//!   the runaway guard, the report).
//!
//! Pure code: no I/O and no clock. Time arrives as numbers in [`RoundStats`].

pub mod baselines;
pub mod config;
pub mod control;
pub mod decision;
pub mod dirty_factor;
pub mod event;
pub mod kind;
pub mod pilot;
pub mod predictive;
pub mod report;
pub mod settings;
pub mod stats;
pub mod threshold;
pub mod timeout;

pub use config::{
    ConfigError, PolicyConfig, MAX_DURATION_S, MAX_MEMORY_BYTES, MAX_RATE_BYTES_PER_S,
};
pub use control::Control;
pub use decision::{Action, Audit, Branch, Decision, Probed, Raise, StopReason};
pub use event::{Event, Stamped};
pub use kind::{PolicyKind, UnknownPolicy};
pub use pilot::{Executor, Next, Pilot, PilotError, Setup, TimeoutAction, Timeouts};
pub use settings::{PolicySpec, SettingsError};
pub use stats::{DirtySample, RoundProbe, RoundStats, StatsError};

/// One bandwidth policy: the executor asks it for round 1's cap, reports every finished round
/// and obeys the returned [`Decision`].
pub trait Policy: Send + std::fmt::Debug {
    /// The policy's name as used on the command line.
    fn name(&self) -> &'static str;
    /// The threshold T the policy compares against, when it has one.
    fn threshold(&self) -> Option<f64>;
    /// The cap for round 1 (bytes/s).
    fn first_cap(&self) -> f64;
    /// The cap for the stop-and-copy phase (bytes/s).
    fn stop_copy_cap(&self) -> f64;
    /// Consumes the statistics of the round that just ended and decides what comes next.
    fn after_round(&mut self, stats: &RoundStats) -> Result<Decision, StatsError>;
    /// Takes a dirty-log sample measured before round 1, where the executor can take one
    /// (call it before [`Policy::first_cap`]). Policies that do not use it ignore it.
    fn observe_sample(&mut self, sample: &DirtySample) {
        let _ = sample;
    }
    /// A mid-round check: what the round under way has done so far. A policy that sees the
    /// round going worse than it planned (more dirtied, or slower) answers a higher cap for the
    /// rest of the round. Policies that plan only between rounds ignore it.
    fn during_round(&mut self, probe: &RoundProbe) -> Probed {
        let _ = probe;
        Probed::default()
    }
    /// The share of the guest's CPU the executor measured taken away during the round about to
    /// end (the throttle as applied, which may lag what the policy asked), given just before
    /// `after_round`. A policy that does not throttle ignores it.
    fn throttle_applied(&mut self, share: f64) {
        let _ = share;
    }
}

/// A borrowed policy is a policy (the executors that borrow theirs hand it to a [`Pilot`]).
impl<P: Policy + ?Sized> Policy for &mut P {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn threshold(&self) -> Option<f64> {
        (**self).threshold()
    }
    fn first_cap(&self) -> f64 {
        (**self).first_cap()
    }
    fn stop_copy_cap(&self) -> f64 {
        (**self).stop_copy_cap()
    }
    fn after_round(&mut self, stats: &RoundStats) -> Result<Decision, StatsError> {
        (**self).after_round(stats)
    }
    fn observe_sample(&mut self, sample: &DirtySample) {
        (**self).observe_sample(sample)
    }
    fn during_round(&mut self, probe: &RoundProbe) -> Probed {
        (**self).during_round(probe)
    }
    fn throttle_applied(&mut self, share: f64) {
        (**self).throttle_applied(share)
    }
}
