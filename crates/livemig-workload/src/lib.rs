//! Workloads: how a guest dirties its memory, shared by the simulator and the engine.
//!
//! Map of the crate:
//! - [`units`]: sizes, rates, durations and fractions with units (`4GiB`, `100Mbit/s`, `300ms`,
//!   `10%`), parsing and printing.
//! - [`rate`]: [`RateSeries`], a piecewise-constant write rate over time (constant, phased or a
//!   replayed trace) and its integral.
//! - [`trace`]: the CSV trace format (`time_s,dirty_rate_bytes_per_s[,period_s]`).
//! - [`workingset`]: [`WorkingSet`], a measured curve of distinct dirty bytes over time.
//! - [`spec`]: [`Workload`], parsed from `KIND:key=value,...`.
//! - [`model`]: [`DirtyModel`], the expected number of distinct dirty bytes after a number of
//!   written bytes, per access pattern.
//! - [`sampler`]: [`PageSampler`], the pages a real writer hits for each pattern, and the
//!   seeded generator [`sampler::SplitMix64`] (used by the engine's simulated guest).

pub mod model;
pub mod rate;
pub mod sampler;
pub mod spec;
pub mod trace;
pub mod workingset;

/// Quantities with units, re-exported from `livemig-units` (their own crate so that the policy
/// crate can read settings without depending on workloads).
pub use livemig_units as units;

pub use model::DirtyModel;
pub use rate::RateSeries;
pub use sampler::PageSampler;
pub use spec::{Pattern, SpecError, Workload};
pub use workingset::WorkingSet;

/// An error with its whole source chain, as the CLI prints it (for tests).
#[cfg(test)]
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}
