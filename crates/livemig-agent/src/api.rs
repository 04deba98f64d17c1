//! The JSON shapes of the agent's `/api/v1` (serde only, snake_case). Requests refuse unknown
//! fields, so a misspelt field is an error, never silently ignored.

use livemig_api::MigrationNo;
use serde::{Deserialize, Serialize};

pub use crate::capacity::{Answer, Granted};

/// `GET /api/v1/info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct Info {
    pub name: String,
    pub memory_total_bytes: u64,
    /// Neither used by a VM nor reserved.
    pub memory_free_bytes: u64,
    pub memory_reserved_bytes: u64,
    /// The VMs this host runs, by name.
    pub vms: Vec<String>,
    /// Live reservations.
    pub reservations: usize,
}

/// `POST /api/v1/capacity`: can this host take a VM of this size?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CapacityRequest {
    pub memory_bytes: u64,
}

/// What runs a VM (the RMS's `VmKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum VmKind {
    Sim,
    Qemu,
}

/// `POST /api/v1/vms`: start a VM on this host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct VmRequest {
    /// 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// A whole number of 4 KiB pages.
    pub memory_bytes: u64,
    /// `sim`: a workload spec without files (`uniform:rate=1MiB/s`; `trace:` is refused).
    /// `qemu`: the test guest's load spec (`idle`, `uniform:rate=1MiB/s,buffer=32MiB`).
    pub workload: String,
    /// `sim` (the default) or `qemu` (the test guest under QEMU; see [`crate::qemu`]).
    #[serde(default = "sim")]
    pub kind: VmKind,
    /// `sim`: what its memory holds at the start: `zero` (the default; zero pages cost
    /// nothing to migrate), `random` (incompressible), `mixed:FRACTION` (that share zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

fn sim() -> VmKind {
    VmKind::Sim
}

/// A VM this host runs (`GET /api/v1/vms` lists them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct VmView {
    pub name: String,
    pub memory_bytes: u64,
    pub workload: String,
    pub kind: VmKind,
    pub running: bool,
    /// `sim`: page writes the guest has made so far; `qemu`: the guest's last heartbeat
    /// number (its serial console). It grows while the guest runs.
    pub writes: u64,
}

/// `{"released": id}`, the answer to `DELETE /api/v1/capacity/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct Released {
    pub released: String,
    pub memory_bytes: u64,
}

/// The 202 answer to `POST /api/v1/outgoing`: the migration runs (its events follow).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct OutgoingStarted {
    pub migration: MigrationNo,
    /// Always `migrating`.
    pub state: String,
}

/// The 202 answer to `DELETE /api/v1/outgoing/{migration}`: the cancel is asked (its outcome
/// comes as the migration's events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct CancelAsked {
    pub migration: MigrationNo,
    /// Always `asked`.
    pub cancel: String,
}

/// Every error: `{"error": "..."}` with a 4xx or 5xx status.
pub use livemig_api::ErrorBody;
