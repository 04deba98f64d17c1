//! What an agent sends the RMS.
//!
//! | request | answer |
//! |---|---|
//! | `POST /api/v1/agents/register` [`Register`] | 200 [`Registered`] |
//! | `POST /api/v1/agents/heartbeat` [`Heartbeat`] | 204; 404 when the RMS does not know the host (register again) |
//! | `POST /api/v1/agents/events` [`AgentEvent`] | 204; 404 unknown migration; 409 the event contradicts the record |
//! | `POST /api/v1/agents/reports` [`AgentReportPost`] | 204 |

use livemig_policy::event::Event;
use livemig_policy::report::MigrationReport;
use serde::{Deserialize, Serialize};

use crate::{MigrationNo, VmKind};

/// A VM an agent runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct VmInfo {
    pub name: String,
    pub memory_bytes: u64,
    /// The workload spec the guest runs.
    pub workload: String,
    pub kind: VmKind,
    /// `sim`: what its memory holds at the start (`zero`, `random`, `mixed:FRACTION` of zero
    /// pages); absent: zero. Only a VM's start reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// An agent introduces itself (at start, and again whenever the RMS answers a heartbeat 404).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// The host's name, 1 to 64 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// Where its HTTP API listens, `HOST:PORT` as the RMS can reach it.
    pub address: String,
    /// The IP address its migration listeners bind to (reachable by other agents).
    pub data_host: String,
    pub memory_total_bytes: u64,
    /// Neither used by a VM nor reserved.
    pub memory_free_bytes: u64,
    /// How long it may stay silent before the RMS calls it lost; the RMS's default if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    /// The VMs it runs now.
    #[serde(default)]
    pub vms: Vec<VmInfo>,
    /// A certificate signing request (PEM) for the host's TLS key, generated on the host;
    /// an RMS with a CA answers with a certificate in [`Registered::cert_pem`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr_pem: Option<String>,
}

/// The RMS's answer to [`Register`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct Registered {
    /// How often to send [`Heartbeat`] (seconds).
    pub heartbeat_s: f64,
    /// The host's certificate (PEM), issued by the RMS's CA for [`Register::csr_pem`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
    /// The RMS's CA certificate (PEM), the trust anchor of the migrations' TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

/// "I am alive", with the host's free memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub name: String,
    pub memory_free_bytes: u64,
}

/// One event of a migration this agent runs (as source or destination).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentEvent {
    /// The sending host.
    pub host: String,
    pub migration: MigrationNo,
    pub event: Event,
}

/// The source's final report of a migration (what `--json` prints for one migration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentReportPost {
    pub host: String,
    pub migration: MigrationNo,
    pub report: Box<MigrationReport>,
}
