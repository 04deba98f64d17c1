//! The JSON shapes agents and the RMS exchange, serde only (snake_case; requests refuse
//! unknown fields, so a misspelt field is an error, never silently ignored).
//!
//! Map of the crate:
//! - [`agent_to_rms`]: what an agent sends the RMS: registration, heartbeats, events and the
//!   final report of the migrations it runs.
//! - [`rms_to_agent`]: what the RMS asks of an agent: prepare an incoming migration, start,
//!   cancel or bound (grant) an outgoing one, sample a VM's dirty log, report what it runs.
//! - [`MigrationKey`]: a migration's pre-shared key as it travels (64 hex digits).
//!
//! Both directions carry the cluster's bearer token (`Authorization: Bearer …`); the data path
//! of every migration is keyed by its own [`MigrationKey`], issued by the RMS to both ends.

pub mod agent_to_rms;
pub mod rms_to_agent;

use serde::{Deserialize, Serialize};

pub use agent_to_rms::{AgentEvent, AgentReportPost, Heartbeat, Register, Registered, VmInfo};
pub use rms_to_agent::{
    GrantApplied, GrantRequest, IncomingReady, IncomingRequest, LocalMigration, LocalState,
    OutgoingRequest, Role, RunReport, SampleRequest, VmSample,
};

/// The longest host or VM name.
pub const MAX_NAME: usize = 64;

/// The one naming rule for hosts and VMs: 1 to [`MAX_NAME`] characters of
/// `A-Z a-z 0-9 . _ -` (safe in a URL path segment, a log line and a file name).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
// Named apart from the RMS's and the agent's own `VmKind` (the same names on the wire), which
// share the OpenAPI documents with it.
#[cfg_attr(feature = "openapi", schemars(rename = "VmInfoKind"))]
#[serde(rename_all = "snake_case")]
pub enum VmKind {
    /// A simulated guest (`SimGuest`: real memory, a writer thread).
    Sim,
    /// A QEMU virtual machine.
    Qemu,
}

/// A migration's id as the RMS numbers it.
pub type MigrationNo = u64;

/// A migration's pre-shared key, 32 bytes as 64 lowercase hex digits. Its `Debug` hides it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct MigrationKey(pub String);

impl std::fmt::Debug for MigrationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MigrationKey(…)")
    }
}

impl MigrationKey {
    /// Whether it is 64 hex digits (what the engine's key parser takes).
    pub fn is_well_formed(&self) -> bool {
        self.0.len() == 64 && self.0.bytes().all(|b| b.is_ascii_hexdigit())
    }
}

/// Every error answer: `{"error": "..."}` with a 4xx or 5xx status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_naming_rule() {
        assert!(is_valid_name("host-a_1.x"));
        assert!(is_valid_name(&"a".repeat(MAX_NAME)));
        for bad in ["", "a/b", "a b", "é", "a\0", &"a".repeat(MAX_NAME + 1)] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }
}
