//! The JSON shapes of the planned `/api/v1` (serde only, snake_case): what the HTTP layer will
//! accept and return. They live here until a shared `livemig-api` crate takes them.

use livemig_policy::report::{MigrationReport, RoundRecord};
use livemig_policy::PolicySpec;
use serde::{Deserialize, Serialize};

use crate::migration::{Attempt, Migration, MigrationId, MigrationState, QueueSpot};

/// Whether the RMS hears from a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Heard from within its timeout: may receive VMs and reservations.
    Alive,
    /// Not heard from within its timeout: gets no new VMs or reservations.
    Lost,
}

/// `GET /api/v1/hosts` returns a list of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct HostView {
    pub name: String,
    pub address: String,
    pub state: HostState,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    /// Drained by an operator: it takes no new VMs.
    #[serde(default)]
    pub draining: bool,
    /// The VMs the RMS places on this host (its location table), by name.
    pub vms: Vec<String>,
}

/// What runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum VmKind {
    /// A simulated guest (`SimGuest`: real memory, a writer thread).
    Sim,
    /// A QEMU virtual machine.
    Qemu,
}

/// `POST /api/v1/vms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct VmRequest {
    pub name: String,
    pub memory_bytes: u64,
    /// The workload spec the guest runs.
    pub workload: String,
    pub kind: VmKind,
    /// Where to start it; the RMS chooses when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `sim`: its memory at the start (`zero`, `random`, `mixed:FRACTION`); zero when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// `POST /api/v1/migrations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MigrationRequest {
    pub vm: String,
    /// Ask only this host; the RMS ranks the alive hosts when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The bandwidth policy by name; the RMS's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The policy's settings as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<PolicySpec>,
    /// Higher first in the budget's queue (0–255; 0 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
}

/// The 202 answer to `POST /api/v1/migrations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct Created {
    pub id: MigrationId,
}

/// `GET /api/v1/migrations/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct MigrationView {
    pub id: MigrationId,
    pub vm: String,
    pub source: String,
    /// The chosen destination, else the requested one, else none yet.
    pub target: Option<String>,
    pub state: MigrationState,
    pub policy: String,
    pub attempts: Vec<Attempt>,
    pub rounds: Vec<RoundRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Box<MigrationReport>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its priority in the budget's queue.
    #[serde(default)]
    pub priority: u8,
    /// While queued: its place in the queue and why it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSpot>,
    /// The budget's grant while it runs (bytes/s; absent: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_bytes_per_s: Option<f64>,
    /// The lowest rate that converges under its estimate (the budget scheme only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_bytes_per_s: Option<f64>,
    /// The dirtying rate it is planned by (bytes/s), once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_estimate_bytes_per_s: Option<f64>,
}

impl Migration {
    /// The shape `GET /api/v1/migrations/{id}` returns.
    pub fn view(&self) -> MigrationView {
        MigrationView {
            id: self.id,
            vm: self.vm.clone(),
            source: self.source.clone(),
            target: self
                .target
                .clone()
                .or_else(|| self.requested_target.clone()),
            state: self.state,
            policy: self.policy.clone(),
            attempts: self.attempts.clone(),
            rounds: self.rounds.clone(),
            report: self.report.clone(),
            error: self.error.clone(),
            priority: self.budget.priority,
            queue: (self.state == MigrationState::Queued)
                .then(|| self.budget.waiting.clone())
                .flatten(),
            grant_bytes_per_s: self
                .state
                .is_active()
                .then_some(self.budget.grant_bytes_per_s)
                .flatten(),
            minimum_bytes_per_s: self
                .state
                .is_active()
                .then_some(self.budget.minimum_bytes_per_s)
                .flatten(),
            dirty_estimate_bytes_per_s: self
                .budget
                .estimate
                .as_ref()
                .map(|e| e.dirty_rate_bytes_per_s),
        }
    }
}
