//! What the RMS asks of an agent (besides the capacity inquiry and the VM routes the agent
//! already serves).
//!
//! | request | answer |
//! |---|---|
//! | `POST /api/v1/incoming` [`IncomingRequest`] | 201 [`IncomingReady`]; 404 unknown reservation; 409 VM already here |
//! | `POST /api/v1/outgoing` [`OutgoingRequest`] | 202 (the migration runs; its events follow); 404 no such VM; 409 VM busy |
//! | `DELETE /api/v1/outgoing/{migration}` | 202 cancel asked; 404 unknown; 409 past the commit point |
//! | `PUT /api/v1/outgoing/{migration}/grant` [`GrantRequest`] | 200 [`GrantApplied`]; 404 unknown; 409 not an outgoing migration still running; 422 not a positive finite rate |
//! | `POST /api/v1/vms/{name}/sample` [`SampleRequest`] | 200 [`VmSample`]; 404 no such VM; 409 VM busy (migrating or sampled); 422 seconds out of range |
//! | `GET /api/v1/report` | 200 [`RunReport`] |

use std::collections::BTreeMap;

use livemig_policy::{DirtySample, PolicySpec};
use serde::{Deserialize, Serialize};

use crate::agent_to_rms::VmInfo;
use crate::{MigrationKey, MigrationNo};

/// To the destination: get ready to receive `vm` for `migration`, into the room held by
/// `reservation`, from a source that proves `key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct IncomingRequest {
    pub migration: MigrationNo,
    pub reservation: String,
    pub vm: VmInfo,
    pub key: MigrationKey,
    /// Serve the data stream over mutual TLS with the host's certificate.
    #[serde(default)]
    pub tls: bool,
}

/// The destination listens for this migration's data stream here (`IP:PORT`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct IncomingReady {
    pub data_address: String,
}

/// To the source: migrate `vm` to `target`'s `data_address`, proving `key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct OutgoingRequest {
    pub migration: MigrationNo,
    pub vm: String,
    /// The destination host's name (for logs and events).
    pub target: String,
    pub data_address: String,
    pub key: MigrationKey,
    /// The bandwidth policy by name.
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<PolicySpec>,
    /// Connect over mutual TLS; the destination's certificate must name the IP of `data_address`.
    #[serde(default)]
    pub tls: bool,
    /// The RMS's budget grant at the start: every round's cap (stop-and-copy included) is
    /// bounded by it until a new grant arrives (bytes/s; absent: no bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_bytes_per_s: Option<f64>,
}

/// To the source: bound a running outgoing migration's cap (every round's and the
/// stop-and-copy's) by `bytes_per_s`, or lift the bound (`null`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// Bytes per second, finite and > 0; `null`: no bound (the policy's caps alone).
    pub bytes_per_s: Option<f64>,
}

impl GrantRequest {
    /// Whether the grant is one an executor can run under: none, or finite and > 0.
    pub fn is_valid(&self) -> bool {
        self.bytes_per_s.is_none_or(|b| b.is_finite() && b > 0.0)
    }
}

/// The grant in force from now on (the executor applies it within its steering bound).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct GrantApplied {
    pub migration: MigrationNo,
    pub bytes_per_s: Option<f64>,
}

/// The shortest dirty-log sample an agent takes, seconds.
pub const MIN_SAMPLE_S: f64 = 0.2;
/// The longest dirty-log sample an agent takes, seconds.
pub const MAX_SAMPLE_S: f64 = 10.0;

/// To an agent: sample a VM's dirty log for `seconds`, sending nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SampleRequest {
    /// Finite, [`MIN_SAMPLE_S`] to [`MAX_SAMPLE_S`] (0.2 to 10). A `qemu` VM measures for
    /// the whole seconds above it (1 to 10).
    pub seconds: f64,
}

impl SampleRequest {
    /// Whether `seconds` is finite and within [`MIN_SAMPLE_S`]..=[`MAX_SAMPLE_S`].
    pub fn is_valid(&self) -> bool {
        self.seconds.is_finite() && (MIN_SAMPLE_S..=MAX_SAMPLE_S).contains(&self.seconds)
    }
}

/// A VM's dirty-log sample: `sim`, five points after clearing the log (distinct dirty
/// bytes at each elapsed time); `qemu`, one point from QEMU's `calc-dirty-rate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct VmSample {
    pub vm: String,
    pub sample: DirtySample,
}

/// Which end of a migration an agent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Source,
    Destination,
}

/// What an agent's executor says about one migration it took part in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LocalState {
    /// Its executor still runs the migration (rounds, stop-and-copy, or settling a commit).
    Migrating,
    /// Source: the hand-over completed; destination: the guest runs here.
    HandedOver,
    /// The executor ended without a hand-over.
    Failed,
    /// The executor was cancelled before the commit point.
    Cancelled,
    /// A destination holds a verified copy, paused, until its source settles it.
    Held,
}

/// One migration an agent took part in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct LocalMigration {
    pub role: Role,
    pub vm: String,
    pub state: LocalState,
    /// The data stream runs (ran) over mutual TLS.
    #[serde(default)]
    pub tls: bool,
}

/// `GET /api/v1/report`: what the agent runs and the migrations it knows of, for the RMS's
/// recovery after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct RunReport {
    pub host: String,
    /// The VMs running here.
    pub vms: Vec<VmInfo>,
    pub migrations: BTreeMap<MigrationNo, LocalMigration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused() {
        let bad = r#"{"migration":1,"vm":"a","target":"b","data_address":"x:1","key":"00","policy":"p","extra":1}"#;
        assert!(serde_json::from_str::<OutgoingRequest>(bad).is_err());
    }

    #[test]
    fn grants_and_samples_are_checked() {
        for (b, ok) in [
            (None, true),
            (Some(1.0), true),
            (Some(0.0), false),
            (Some(-5.0), false),
            (Some(f64::NAN), false),
            (Some(f64::INFINITY), false),
        ] {
            assert_eq!(GrantRequest { bytes_per_s: b }.is_valid(), ok, "{b:?}");
        }
        for (s, ok) in [
            (0.2, true),
            (10.0, true),
            (0.19, false),
            (10.01, false),
            (f64::NAN, false),
            (f64::INFINITY, false),
        ] {
            assert_eq!(SampleRequest { seconds: s }.is_valid(), ok, "{s}");
        }
        let g: GrantRequest = serde_json::from_str(r#"{"bytes_per_s": null}"#).expect("null");
        assert_eq!(g.bytes_per_s, None);
    }

    #[test]
    fn local_state_names() {
        let s = serde_json::to_string(&LocalState::HandedOver).expect("serialises");
        assert_eq!(s, "\"handed_over\"");
    }

    #[test]
    fn key_debug_hides_the_key() {
        let k = MigrationKey("ab".repeat(32));
        assert!(k.is_well_formed());
        assert!(!format!("{k:?}").contains("abab"));
        assert!(!MigrationKey("zz".repeat(32)).is_well_formed());
    }
}
