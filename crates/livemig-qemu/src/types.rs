//! Lenient shapes of the QMP answers the governor reads: unknown fields are ignored, missing
//! ones take defaults, unknown enum values map to `Other`.

use serde::Deserialize;

/// `MigrationStatus` of QEMU (7.2 and later); values QEMU adds later become `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationStatus {
    #[default]
    None,
    Setup,
    Cancelling,
    Cancelled,
    Active,
    PostcopyActive,
    PostcopyPaused,
    PostcopyRecover,
    Completed,
    Failed,
    Colo,
    PreSwitchover,
    Device,
    WaitUnplug,
    #[serde(other)]
    Other,
}

impl MigrationStatus {
    /// The migration ended, well or not.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        )
    }

    /// A migration is under way (a new one cannot start).
    pub fn is_running(self) -> bool {
        !matches!(
            self,
            MigrationStatus::None
                | MigrationStatus::Completed
                | MigrationStatus::Failed
                | MigrationStatus::Cancelled
        )
    }
}

/// `MigrationStats` (the `ram` member of `query-migrate`); every number as f64.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct RamStats {
    pub transferred: f64,
    pub remaining: f64,
    pub total: f64,
    pub duplicate: f64,
    pub normal: f64,
    pub normal_bytes: f64,
    pub dirty_pages_rate: f64,
    pub mbps: f64,
    pub dirty_sync_count: f64,
    pub page_size: f64,
    /// Only in QEMUs that report it (Debian's 7.2 does).
    pub precopy_bytes: Option<f64>,
    /// Bytes sent while the VM was paused, where QEMU reports it.
    pub downtime_bytes: Option<f64>,
}

/// `MigrationInfo`, the answer of `query-migrate`; times in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct MigrationInfo {
    pub status: MigrationStatus,
    pub ram: Option<RamStats>,
    pub total_time: Option<f64>,
    pub downtime: Option<f64>,
    pub expected_downtime: Option<f64>,
    pub setup_time: Option<f64>,
    pub error_desc: Option<String>,
    /// The share of the vCPUs' time auto-converge takes away now (percent), when it does.
    pub cpu_throttle_percentage: Option<f64>,
}

impl MigrationInfo {
    /// The RAM statistics, zero when QEMU gave none yet.
    pub fn ram_or_default(&self) -> RamStats {
        self.ram.clone().unwrap_or_default()
    }
}

/// The parameters of `query-migrate-parameters` the governor uses.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct MigrationParameters {
    /// Bytes/s.
    pub max_bandwidth: Option<u64>,
    /// Milliseconds.
    pub downtime_limit: Option<u64>,
    /// Bytes/s (QEMU 8.2+; 0: QEMU uses the bandwidth it measures).
    pub avail_switchover_bandwidth: Option<u64>,
    /// auto-converge's settings (percent; the trigger in percent of the bytes sent).
    pub throttle_trigger_threshold: Option<u64>,
    pub cpu_throttle_initial: Option<u64>,
    pub cpu_throttle_increment: Option<u64>,
    pub max_cpu_throttle: Option<u64>,
}

/// The answer of `query-status`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct StatusInfo {
    pub running: bool,
    pub status: String,
}

/// `DirtyRateStatus` of `query-dirty-rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DirtyRateStatus {
    #[default]
    Unstarted,
    Measuring,
    Measured,
    #[serde(other)]
    Other,
}

/// The answer of `query-dirty-rate`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct DirtyRateInfo {
    /// MiB/s (QEMU calls it MB/s; it counts 2^20 bytes), truncated to an integer by QEMU.
    pub dirty_rate: Option<f64>,
    pub status: DirtyRateStatus,
    pub start_time: f64,
    /// Seconds, or milliseconds where `calc-time-unit` says so (QEMU 8.2+).
    pub calc_time: f64,
    pub calc_time_unit: Option<String>,
    pub mode: Option<String>,
}

impl DirtyRateInfo {
    /// The measured period in seconds, when QEMU reported one.
    pub fn period_s(&self) -> Option<f64> {
        let scale = match self.calc_time_unit.as_deref() {
            Some("millisecond") => 1e-3,
            _ => 1.0,
        };
        (self.calc_time > 0.0).then_some(self.calc_time * scale)
    }
}

/// The answer of `query-memory-size-summary`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct MemorySizeSummary {
    pub base_memory: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_status_values_do_not_break_parsing() {
        let v = serde_json::json!({
            "status": "switching-over-in-2030",
            "brand-new-field": {"x": 1},
            "ram": {"transferred": 10, "remaining": 20, "future": true, "mbps": 1.5},
            "total-time": 1234
        });
        let info: MigrationInfo = serde_json::from_value(v).expect("lenient");
        assert_eq!(info.status, MigrationStatus::Other);
        let ram = info.ram_or_default();
        assert_eq!(ram.transferred, 10.0);
        assert_eq!(ram.remaining, 20.0);
        assert_eq!(ram.downtime_bytes, None);
        assert_eq!(info.total_time, Some(1234.0));
    }

    #[test]
    fn an_empty_answer_is_the_default() {
        let info: MigrationInfo = serde_json::from_value(serde_json::json!({})).expect("ok");
        assert_eq!(info.status, MigrationStatus::None);
        assert!(!info.status.is_running());
        let d: DirtyRateInfo =
            serde_json::from_value(serde_json::json!({"status": "measured", "dirty-rate": 8}))
                .expect("ok");
        assert_eq!(d.status, DirtyRateStatus::Measured);
        assert_eq!(d.dirty_rate, Some(8.0));
        assert_eq!(d.period_s(), None);
        let d: DirtyRateInfo = serde_json::from_value(serde_json::json!({
            "status": "measured", "dirty-rate": 4, "mode": "dirty-bitmap",
            "calc-time": 500, "calc-time-unit": "millisecond"
        }))
        .expect("ok");
        assert_eq!(d.period_s(), Some(0.5));
    }

    #[test]
    fn status_predicates() {
        assert!(MigrationStatus::Active.is_running());
        assert!(MigrationStatus::Device.is_running());
        assert!(MigrationStatus::Failed.is_final());
        assert!(!MigrationStatus::Active.is_final());
    }
}
