//! The per-host migration monitor (agent): its capacity book, the VMs it runs, its HTTP API.
//! The HTTP plumbing (token, bodies, errors, guard, accept loop) is `livemig_http`'s.
//!
//! Map of the crate:
//! - [`capacity`]: the capacity book (sans-IO, time as a parameter): total memory, VMs,
//!   expiring reservations; inquiries answered `accepted` or `refused` with a reason.
//! - [`api`]: the JSON shapes of `/api/v1`.
//! - [`agent`]: the live state shared by the routes: name, token, clock, book, VMs
//!   (`SimGuest`, or a QEMU process).
//! - [`qemu`]: QEMU VMs (kind `qemu`): the test guest under TCG in a directory of its own,
//!   how `memory_bytes` maps to `-m`, the heartbeat as `writes`, a bounded stop.
//! - [`routes`]: the axum router behind `livemig_http`'s guard (token, request timeout,
//!   body cap); the statuses of capacity errors.
//! - [`metrics`]: `/metrics` in the Prometheus text format.
//! - [`server`]: `livemig_http`'s accept loop, plus the migrations' part of a stop: cancel
//!   those not yet committed at once, wait a grace for the rest.
//! - [`sample`]: a VM's dirty-log sample on request, the VM held like a migrating one.
//! - [`migrator`]: migrations in (a keyed listener per migration) and out (the engine's
//!   sender), their table, their per-migration numbers.
//! - [`rms`]: the RMS client: registration, heartbeats, the outbox of events and reports.
//! - [`chain`]: an error and its sources on one line.

pub mod agent;
pub mod api;
pub mod capacity;
pub mod chain;
pub mod metrics;
pub mod migrator;
pub mod qemu;
pub mod rms;
pub mod routes;
pub mod sample;
pub mod server;
pub mod tls;

pub use agent::{system_clock, Agent, Clock};
pub use capacity::{Answer, BookConfig, CapacityBook};
pub use livemig_http::{Token, TokenError};
pub use migrator::MigratorConfig;
pub use qemu::QemuConfig;
pub use server::{run, ServerConfig};
