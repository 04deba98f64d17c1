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
pub use outbox::{deliver, Inbox, Outbound, Outbox};

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;

/// Light events queued for the RMS at most (beyond, progress is dropped).
pub const LIGHT_EVENTS_QUEUED: usize = 256;

/// Starts the registration loop and the outbox's delivery on the current runtime, both until
/// `stop`. Cancel `stop` after the server has stopped, so that the events of migrations it
/// cancelled are still delivered.
pub fn spawn(
    client: RmsClient,
    inbox: Inbox,
    link: LinkConfig,
    agent: Arc<Agent>,
    stop: CancellationToken,
) -> (JoinHandle<()>, JoinHandle<()>) {
    let l = tokio::spawn(run_link(client.clone(), agent, link, stop.clone()));
    let d = tokio::spawn(deliver(client, inbox, stop));
    (l, d)
}
