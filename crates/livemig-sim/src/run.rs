//! The round loop: send, let the guest dirty, ask the policy, repeat; then stop-and-copy.

use livemig_policy::report::{peak_window, MigrationReport, ReportBuilder, StopCopy};
use livemig_policy::{Action, DirtySample, Policy, RoundStats, StatsError};
use livemig_workload::{DirtyModel, Workload};

use crate::link::{Link, SAMPLE_POINTS};
use crate::noise::Noise;

/// Window of the wire-peak measurement (method.md section 8).
pub const PEAK_WINDOW_S: f64 = 0.1;
/// A policy that never chooses stop-and-copy is cut off here.
pub const MAX_SIM_ROUNDS: u32 = 100_000;

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("the policy refused a round")]
    Policy(#[from] StatsError),
    #[error("the policy ran {MAX_SIM_ROUNDS} rounds without choosing stop-and-copy")]
    Endless,
    #[error("round {round} has a zero transfer rate (cap {cap} bytes/s)")]
    ZeroRate { round: u32, cap: f64 },
}

/// What a simulation needs besides the policy.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    pub workload: &'a Workload,
    pub model: &'a DirtyModel,
    pub link: &'a Link,
    pub memory_bytes: f64,
    pub stop_remaining: f64,
}

/// A measured dirty count: the model's, with the link's relative noise.
fn measured(setup: Setup<'_>, noise: &mut Noise, exact: f64) -> f64 {
    if setup.link.noise > 0.0 {
        (exact * (1.0 + setup.link.noise * noise.normal())).clamp(0.0, setup.memory_bytes)
    } else {
        exact
    }
}

/// The dirty-log sample taken during the `sample_s` seconds before the migration starts.
fn sample(setup: Setup<'_>, noise: &mut Noise) -> DirtySample {
    let len = setup.link.sample_s;
    let points = (1..=SAMPLE_POINTS)
        .map(|i| {
            let t = len * f64::from(i) / f64::from(SAMPLE_POINTS);
            let written = setup.workload.rate.written(-len, -len + t);
            (t, measured(setup, noise, setup.model.distinct(written)))
        })
        .collect();
    DirtySample { points }
}

/// Simulates one migration under `policy`.
pub fn simulate(policy: &mut dyn Policy, setup: Setup<'_>) -> Result<MigrationReport, SimError> {
    let mut report = ReportBuilder::new(
        policy.name(),
        "sim",
        setup.memory_bytes,
        setup.stop_remaining,
        policy.threshold(),
    )
    .workload(setup.workload.spec());
    let mut noise = Noise::new(setup.link.seed);
    if setup.link.sample_s > 0.0 {
        policy.observe_sample(&sample(setup, &mut noise));
    }
    let mut segments = Vec::new();
    let mut now = 0.0;
    let mut cap = policy.first_cap();
    let mut to_send = setup.memory_bytes;
    for round in 1..=MAX_SIM_ROUNDS {
        let rate = setup.link.rate(cap);
        if rate <= 0.0 {
            return Err(SimError::ZeroRate { round, cap });
        }
        let duration = to_send / rate;
        let written = setup.workload.rate.written(now, now + duration);
        let mut dirty = setup.model.distinct(written);
        if setup.link.noise > 0.0 {
            dirty =
                (dirty * (1.0 + setup.link.noise * noise.normal())).clamp(0.0, setup.memory_bytes);
        }
        let stats = RoundStats {
            round,
            cap_bytes_per_s: cap,
            bytes_sent: to_send,
            duration_s: duration,
            dirty_bytes: dirty,
        };
        let decision = policy.after_round(&stats)?;
        report.round(&stats, &decision);
        segments.push((now, duration, to_send));
        now += duration;
        match decision.action {
            Action::Continue {
                next_cap_bytes_per_s,
            } => {
                cap = next_cap_bytes_per_s;
                to_send = dirty;
            }
            Action::StopAndCopy { .. } => {
                let stop_rate = setup.link.rate(policy.stop_copy_cap());
                let bytes = dirty + setup.link.state_bytes;
                let transfer = if bytes > 0.0 { bytes / stop_rate } else { 0.0 };
                segments.push((now, transfer, bytes));
                let stop = StopCopy {
                    bytes: dirty,
                    state_bytes: setup.link.state_bytes,
                    downtime_s: transfer + setup.link.resume_latency_s,
                };
                return Ok(report.finish(stop, peak_window(&segments, PEAK_WINDOW_S)));
            }
        }
    }
    Err(SimError::Endless)
}
