//! The agent's side of the RMS: its HTTP client, the registration and heartbeat loop, and the
//! outbox that forwards migration events and reports without ever blocking a migration.
//!
//! - [`client`]: one bounded request to the RMS, with the cluster's bearer token.
//! - [`link`]: register (retrying until the RMS answers), then heartbeat; a 404 registers
//!   again.
//! - [`outbox`]: events and reports queued from migration threads, delivered in order by one
//!   task; progress is dropped when too much is queued, terminal events are retried.

pub mod client;
pub mod link;
pub mod outbox;

pub use client::{RmsClient, RmsError};
pub use link::{run_link, LinkConfig};
pub use outbox::{deliver, Outbound, Outbox};
