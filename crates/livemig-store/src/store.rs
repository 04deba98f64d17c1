//! The one store interface the RMS shell talks to, whatever the database.

use std::time::Duration;

use livemig_rms::{Change, Config, Host, Migration, MigrationId, Orchestrator, Vm};

use crate::error::StoreError;
use crate::lease::Leadership;

/// The RMS's durable state: what `livemig-rms` persists through [`livemig_rms::Effect::Persist`].
///
/// Synchronous: the shell calls it from a blocking task, one change at a time, in effect
/// order, and carries out no later effect until [`Store::apply`] returned `Ok`.
pub trait Store: Send + std::fmt::Debug {
    /// Writes one persisted change (a host, a VM with its location, or a migration with its
    /// attempts, reservation, rounds, report and error) in one transaction: when this returns
    /// `Ok` the change is durable; on an error nothing of it was written.
    ///
    /// Fenced: once this store has led ([`Store::lead`] returned `Leader`), the same
    /// transaction checks, with the lease row locked, that its holder and epoch are still the
    /// current ones and the lease has not expired by the database's clock; otherwise it
    /// writes nothing and returns [`StoreError::Fenced`]. A store that never led writes unless
    /// another holds a live lease (then `Fenced` too).
    fn apply(&mut self, change: &Change) -> Result<(), StoreError>;

    /// Takes, renews or reports the lease that makes one RMS the active one, by the
    /// database's clock, in one transaction:
    /// - free or expired: `holder` takes it with the epoch + 1 → `Leader`;
    /// - held live by `holder` at the epoch this store led with: renewed for `ttl` from now,
    ///   same epoch → `Leader`;
    /// - held live by `holder` at another epoch (an earlier process under the same name, or
    ///   this store after its lease lapsed): taken over, epoch + 1 → `Leader`;
    /// - held live by another: nothing written → `Follower`.
    ///
    /// The active RMS calls it every `ttl / 3` or so and stops acting as the leader when it
    /// gets `Follower` or an error (or when `ttl` passed since its last successful call).
    /// [`StoreError::BadLease`] for an empty holder or a ttl outside 1 ms ..= 1 day.
    fn lead(&mut self, holder: &str, ttl: Duration) -> Result<Leadership, StoreError>;

    /// Gives the lease up (it expires now, so a standby takes it at its next `lead`) if this
    /// store still holds it; nothing otherwise. Later writes of this store are fenced.
    fn resign(&mut self) -> Result<(), StoreError>;

    /// Everything recovery needs after a restart, read in one transaction.
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// The hosts, by name.
    fn hosts(&self) -> Result<Vec<Host>, StoreError>;
    fn host(&self, name: &str) -> Result<Option<Host>, StoreError>;
    /// The VMs with their location (`Vm::host`), by name.
    fn vms(&self) -> Result<Vec<Vm>, StoreError>;
    fn vm(&self, name: &str) -> Result<Option<Vm>, StoreError>;
    /// The migrations, by id.
    fn migrations(&self) -> Result<Vec<Migration>, StoreError>;
    fn migration(&self, id: MigrationId) -> Result<Option<Migration>, StoreError>;
}

/// The whole persisted state, as read at one instant.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// By name.
    pub hosts: Vec<Host>,
    /// By name; each VM's `host` is the location table's entry.
    pub vms: Vec<Vm>,
    /// By id; reservations are part of their migration.
    pub migrations: Vec<Migration>,
}

impl Snapshot {
    /// The orchestrator as the store holds it, at `now` (the shell's clock, which must
    /// survive the restart). Follow with `Input::Restarted` once the agents have reported.
    pub fn restore(self, config: Config, now: f64) -> Orchestrator {
        Orchestrator::restore(config, now, self.hosts, self.vms, self.migrations)
    }
}
