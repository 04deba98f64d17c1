//! A deterministic, clock-free simulation of draining hosts: every VM of the draining hosts
//! migrates at once, admitted and granted by the RMS's own allocator
//! (`livemig_rms::budget::plan`), each migration simulated round by round by the simulator's
//! model (`livemig_sim::Stepper`), the physical links shared fairly. It compares livemig's
//! budget with the baselines behind the same allocator (`docs/budget.md`, "Datacenter scale").
//!
//! Map of the crate:
//! - [`scenario`]: [`DrainScenario`], the fleet, the network, the policy; validation;
//! - [`mix`]: the workload classes (`idle`, `web`, `db`, `heavy`, ...) and their weights;
//! - [`fleet`]: the VMs drawn from the seed, and their placement;
//! - [`share`]: max-min fair rates on the physical links;
//! - [`run`]: the drain, event by event, under one scheme;
//! - [`figures`]: every VM's outcome and the figures per scheme.

pub mod figures;
pub mod fleet;
pub mod mix;
pub mod run;
pub mod scenario;
pub mod share;

use serde::{Deserialize, Serialize};

pub use figures::{median, DrainFigures, Outcome, VmOutcome};
pub use mix::{Mix, MixError};
pub use run::{run_scheme, DrainError, SchemeName, Tick};
pub use scenario::{DrainScenario, ScenarioError};

/// A drain under several schemes: the scenario's main numbers and the figures of each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainReport {
    pub hosts: u32,
    pub drain: u32,
    pub vms_per_host: u32,
    pub migrations: u64,
    pub budget_bytes_per_s: f64,
    pub uplink_bytes_per_s: f64,
    pub nic_bytes_per_s: f64,
    pub policy: String,
    pub mix: String,
    pub rounds: u32,
    pub stop_bytes: f64,
    pub seed: u64,
    pub figures: Vec<DrainFigures>,
}

/// Simulates the drain of `s` under each of `schemes`.
pub fn drain(s: &DrainScenario, schemes: &[SchemeName]) -> Result<DrainReport, DrainError> {
    // The schemes are independent: one thread each (the result does not depend on it).
    let results: Vec<Result<DrainFigures, DrainError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = schemes
            .iter()
            .map(|&scheme| scope.spawn(move || run_scheme(s, scheme, &mut |_| {}).map(|(f, _)| f)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let figures = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(DrainReport {
        hosts: s.hosts,
        drain: s.drain,
        vms_per_host: s.vms_per_host,
        migrations: s.migrations(),
        budget_bytes_per_s: s.budget_bytes_per_s,
        uplink_bytes_per_s: s.uplink(),
        nic_bytes_per_s: s.nic_bytes_per_s,
        policy: s.policy.name().to_string(),
        mix: s.mix.to_string(),
        rounds: s.rounds,
        stop_bytes: s.stop_bytes,
        seed: s.seed,
        figures,
    })
}

#[cfg(test)]
mod tests;
