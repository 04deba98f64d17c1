//! The per-host migration monitor (agent): its capacity book, the VMs it runs, its HTTP API.
//!
//! Map of the crate:
//! - [`capacity`]: the capacity book (sans-IO, time as a parameter): total memory, VMs,
//!   expiring reservations; inquiries answered `accepted` or `refused` with a reason.
//! - [`api`]: the JSON shapes of `/api/v1`.
//! - [`agent`]: the live state shared by the routes: name, token, clock, book, VMs
//!   (`SimGuest`).
//! - [`body`]: JSON request bodies under a cap, decoded strictly.
//! - [`error`]: every error as `{"error": "..."}` with its status.
//! - [`routes`]: the axum router, the token check, the per-request timeout.
//! - [`metrics`]: `/metrics` in the Prometheus text format.
//! - [`server`]: the accept loop: bounded connections, header and request timeouts, a clean
//!   stop on a cancellation token.
//! - [`migrator`]: migrations in (a keyed listener per migration) and out (the engine's
//!   sender), their table, their per-migration numbers.
//! - [`rms`]: the RMS client: registration, heartbeats, the outbox of events and reports.

pub mod agent;
pub mod api;
pub mod body;
pub mod capacity;
pub mod error;
pub mod metrics;
pub mod migrator;
pub mod rms;
pub mod routes;
pub mod server;

pub use agent::{system_clock, Agent, Clock};
pub use capacity::{Answer, BookConfig, CapacityBook};
pub use livemig_http::{Token, TokenError};
pub use migrator::MigratorConfig;
pub use server::{run, ServerConfig};
