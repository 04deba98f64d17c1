//! A deterministic simulator of one pre-copy migration over a link, driven by any policy.
//!
//! Map of the crate:
//! - [`scenario`]: a scenario (memory, workload, N, h, bounds, link) from TOML or flags.
//! - [`link`]: the link model (capacity, state size, resume latency, measurement noise).
//! - [`run`]: [`run::simulate`], the round loop feeding `RoundStats` to a `Policy`.
//! - [`step`]: [`step::Stepper`], one migration stepped from outside (a changing grant, a
//!   rate set by shared links), with the same per-round model.
//! - [`peak`]: the highest windowed rate of a piecewise-constant transfer.
//! - [`oracle`]: the lowest constant bandwidth that meets the same N and h.
//! - [`bench`]: every policy over a suite of scenarios, with ratios to the oracle.
//! - [`noise`]: a small seeded generator for measurement noise.

pub mod bench;
pub mod link;
pub mod noise;
pub mod oracle;
pub mod peak;
pub mod run;
pub mod scenario;
pub mod step;

pub use link::Link;
pub use run::{simulate, simulate_granted, simulate_observed, SimError};
pub use scenario::{Scenario, ScenarioError, ScenarioSpec};
pub use step::{Stepped, Stepper};
