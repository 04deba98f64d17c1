//! The governor: starts a QEMU migration and, at every `MIGRATION_PASS`, measures the round
//! that ended, asks the policy and applies its decision through `migrate-set-parameters`.
//!
//! Pre-copy runs with a tiny `downtime-limit` so that QEMU never switches over by itself
//! while the guest still dirties memory; when the policy chooses stop-and-copy the limit is
//! raised and QEMU completes at once. `docs/qemu.md` maps each quantity to QEMU's counters.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use livemig_policy::report::{MigrationReport, ReportBuilder, RoundRecord, StopCopy};
use livemig_policy::stats::FactorTracker;
use livemig_policy::{
    Action, Audit, Branch, Decision, DirtySample, Policy, RoundStats, StatsError, StopReason,
};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use crate::dirty::{self, DirtyError};
use crate::qmp::{QmpClient, QmpError};
use crate::types::{MigrationInfo, MigrationParameters, MigrationStatus, StatusInfo};

/// `downtime-limit` during pre-copy (ms): QEMU's switch-over test `remaining < bandwidth x
/// limit` then only passes when (almost) nothing is left, so it never preempts the policy.
pub const PRECOPY_DOWNTIME_MS: u64 = 1;
/// Shortest window of the wire-peak measurement (seconds); method.md asks for 100 ms, polls
/// drift by a few ms.
pub const PEAK_WINDOW_S: f64 = 0.095;
/// `downtime-limit` that forces the switch-over once the policy chose stop-and-copy (ms).
pub const STOP_DOWNTIME_MS: u64 = 60_000;

/// Who runs the migration.
#[derive(Debug)]
pub enum Control {
    /// A livemig policy decides each round's cap and the stop.
    Policy(Box<dyn Policy>),
    /// QEMU's own defaults; the governor only watches (the `qemu-native` row of the bench).
    Native,
}

/// Settings of one governed migration.
#[derive(Debug, Clone)]
pub struct GovernorConfig {
    /// Where the destination listens (`tcp:127.0.0.1:PORT`).
    pub uri: String,
    /// M, for the report (bytes).
    pub memory_bytes: f64,
    /// h, for the report's `converged` (bytes).
    pub stop_remaining: f64,
    /// The workload, when known, for the report.
    pub workload: Option<String>,
    /// `downtime-limit` during pre-copy (ms).
    pub precopy_downtime_ms: u64,
    /// `downtime-limit` set to force stop-and-copy (ms).
    pub stop_downtime_ms: u64,
    /// `query-migrate` polling period while no event comes (wire peak, progress).
    pub poll: Duration,
    /// The whole migration's deadline; past it the migration is cancelled.
    pub deadline: Duration,
    /// `calc-dirty-rate` period before the migration (whole seconds), for
    /// `Policy::observe_sample`; `None` skips it.
    pub sample: Option<Duration>,
    /// How long to wait for the destination to run after completion.
    pub dest_wait: Duration,
}

impl GovernorConfig {
    /// Defaults for a migration to `uri`.
    pub fn new(uri: &str, memory_bytes: f64, stop_remaining: f64) -> GovernorConfig {
        GovernorConfig {
            uri: uri.to_string(),
            memory_bytes,
            stop_remaining,
            workload: None,
            precopy_downtime_ms: PRECOPY_DOWNTIME_MS,
            stop_downtime_ms: STOP_DOWNTIME_MS,
            poll: Duration::from_millis(100),
            deadline: Duration::from_secs(600),
            sample: Some(Duration::from_secs(1)),
            dest_wait: Duration::from_secs(15),
        }
    }
}

/// Why a governed migration failed.
#[derive(Debug, thiserror::Error)]
pub enum GovernorError {
    #[error("the QMP exchange with the source failed")]
    Source(#[source] QmpError),
    #[error("the QMP exchange with the destination failed")]
    Destination(#[source] QmpError),
    #[error("the destination is not waiting for an incoming migration (its status is `{0}`)")]
    NotIncoming(String),
    #[error("a migration is already under way on the source (status {0:?})")]
    Busy(MigrationStatus),
    #[error("the pre-migration dirty-rate sample failed")]
    Sample(#[source] DirtyError),
    #[error("the policy refused round {round}; the migration was cancelled")]
    Policy {
        round: u32,
        #[source]
        source: StatsError,
    },
    #[error("the migration ended as {status:?}: {desc}; the source VM is {}", if *.source_running { "still running" } else { "NOT running" })]
    Failed {
        status: MigrationStatus,
        desc: String,
        source_running: bool,
    },
    #[error("the migration did not finish within {0:?}; it was cancelled")]
    Deadline(Duration),
}

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
}

/// QEMU-specific parts of the result, next to the shared report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QemuExtras {
    /// `policy` (the policy chose stop-and-copy) or `qemu` (QEMU switched over by itself).
    pub switchover: String,
    pub passes: Vec<PassRecord>,
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
    /// Whether the destination reported `running` after completion (None: not asked).
    pub destination_running: Option<bool>,
    pub precopy_downtime_limit_ms: Option<u64>,
    pub stop_downtime_limit_ms: Option<u64>,
}

/// The shared report plus the QEMU extras; serialises as the report's fields and `qemu`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QemuReport {
    #[serde(flatten)]
    pub report: MigrationReport,
    pub qemu: QemuExtras,
}

/// Live progress for a caller's table.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The migration was issued with this first cap (bytes/s).
    Started { first_cap: f64 },
    /// A `query-migrate` poll.
    Sample {
        elapsed_s: f64,
        transferred: f64,
        remaining: f64,
    },
    /// A round ended and the decision was applied.
    Round {
        record: Box<RoundRecord>,
        pass: PassRecord,
    },
    /// The migration completed.
    Completed,
}

fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

struct RoundStart {
    at: f64,
    transferred: f64,
}

/// Runs one migration from `src` to the destination at `cfg.uri`.
#[derive(Debug)]
pub struct Governor {
    cfg: GovernorConfig,
    progress: Option<UnboundedSender<Progress>>,
}

impl Governor {
    /// A governor with `cfg`.
    pub fn new(cfg: GovernorConfig) -> Governor {
        Governor {
            cfg,
            progress: None,
        }
    }

    /// Sends live [`Progress`] to `tx`.
    pub fn with_progress(mut self, tx: UnboundedSender<Progress>) -> Governor {
        self.progress = Some(tx);
        self
    }

    fn emit(&self, p: Progress) {
        if let Some(tx) = &self.progress {
            let _ = tx.send(p);
        }
    }

    /// Migrates: checks both sides, samples the dirty rate, starts the migration and governs it
    /// pass by pass until QEMU reports completion; then checks the destination runs.
    pub async fn run(
        &self,
        src: &mut QmpClient,
        mut dest: Option<&mut QmpClient>,
        mut control: Control,
    ) -> Result<QemuReport, GovernorError> {
        let cfg = &self.cfg;
        let s = GovernorError::Source;
        let info: MigrationInfo = src.execute_as("query-migrate", None).await.map_err(s)?;
        if info.status.is_running() {
            return Err(GovernorError::Busy(info.status));
        }
        if let Some(d) = dest.as_deref_mut() {
            let st: StatusInfo = d
                .execute_as("query-status", None)
                .await
                .map_err(GovernorError::Destination)?;
            if st.status != "inmigrate" {
                return Err(GovernorError::NotIncoming(st.status));
            }
        }
        let original: MigrationParameters = src
            .execute_as("query-migrate-parameters", None)
            .await
            .map_err(s)?;
        src.execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [{"capability": "events", "state": true}]})),
        )
        .await
        .map_err(s)?;

        let mut extras = QemuExtras::default();
        let (name, threshold) = match &control {
            Control::Policy(p) => (p.name(), p.threshold()),
            Control::Native => ("qemu-native", None),
        };
        if let (Some(period), Control::Policy(p)) = (cfg.sample, &mut control) {
            let m = dirty::measure(src, period)
                .await
                .map_err(GovernorError::Sample)?;
            let sample = m.sample();
            p.observe_sample(&sample);
            extras.sample = Some(sample);
        }
        let mut cap = match &control {
            Control::Policy(p) => {
                let first = p.first_cap();
                set_params(src, Some(first), Some(cfg.precopy_downtime_ms))
                    .await
                    .map_err(s)?;
                extras.precopy_downtime_limit_ms = Some(cfg.precopy_downtime_ms);
                first
            }
            Control::Native => original.max_bandwidth.map_or(0.0, |b| b as f64),
        };
        let mut builder = ReportBuilder::new(
            name,
            "qemu",
            cfg.memory_bytes,
            cfg.stop_remaining,
            threshold,
        );
        if let Some(w) = &cfg.workload {
            builder = builder.workload(w);
        }
        src.drain_events();
        src.execute("migrate", Some(json!({ "uri": cfg.uri })))
            .await
            .map_err(s)?;
        let t0 = wall_now();
        let started = Instant::now();
        self.emit(Progress::Started { first_cap: cap });

        let mut round_start: Option<RoundStart> = None;
        let mut stopping = false;
        let mut last_round_end_transferred = 0.0;
        let mut native_pending: Option<(RoundStats, Audit)> = None;
        let mut tracker = FactorTracker::default();
        let mut rounds: u32 = 0;
        let mut last_poll = Instant::now();
        let mut prev_sample: Option<(f64, f64)> = None;
        let mut peak: f64 = 0.0;
        let mut reactions = Vec::new();

        let final_info = loop {
            if started.elapsed() > cfg.deadline {
                let _ = src.execute("migrate_cancel", None).await;
                restore(src, &original).await;
                return Err(GovernorError::Deadline(cfg.deadline));
            }
            let wait = cfg.poll.saturating_sub(last_poll.elapsed());
            let event = src.next_event(wait).await.map_err(s)?;
            let mut status_seen: Option<MigrationStatus> = None;
            if let Some(e) = event {
                match e.name.as_str() {
                    "MIGRATION_PASS" => {
                        if stopping {
                            continue;
                        }
                        let at = e.timestamp.unwrap_or_else(wall_now);
                        let pass = e.data_u64("pass").unwrap_or(0);
                        let Some(rs) = round_start.take() else {
                            round_start = Some(RoundStart {
                                at,
                                transferred: 0.0,
                            });
                            extras.passes.push(PassRecord {
                                pass,
                                round: 0,
                                at_s: at - t0,
                                transferred: 0.0,
                                remaining: cfg.memory_bytes,
                                cap_set_bytes_per_s: Some(cap),
                                cap_read_back_bytes_per_s: None,
                                downtime_limit_read_back_ms: None,
                                reaction_s: None,
                            });
                            continue;
                        };
                        let q: MigrationInfo =
                            src.execute_as("query-migrate", None).await.map_err(s)?;
                        let ram = q.ram_or_default();
                        rounds += 1;
                        let stats = RoundStats {
                            round: rounds,
                            cap_bytes_per_s: cap,
                            bytes_sent: (ram.transferred - rs.transferred).max(0.0),
                            duration_s: (at - rs.at).max(0.0),
                            dirty_bytes: ram.remaining.max(0.0),
                        };
                        let mut record = PassRecord {
                            pass,
                            round: rounds,
                            at_s: at - t0,
                            transferred: ram.transferred,
                            remaining: ram.remaining,
                            cap_set_bytes_per_s: None,
                            cap_read_back_bytes_per_s: None,
                            downtime_limit_read_back_ms: None,
                            reaction_s: None,
                        };
                        round_start = Some(RoundStart {
                            at,
                            transferred: ram.transferred,
                        });
                        last_round_end_transferred = ram.transferred;
                        match &mut control {
                            Control::Policy(p) => {
                                let decision = match p.after_round(&stats) {
                                    Ok(d) => d,
                                    Err(source) => {
                                        let _ = src.execute("migrate_cancel", None).await;
                                        restore(src, &original).await;
                                        return Err(GovernorError::Policy {
                                            round: rounds,
                                            source,
                                        });
                                    }
                                };
                                builder.round(&stats, &decision);
                                let (bw, limit) = match decision.action {
                                    Action::Continue {
                                        next_cap_bytes_per_s,
                                    } => (next_cap_bytes_per_s, None),
                                    Action::StopAndCopy { .. } => {
                                        stopping = true;
                                        extras.switchover = "policy".into();
                                        extras.stop_downtime_limit_ms = Some(cfg.stop_downtime_ms);
                                        (p.stop_copy_cap(), Some(cfg.stop_downtime_ms))
                                    }
                                };
                                set_params(src, Some(bw), limit).await.map_err(s)?;
                                let reaction = wall_now() - at;
                                reactions.push(reaction);
                                cap = bw;
                                let back: MigrationParameters = src
                                    .execute_as("query-migrate-parameters", None)
                                    .await
                                    .map_err(s)?;
                                record.cap_set_bytes_per_s = Some(bw);
                                record.cap_read_back_bytes_per_s =
                                    back.max_bandwidth.map(|b| b as f64);
                                record.downtime_limit_read_back_ms = back.downtime_limit;
                                record.reaction_s = Some(reaction);
                                if let Some(r) = builder.last_round().cloned() {
                                    self.emit(Progress::Round {
                                        record: Box::new(r),
                                        pass: record.clone(),
                                    });
                                }
                            }
                            Control::Native => {
                                if let Some((st, audit)) = native_pending.take() {
                                    let d =
                                        Decision::next(st.cap_bytes_per_s, Branch::Constant, audit);
                                    builder.round(&st, &d);
                                    if let Some(r) = builder.last_round().cloned() {
                                        self.emit(Progress::Round {
                                            record: Box::new(r),
                                            pass: record.clone(),
                                        });
                                    }
                                }
                                let f = tracker.push(&stats).map_err(|source| {
                                    GovernorError::Policy {
                                        round: rounds,
                                        source,
                                    }
                                })?;
                                let mut audit = Audit::measured(&f, cap, stats.dirty_bytes, None);
                                audit.note =
                                    Some("observed only: QEMU's own defaults decide".into());
                                native_pending = Some((stats, audit));
                            }
                        }
                        extras.passes.push(record);
                    }
                    "MIGRATION" => {
                        status_seen = e
                            .data_str("status")
                            .and_then(|st| serde_json::from_value(json!(st)).ok());
                    }
                    _ => {}
                }
            }
            let poll_due = last_poll.elapsed() >= cfg.poll;
            let final_event = status_seen.is_some_and(MigrationStatus::is_final);
            if poll_due || final_event {
                last_poll = Instant::now();
                let q: MigrationInfo = src.execute_as("query-migrate", None).await.map_err(s)?;
                let ram = q.ram_or_default();
                let now = started.elapsed().as_secs_f64();
                // Windows of at least PEAK_WINDOW_S (polls after events can come sooner).
                match prev_sample {
                    Some((t, b)) if now - t >= PEAK_WINDOW_S => {
                        peak = peak.max((ram.transferred - b) / (now - t));
                        prev_sample = Some((now, ram.transferred));
                    }
                    Some(_) => {}
                    None => prev_sample = Some((now, ram.transferred)),
                }
                self.emit(Progress::Sample {
                    elapsed_s: now,
                    transferred: ram.transferred,
                    remaining: ram.remaining,
                });
                if q.status.is_final() {
                    break q;
                }
            }
        };
        // Events that arrived with the final answer (e.g. STOP) are of no further use.
        let _ = src.drain_events();

        if final_info.status != MigrationStatus::Completed {
            restore(src, &original).await;
            let st: StatusInfo = src
                .execute_as("query-status", None)
                .await
                .unwrap_or_default();
            return Err(GovernorError::Failed {
                status: final_info.status,
                desc: final_info
                    .error_desc
                    .clone()
                    .unwrap_or_else(|| "QEMU gave no reason".into()),
                source_running: st.running,
            });
        }
        // QEMU sets `completed` before it computes total-time and downtime: ask again until
        // they are there (bounded).
        let mut final_info = final_info;
        for _ in 0..40 {
            if final_info.total_time.is_some_and(|t| t > 0.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            final_info = src.execute_as("query-migrate", None).await.map_err(s)?;
        }
        self.emit(Progress::Completed);
        if let Some((st, audit)) = native_pending.take() {
            builder.round(&st, &Decision::stop(StopReason::DowntimeFits, audit));
        }
        if extras.switchover.is_empty() {
            extras.switchover = "qemu".into();
        }
        let ram = final_info.ram_or_default();
        let ms = |v: Option<f64>| v.map(|x| x / 1000.0);
        extras.qemu_total_time_s = ms(final_info.total_time);
        extras.qemu_downtime_s = ms(final_info.downtime);
        extras.qemu_setup_time_s = ms(final_info.setup_time);
        extras.downtime_bytes = ram.downtime_bytes;
        if !reactions.is_empty() {
            extras.reaction_mean_s = Some(reactions.iter().sum::<f64>() / reactions.len() as f64);
            extras.reaction_max_s = Some(reactions.iter().copied().fold(0.0, f64::max));
        }
        let stop = StopCopy {
            bytes: (ram.transferred - last_round_end_transferred).max(0.0),
            state_bytes: 0.0,
            downtime_s: extras.qemu_downtime_s.unwrap_or(0.0),
        };
        let mut report = builder.finish(stop, peak);
        if let Some(total) = extras.qemu_total_time_s {
            report.summary.total_time_s = total;
            report.summary.mean_bytes_per_s = if total > 0.0 {
                report.summary.total_bytes / total
            } else {
                0.0
            };
        }
        if let Some(d) = dest {
            extras.destination_running = Some(wait_running(d, cfg.dest_wait).await?);
        }
        Ok(QemuReport {
            report,
            qemu: extras,
        })
    }
}

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

/// Puts the source's parameters back after a failed or cancelled migration (best effort).
async fn restore(qmp: &mut QmpClient, original: &MigrationParameters) {
    let _ = set_params(
        qmp,
        original.max_bandwidth.map(|b| b as f64),
        original.downtime_limit,
    )
    .await;
}

/// Polls the destination's `query-status` until it runs or `wait` passes.
async fn wait_running(qmp: &mut QmpClient, wait: Duration) -> Result<bool, GovernorError> {
    let until = Instant::now() + wait;
    loop {
        let st: StatusInfo = qmp
            .execute_as("query-status", None)
            .await
            .map_err(GovernorError::Destination)?;
        if st.running {
            return Ok(true);
        }
        if Instant::now() >= until {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
