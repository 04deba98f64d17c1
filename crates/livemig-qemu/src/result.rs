//! What a governed migration returns: the shared report plus QEMU's own figures, the record
//! of every pass and of every change of the grant. (What it reports on the way is
//! `livemig_policy::Event`.)

use livemig_policy::report::MigrationReport;
use livemig_policy::DirtySample;
use serde::Serialize;

use crate::features::QemuFeatures;

/// What the governor saw and did at one `MIGRATION_PASS`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PassRecord {
    /// QEMU's pass number (`dirty-sync-count`).
    pub pass: u64,
    /// The round this pass ended (0 for pass 1, which starts round 1).
    pub round: u32,
    /// Event time, seconds after `migrate` was issued.
    pub at_s: f64,
    /// `ram.transferred` read right after the event.
    pub transferred: f64,
    /// `ram.remaining` read right after the event.
    pub remaining: f64,
    /// The cap the governor set for the next round (bytes/s), if it set one.
    pub cap_set_bytes_per_s: Option<f64>,
    /// `max-bandwidth` as `query-migrate-parameters` reported it afterwards.
    pub cap_read_back_bytes_per_s: Option<f64>,
    /// `downtime-limit` as reported afterwards (ms).
    pub downtime_limit_read_back_ms: Option<u64>,
    /// From QEMU's event timestamp to the parameters being applied (seconds).
    pub reaction_s: Option<f64>,
    /// Why the governor did not act on this pass, when it did not: merged into a later
    /// queued pass, or QEMU had already switched over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What the governor did when the grant changed the cap in force between passes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SteerRecord {
    /// When the governor saw the changed grant, seconds after `migrate` was issued (wall
    /// clock; add `qemu.migrate_unix_s` for the time since the epoch).
    pub at_s: f64,
    /// The grant it saw (`None`: lifted).
    pub granted_bytes_per_s: Option<f64>,
    /// The `max-bandwidth` it set.
    pub cap_set_bytes_per_s: f64,
    /// `max-bandwidth` as `query-migrate-parameters` reported it right after.
    pub cap_read_back_bytes_per_s: Option<f64>,
    /// When that answer came, seconds after `migrate` was issued (wall clock).
    pub read_back_at_s: f64,
}

/// QEMU-specific parts of the result, next to the shared report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QemuExtras {
    /// `policy` (the policy chose stop-and-copy), `qemu` (QEMU switched over by itself) or
    /// `forced` (a timeout whose action is `force`; `forced` says which).
    pub switchover: String,
    /// Why the switch-over was forced, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forced: Option<String>,
    /// Wall time `migrate` was issued (seconds since the epoch).
    pub migrate_unix_s: Option<f64>,
    pub passes: Vec<PassRecord>,
    /// Every change of the cap in force by the grant between passes.
    pub steers: Vec<SteerRecord>,
    /// QEMU's `total-time`, `downtime` and `setup-time` (seconds).
    pub qemu_total_time_s: Option<f64>,
    pub qemu_downtime_s: Option<f64>,
    pub qemu_setup_time_s: Option<f64>,
    /// QEMU's `ram.downtime-bytes`, where reported.
    pub downtime_bytes: Option<f64>,
    /// Event to `max-bandwidth` applied, over the passes where the governor acted (seconds).
    pub reaction_mean_s: Option<f64>,
    pub reaction_max_s: Option<f64>,
    /// The pre-migration `calc-dirty-rate` sample given to the policy.
    pub sample: Option<DirtySample>,
    /// What the source QEMU offers beyond 7.2 and what the governor used (`features::probe`).
    pub features: Option<QemuFeatures>,
    /// The rescue: each throttle the governor set in QEMU (round after which, percent).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub throttles: Vec<(u32, u64)>,
    /// The highest `cpu-throttle-percentage` QEMU reported during the migration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_seen: Option<f64>,
    /// Whether the destination reported `running` after completion (None: not asked).
    pub destination_running: Option<bool>,
    pub precopy_downtime_limit_ms: Option<u64>,
    pub stop_downtime_limit_ms: Option<u64>,
    /// Whether the source's own `max-bandwidth`, `downtime-limit` and capabilities were put
    /// back after the migration (None: not attempted yet).
    pub settings_restored: Option<bool>,
}

/// The shared report plus the QEMU extras; serialises as the report's fields and `qemu`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QemuReport {
    #[serde(flatten)]
    pub report: MigrationReport,
    pub qemu: QemuExtras,
}
