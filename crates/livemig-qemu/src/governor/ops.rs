//! The QMP operations of the governor: setting and reading back the migration parameters,
//! putting the source's settings back, and the bounded questions asked around a migration
//! (does the source run, QEMU's final times, does the destination run).

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::qmp::{QmpClient, QmpError};
use crate::saved::SavedSettings;
use crate::types::{MigrationInfo, MigrationParameters, StatusInfo};

/// Longest wait for each command of the restore at the end (`migrate_cancel`, the source's
/// saved capabilities and parameters), however QEMU behaves.
pub const CLEANUP_WAIT: Duration = Duration::from_secs(3);
/// How long the governor waits for QEMU to report a cancelled migration as ended after
/// `migrate_cancel` (QEMU 7.2 takes well under a second).
pub const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// How many times QEMU is asked again for total-time and downtime after `completed`.
const TIMES_RETRIES: usize = 40;

/// Sets `max-bandwidth` (bytes/s) and `downtime-limit` (ms) where given.
pub async fn set_params(
    qmp: &mut QmpClient,
    max_bandwidth: Option<f64>,
    downtime_limit_ms: Option<u64>,
) -> Result<(), QmpError> {
    let mut args = serde_json::Map::new();
    if let Some(b) = max_bandwidth {
        args.insert("max-bandwidth".into(), json!(b.round().max(1.0) as u64));
    }
    if let Some(d) = downtime_limit_ms {
        args.insert("downtime-limit".into(), json!(d));
    }
    qmp.execute(
        "migrate-set-parameters",
        Some(serde_json::Value::Object(args)),
    )
    .await
    .map(|_| ())
}

/// The stop-and-copy's settings in one command: `max-bandwidth` = `cap`, `downtime-limit`,
/// and, where QEMU has it (`switchover_bandwidth`, 8.2+), `avail-switchover-bandwidth` = `cap`,
/// so that QEMU's switch-over threshold is the stop-and-copy's bandwidth times the limit rather
/// than the pre-copy bandwidth it measured. The source's own value is put back at the end.
pub async fn set_stop_params(
    qmp: &mut QmpClient,
    cap: f64,
    downtime_limit_ms: u64,
    switchover_bandwidth: bool,
) -> Result<(), QmpError> {
    let b = cap.round().max(1.0) as u64;
    let mut args = json!({ "max-bandwidth": b, "downtime-limit": downtime_limit_ms });
    if switchover_bandwidth {
        args["avail-switchover-bandwidth"] = json!(b);
    }
    qmp.execute("migrate-set-parameters", Some(args))
        .await
        .map(|_| ())
}

/// The rescue's throttle through QEMU's auto-converge, set to `pct` percent of the vCPUs'
/// time (0: 1 %, QEMU has no zero). auto-converge throttles at a dirty-bitmap sync when the
/// pass dirtied more than `throttle-trigger-threshold` % of what it sent, twice in a row; it
/// starts at `cpu-throttle-initial` and then adds `cpu-throttle-increment` up to
/// `max-cpu-throttle`. Initial = max = `pct` with an increment of 99 puts it at `pct` at the
/// next trigger, up or down, and a trigger of 1 % fires at once. QEMU stops throttling when
/// the migration ends.
pub async fn set_throttle(qmp: &mut QmpClient, pct: u64) -> Result<(), QmpError> {
    let (trigger, level) = (1, pct.clamp(1, 99));
    qmp.execute(
        "migrate-set-parameters",
        Some(json!({
            "throttle-trigger-threshold": trigger,
            "cpu-throttle-initial": level,
            "cpu-throttle-increment": 99,
            "max-cpu-throttle": level,
        })),
    )
    .await
    .map(|_| ())
}

/// Turns auto-converge on before `migrate` (QEMU refuses capabilities while a migration
/// runs) with QEMU's own steps held off until the policy asks: a trigger of 100 % (a pass must
/// dirty more than it sent) and a ceiling of 1 %.
pub async fn enable_throttle(qmp: &mut QmpClient) -> Result<(), QmpError> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "auto-converge", "state": true}]})),
    )
    .await?;
    qmp.execute(
        "migrate-set-parameters",
        Some(json!({
            "throttle-trigger-threshold": 100,
            "cpu-throttle-initial": 1,
            "cpu-throttle-increment": 99,
            "max-cpu-throttle": 1,
        })),
    )
    .await
    .map(|_| ())
}

/// QEMU's default auto-converge steps, set explicitly (the source may have others saved).
pub const AUTO_CONVERGE_DEFAULTS: [(&str, u64); 4] = [
    ("throttle-trigger-threshold", 50),
    ("cpu-throttle-initial", 20),
    ("cpu-throttle-increment", 10),
    ("max-cpu-throttle", 99),
];

/// Turns QEMU's own auto-converge on before `migrate`, with its default steps.
pub async fn enable_auto_converge(qmp: &mut QmpClient) -> Result<(), QmpError> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "auto-converge", "state": true}]})),
    )
    .await?;
    let params: serde_json::Map<String, serde_json::Value> = AUTO_CONVERGE_DEFAULTS
        .iter()
        .map(|&(k, v)| (k.to_string(), json!(v)))
        .collect();
    qmp.execute("migrate-set-parameters", Some(params.into()))
        .await
        .map(|_| ())
}

/// The migration parameters in force (`query-migrate-parameters`).
pub async fn read_params(qmp: &mut QmpClient) -> Result<MigrationParameters, QmpError> {
    qmp.execute_as("query-migrate-parameters", None).await
}

/// Puts the source's saved settings back, on every exit once they were saved. When a
/// migration may still be under way (`cancel`) it is cancelled first and QEMU is given
/// [`CANCEL_WAIT`] to end it (QEMU refuses capabilities while a migration runs). Bounded
/// whatever QEMU does (silent, closed, garbage); errors are dropped because the caller
/// returns the outcome that led here. Returns whether everything was put back.
pub(crate) async fn restore(qmp: &mut QmpClient, saved: &SavedSettings, cancel: bool) -> bool {
    let saved_timeout = qmp.timeout();
    let each = CLEANUP_WAIT.min(saved_timeout);
    qmp.set_timeout(each);
    if cancel && qmp.execute("migrate_cancel", None).await.is_ok() {
        let until = Instant::now() + CANCEL_WAIT;
        loop {
            match qmp.execute_as::<MigrationInfo>("query-migrate", None).await {
                Ok(q) if q.status.is_running() && Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => break,
            }
        }
    }
    let done = tokio::time::timeout(CLEANUP_WAIT, saved.apply(qmp))
        .await
        .is_ok_and(|r| r.is_ok());
    qmp.set_timeout(saved_timeout);
    done
}

/// Whether the source VM runs, asked within [`CLEANUP_WAIT`]; `None` when it did not answer.
pub(crate) async fn source_running(qmp: &mut QmpClient) -> Option<bool> {
    let saved = qmp.timeout();
    qmp.set_timeout(CLEANUP_WAIT.min(saved));
    let st = qmp.execute_as::<StatusInfo>("query-status", None).await;
    qmp.set_timeout(saved);
    st.ok().map(|s| s.running)
}

/// QEMU sets `completed` before it computes total-time and downtime: asks again until they
/// are there (bounded).
pub(crate) async fn final_times(
    qmp: &mut QmpClient,
    mut info: MigrationInfo,
) -> Result<MigrationInfo, QmpError> {
    for _ in 0..TIMES_RETRIES {
        if info.total_time.is_some_and(|t| t > 0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        info = qmp.execute_as("query-migrate", None).await?;
    }
    Ok(info)
}

/// Polls the destination's `query-status` until it runs or `wait` passes.
pub(crate) async fn wait_running(qmp: &mut QmpClient, wait: Duration) -> Result<bool, QmpError> {
    let until = Instant::now() + wait;
    loop {
        let st: StatusInfo = qmp.execute_as("query-status", None).await?;
        if st.running {
            return Ok(true);
        }
        if Instant::now() >= until {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
