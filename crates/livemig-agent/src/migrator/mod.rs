//! Migrations in and out of this host, as the RMS asks for them.
//!
//! - [`table`]: the migrations this agent took part in (local state, live handles, numbers),
//!   and the VMs held by a dirty-log sample ([`crate::sample`]).
//! - [`incoming`]: `POST /api/v1/incoming`: a keyed listener per migration, the received guest
//!   becomes a VM of this host.
//! - [`outgoing`]: `POST /api/v1/outgoing`, its cancel and its grant: the engine's sender on a
//!   thread of its own, every event forwarded to the RMS.
//! - [`qemu_in`], [`qemu_out`]: the same for `qemu` VMs: QEMU's own migration stream relayed
//!   between the agents over the keyed (and TLS) connection, the source driven by
//!   `livemig_qemu`'s governor under the policy.
//! - [`relay`]: that connection's keyed handshake, the byte relay and the destination's
//!   proven verdict.
//! - [`hold`]: a paused copy of unknown outcome saved to a hold file.
//! - [`error`]: why a migration request is refused.
//!
//! Each migration runs on a thread of its own (the engine blocks); its events go to the
//! RMS through the [`crate::rms::Outbox`], which never blocks it.

pub mod error;
pub mod hold;
pub mod incoming;
pub mod outgoing;
pub mod qemu_in;
pub mod qemu_out;
pub mod relay;
pub mod table;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use error::MigrationError;
pub use table::{Entry, Stats, Table};

/// How migrations run on this host.
#[derive(Debug, Clone, PartialEq)]
pub struct MigratorConfig {
    /// The IP the migration listeners bind to (reachable by the other agents).
    pub data_host: IpAddr,
    /// How long an incoming migration's listener waits for its source.
    pub accept_timeout: Duration,
    /// Deadline of a handshake, of every frame and of every keep-alive gap (both ends).
    pub timeout: Duration,
    /// How long a verified copy whose hand-over was interrupted waits for its source.
    pub hold_timeout: Duration,
    /// Dirty-log sample before round 1 (source), seconds; 0 for none.
    pub sample_s: f64,
    /// Longest pause of a guest before the commit (source); more than `timeout`.
    pub max_pause: Duration,
    /// After the commit, how long the source tries to learn the outcome (more than
    /// `timeout`).
    pub resolve_timeout: Duration,
    /// Where a paused copy whose hand-over's outcome is unknown is saved (source in doubt,
    /// destination holding a verified copy its source did not settle); `None`: kept in memory
    /// only, lost when the agent stops.
    pub hold_dir: Option<PathBuf>,
}

impl MigratorConfig {
    /// Listeners on `data_host`, the engine's defaults otherwise (a 120 s accept timeout).
    pub fn new(data_host: IpAddr) -> MigratorConfig {
        let send = livemig_engine::SenderConfig::default();
        MigratorConfig {
            data_host,
            accept_timeout: Duration::from_secs(120),
            timeout: send.timeout,
            hold_timeout: Duration::from_secs(300),
            sample_s: send.sample_s,
            max_pause: send.max_pause,
            resolve_timeout: send.resolve_timeout,
            hold_dir: None,
        }
    }
}

impl Default for MigratorConfig {
    fn default() -> MigratorConfig {
        MigratorConfig::new(IpAddr::from([127, 0, 0, 1]))
    }
}
