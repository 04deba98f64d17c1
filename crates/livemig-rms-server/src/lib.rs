//! The RMS service around the pure orchestrator of `livemig-rms`: its driver, its HTTP API,
//! its client of the agents, and recovery after a restart. It speaks HTTP to agents and never
//! imports the engine or the QEMU crate.
//!
//! Map of the crate:
//! - [`driver`]: the thread that owns the orchestrator and the store; inputs in, effects out
//!   in order, every `Persist` durable before the next effect.
//! - [`actions`]: the dispatcher that carries out the actions against the agents and feeds
//!   their answers back as inputs.
//! - [`client`]: the agent client (token, deadlines, capped answers).
//! - [`grants`]: budget grants sent to the sources in the order they were made.
//! - [`keys`]: a fresh key per migration.
//! - [`recover`]: after a restart, what each agent runs.
//! - [`routes`]: the HTTP API (operators and agents).
//! - [`metrics`] renders `GET /metrics`.
//! - [`dashboard`]: the web page at `/` and its assets, compiled in.
//! - [`service`]: [`run`], the whole process.

pub mod actions;
pub mod client;
pub mod dashboard;
pub mod driver;
pub mod grants;
pub mod keys;
pub mod metrics;
pub mod recover;
pub mod routes;
pub mod service;

pub use driver::Leading;
pub use driver::{system_clock, Clock};
pub use service::{await_leadership, run, RmsConfig, RmsError, RmsTls};
