//! The one store interface the RMS shell talks to, whatever the database.

use livemig_rms::{Change, Config, Host, Migration, MigrationId, Orchestrator, Vm};

use crate::error::StoreError;

/// The RMS's durable state: what `livemig-rms` persists through [`livemig_rms::Effect::Persist`].
///
/// Synchronous: the shell calls it from a blocking task, one change at a time, in effect
/// order, and carries out no later effect until [`Store::apply`] returned `Ok`.
pub trait Store: Send + std::fmt::Debug {
    /// Writes one persisted change (a host, a VM with its location, or a migration with its
    /// attempts, reservation, rounds, report and error) in one transaction: when this returns
    /// `Ok` the change is durable; on an error nothing of it was written.
    fn apply(&mut self, change: &Change) -> Result<(), StoreError>;

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
