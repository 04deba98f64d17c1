//! The governor: runs a QEMU migration under the [`Pilot`], the round sequencer every executor
//! drives. At every `MIGRATION_PASS` it measures the round that ended, hands it to the Pilot
//! and applies the next cap (or forces stop-and-copy) through `migrate-set-parameters`.
//!
//! Layers: this module is the driver (checks, the watch loop, steering, timeouts, events);
//! [`passes`] turns passes into measured rounds; [`ops`] holds the QMP operations; [`native`]
//! stands in for a policy when QEMU's own defaults decide (`qemu-native`).
//!
//! Pre-copy runs with a tiny `downtime-limit` so that QEMU never switches over by itself
//! while the guest still dirties memory; when the policy chooses stop-and-copy the limit is
//! raised and QEMU completes at once. `docs/qemu.md` maps each quantity to QEMU's counters.
//!
//! A [`Steering`] handle (`livemig_policy::Control`) steers a running migration: it is read at
//! least every [`STEER_TICK`], and a changed grant is applied at once (never above the grant
//! nor the policy's wish); a cancellation before the switch-over is forced cancels the
//! migration, the source VM running. The completion and no-progress timeouts
//! ([`Timeouts`]) are checked at every poll. The source's own settings are saved before
//! anything changes and put back on every exit, success included.

mod native;
mod ops;
mod passes;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use livemig_policy::pilot::{Executor, Next, Overdue, Pilot, PilotError, Setup, TimeoutAction};
use livemig_policy::report::StopCopy;
/// The live handle on a migration: the granted cap and cancellation.
pub use livemig_policy::Control as Steering;
pub use livemig_policy::Timeouts;
use livemig_policy::{Event, Policy};
use serde_json::json;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use crate::dirty::{self, DirtyError};
use crate::qmp::{Event as QmpEvent, QmpClient, QmpError};
pub use crate::result::{PassRecord, QemuExtras, QemuReport, SteerRecord};
use crate::saved::{SavedSettings, StateFileError};
use crate::types::{MigrationInfo, MigrationStatus, StatusInfo};
use native::Observed;
pub use native::OBSERVED_NOTE;
pub use ops::{read_params, set_params, CANCEL_WAIT, CLEANUP_WAIT};
pub use passes::MIN_WIRE_WINDOW_S;
use passes::{wall_now, Measured, Pass, Passes};

/// `downtime-limit` during pre-copy (ms): QEMU's switch-over test `remaining < bandwidth x
/// limit` then only passes when (almost) nothing is left, so it never preempts the policy.
pub const PRECOPY_DOWNTIME_MS: u64 = 1;
/// `downtime-limit` that forces the switch-over once the policy chose stop-and-copy (ms).
pub const STOP_DOWNTIME_MS: u64 = 60_000;
/// Longest time between two readings of the steering: a changed grant reaches QEMU within
/// this plus one `migrate-set-parameters` (well under 100 ms).
pub const STEER_TICK: Duration = Duration::from_millis(20);
/// Period of the [`Event::Progress`] events (from the `query-migrate` polls).
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// QEMU's default `max-bandwidth` (128 MiB/s), for a QEMU that does not report its own.
const QEMU_DEFAULT_MAX_BANDWIDTH: f64 = 134_217_728.0;

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
    /// `query-migrate` polling period while no event comes (wire peak, progress, timeouts).
    pub poll: Duration,
    /// The per-GiB completion and no-progress timeouts, and what to do when one fires.
    pub timeouts: Timeouts,
    /// `calc-dirty-rate` period before the migration (whole seconds), for
    /// `Policy::observe_sample`; `None` skips it.
    pub sample: Option<Duration>,
    /// How long to wait for the destination to run after completion.
    pub dest_wait: Duration,
    /// Where to save the source's own settings before changing them (removed once they are
    /// put back); `None` keeps them in memory only.
    pub state_file: Option<PathBuf>,
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
            timeouts: Timeouts::default(),
            sample: Some(Duration::from_secs(1)),
            dest_wait: Duration::from_secs(15),
            state_file: None,
        }
    }
}

/// Where the source VM is, in words.
fn source_is(running: &Option<bool>) -> &'static str {
    match running {
        Some(true) => "still running",
        Some(false) => "NOT running",
        None => "in an unknown state (query-status failed)",
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
    #[error("the round sequence stopped at round {round}; the migration was cancelled")]
    Policy {
        round: u32,
        #[source]
        source: PilotError,
    },
    #[error("the migration ended as {status:?}: {desc}; the source VM is {}", source_is(.source_running))]
    Failed {
        status: MigrationStatus,
        desc: String,
        /// `None` when the source did not answer `query-status`.
        source_running: Option<bool>,
    },
    #[error("{overdue}; the migration was cancelled and the source VM is {}", source_is(.source_running))]
    TimedOut {
        overdue: Overdue,
        /// `None` when the source did not answer `query-status`.
        source_running: Option<bool>,
    },
    #[error("the migration was cancelled before the switch-over; the source VM is {}", source_is(.source_running))]
    Cancelled {
        /// `None` when the source did not answer `query-status`.
        source_running: Option<bool>,
    },
    #[error("cannot save the source's settings before changing them; nothing was changed")]
    StateFile(#[source] StateFileError),
}

impl GovernorError {
    /// Whether the source VM runs, where the error says.
    fn source_running(&self) -> Option<bool> {
        match self {
            GovernorError::Failed { source_running, .. }
            | GovernorError::TimedOut { source_running, .. }
            | GovernorError::Cancelled { source_running } => *source_running,
            _ => None,
        }
    }
}

/// Runs one migration from `src` to the destination at `cfg.uri`.
#[derive(Debug)]
pub struct Governor {
    cfg: GovernorConfig,
    events: Option<UnboundedSender<Event>>,
    steering: Steering,
}

/// The mutable state of one governed migration.
#[derive(Debug)]
struct Run {
    pilot: Pilot<'static>,
    /// `qemu-native`: set before the last observed round is recorded as followed by QEMU's
    /// switch-over.
    switched: Option<Arc<AtomicBool>>,
    /// `qemu-native`: the last observed round, whose outcome is known at the next pass.
    pending: Option<Measured>,
    passes: Passes,
    extras: QemuExtras,
    /// The `max-bandwidth` in force in QEMU.
    qemu_cap: f64,
    /// When `migrate_cancel` was sent after a cancellation or a timeout.
    cancelled_at: Option<Instant>,
    /// The timeout whose abort cancelled the migration.
    timed_out: Option<Overdue>,
    /// Pre-copy is over (stop-and-copy chosen or forced, or QEMU switched over).
    stopping: bool,
    reactions: Vec<f64>,
    last_progress: Option<Instant>,
}

impl Governor {
    /// A governor with `cfg`.
    pub fn new(cfg: GovernorConfig) -> Governor {
        Governor {
            cfg,
            events: None,
            steering: Steering::new(),
        }
    }

    /// Steers the migration with `steering` (a clone of the caller's handle): its granted cap
    /// bounds every cap set in QEMU, and cancelling it before the switch-over is forced stops
    /// the migration with the source VM running.
    pub fn with_steering(mut self, steering: Steering) -> Governor {
        self.steering = steering;
        self
    }

    /// Sends the migration's [`Event`]s to `tx`.
    pub fn with_events(mut self, tx: UnboundedSender<Event>) -> Governor {
        self.events = Some(tx);
        self
    }

    fn emit(&self, e: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    /// Migrates: checks both sides, saves the source's settings (and the state file), samples
    /// the dirty rate, starts the migration and governs it pass by pass until QEMU reports
    /// completion; then checks the destination runs. On every exit once the settings were
    /// saved (success, failure, cancellation, timeout) they are put back, and the state file
    /// is removed when that worked.
    pub async fn run(
        &self,
        src: &mut QmpClient,
        dest: Option<&mut QmpClient>,
        control: Control,
    ) -> Result<QemuReport, GovernorError> {
        let result = self.checked_run(src, dest, control).await;
        if let Err(e) = &result {
            match e {
                GovernorError::Cancelled { source_running } => self.emit(Event::Cancelled {
                    phase: format!("pre-copy; the source VM is {}", source_is(source_running)),
                }),
                _ => self.emit(Event::Failed {
                    error: ErrorChain(e).to_string(),
                    outcome: format!("the source VM is {}", source_is(&e.source_running())),
                }),
            }
        }
        result
    }

    async fn checked_run(
        &self,
        src: &mut QmpClient,
        mut dest: Option<&mut QmpClient>,
        control: Control,
    ) -> Result<QemuReport, GovernorError> {
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
        if self.steering.is_cancelled() {
            return Err(GovernorError::Cancelled {
                source_running: ops::source_running(src).await,
            });
        }
        let saved = SavedSettings::read(src).await.map_err(s)?;
        if let Some(path) = &self.cfg.state_file {
            saved
                .write(path, src.path())
                .map_err(GovernorError::StateFile)?;
        }
        let mut under_way = false;
        let result = self.govern(src, dest, control, &mut under_way).await;
        let restored = ops::restore(src, &saved, under_way).await;
        if restored {
            if let Some(path) = &self.cfg.state_file {
                let _ = std::fs::remove_file(path);
            }
        }
        // Where the source VM is, asked once the settings are back.
        match result {
            Ok(mut report) => {
                report.qemu.settings_restored = Some(restored);
                Ok(report)
            }
            Err(GovernorError::Failed {
                status,
                desc,
                source_running: None,
            }) => Err(GovernorError::Failed {
                status,
                desc,
                source_running: ops::source_running(src).await,
            }),
            Err(GovernorError::TimedOut {
                overdue,
                source_running: None,
            }) => Err(GovernorError::TimedOut {
                overdue,
                source_running: ops::source_running(src).await,
            }),
            Err(GovernorError::Cancelled {
                source_running: None,
            }) => Err(GovernorError::Cancelled {
                source_running: ops::source_running(src).await,
            }),
            Err(e) => Err(e),
        }
    }

    /// Everything after the settings were saved. `under_way` says whether a migration may be
    /// running in QEMU when this returns (then the caller cancels it before restoring).
    async fn govern(
        &self,
        src: &mut QmpClient,
        dest: Option<&mut QmpClient>,
        control: Control,
        under_way: &mut bool,
    ) -> Result<QemuReport, GovernorError> {
        let mut run = self.prepare(src, control, under_way).await?;
        let final_info = self.watch(src, &mut run).await?;
        *under_way = false;
        if final_info.status != MigrationStatus::Completed {
            // `source_running` is asked by `run` once the settings are back.
            if final_info.status == MigrationStatus::Cancelled {
                if let Some(overdue) = run.timed_out {
                    return Err(GovernorError::TimedOut {
                        overdue,
                        source_running: None,
                    });
                }
                if run.cancelled_at.is_some() {
                    return Err(GovernorError::Cancelled {
                        source_running: None,
                    });
                }
            }
            return Err(GovernorError::Failed {
                status: final_info.status,
                desc: final_info
                    .error_desc
                    .unwrap_or_else(|| "QEMU gave no reason".into()),
                source_running: None,
            });
        }
        let final_info = ops::final_times(src, final_info)
            .await
            .map_err(GovernorError::Source)?;
        let mut report = self.finish(src, run, &final_info).await?;
        let downtime_s = report.report.summary.downtime_s;
        match dest {
            Some(d) => {
                let running = ops::wait_running(d, self.cfg.dest_wait)
                    .await
                    .map_err(GovernorError::Destination)?;
                report.qemu.destination_running = Some(running);
                if running {
                    self.emit(Event::Verified {
                        how: "QEMU reported `completed`; the destination runs".into(),
                    });
                    self.emit(Event::HandedOver { downtime_s });
                } else {
                    self.emit(Event::Failed {
                        error: "the migration completed but the destination did not report \
                                `running`"
                            .into(),
                        outcome: "unknown: the source is paused after completion".into(),
                    });
                }
            }
            None => {
                self.emit(Event::Verified {
                    how: "QEMU reported `completed` (the destination was not asked)".into(),
                });
                self.emit(Event::HandedOver { downtime_s });
            }
        }
        Ok(report)
    }

    /// Enables events, samples the dirty rate, starts the Pilot, sets the first cap and issues
    /// `migrate` (unless the steering was cancelled meanwhile).
    async fn prepare(
        &self,
        src: &mut QmpClient,
        control: Control,
        under_way: &mut bool,
    ) -> Result<Run, GovernorError> {
        let cfg = &self.cfg;
        let s = GovernorError::Source;
        let original = ops::read_params(src).await.map_err(s)?;
        src.execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [{"capability": "events", "state": true}]})),
        )
        .await
        .map_err(s)?;
        let (policy, switched): (Box<dyn Policy>, _) = match control {
            Control::Policy(p) => (p, None),
            Control::Native => {
                let own = original
                    .max_bandwidth
                    .map_or(QEMU_DEFAULT_MAX_BANDWIDTH, |b| b as f64);
                let (o, switched) = Observed::new(own);
                (Box::new(o), Some(switched))
            }
        };
        let mut pilot = Pilot::new(
            policy,
            Setup {
                executor: Executor::Qemu,
                memory_bytes: cfg.memory_bytes,
                stop_remaining: cfg.stop_remaining,
                workload: cfg.workload.clone(),
                timeouts: cfg.timeouts,
            },
        );
        self.emit(Event::Started {
            executor: Executor::Qemu,
            policy: pilot.policy_name().into(),
            memory_bytes: cfg.memory_bytes,
            threshold: pilot.threshold(),
        });
        let mut extras = QemuExtras::default();
        if let (Some(period), None) = (cfg.sample, &switched) {
            let m = dirty::measure(src, period)
                .await
                .map_err(GovernorError::Sample)?;
            let sample = m.sample();
            pilot.sample(&sample);
            self.emit(Event::Sampled {
                sample: sample.clone(),
            });
            extras.sample = Some(sample);
        }
        let first = pilot
            .start(0.0, self.steering.granted())
            .map_err(|source| GovernorError::Policy { round: 1, source })?;
        let mut qemu_cap = original
            .max_bandwidth
            .map_or(QEMU_DEFAULT_MAX_BANDWIDTH, |b| b as f64);
        if switched.is_none() {
            set_params(src, Some(first.cap()), Some(cfg.precopy_downtime_ms))
                .await
                .map_err(s)?;
            extras.precopy_downtime_limit_ms = Some(cfg.precopy_downtime_ms);
            qemu_cap = first.cap();
        } else if first.cap() != qemu_cap {
            // QEMU's own cap, bounded by a grant already in force.
            set_params(src, Some(first.cap()), None).await.map_err(s)?;
            qemu_cap = first.cap();
        }
        if self.steering.is_cancelled() {
            return Err(GovernorError::Cancelled {
                source_running: None,
            });
        }
        src.drain_events();
        if let Err(e) = src
            .execute("migrate", Some(json!({ "uri": cfg.uri })))
            .await
        {
            // A `migrate` that timed out may have started: cancel it too.
            *under_way = !matches!(e, QmpError::Command { .. });
            return Err(s(e));
        }
        *under_way = true;
        let passes = Passes::new(cfg.memory_bytes);
        extras.migrate_unix_s = Some(passes.t0);
        self.emit(Event::Connected {
            peer: Some(cfg.uri.clone()),
        });
        Ok(Run {
            pilot,
            switched,
            pending: None,
            passes,
            extras,
            qemu_cap,
            cancelled_at: None,
            timed_out: None,
            stopping: false,
            reactions: Vec::new(),
            last_progress: None,
        })
    }

    /// Before pre-copy is over: a cancelled steering sends `migrate_cancel` (once), and a
    /// changed grant changes QEMU's `max-bandwidth` at once, never above the grant nor the
    /// policy's wish; the value QEMU reports right after is recorded.
    async fn steer(&self, src: &mut QmpClient, run: &mut Run) -> Result<(), GovernorError> {
        if run.stopping || run.cancelled_at.is_some() {
            return Ok(());
        }
        let s = GovernorError::Source;
        if self.steering.is_cancelled() {
            run.cancelled_at = Some(Instant::now());
            src.execute("migrate_cancel", None).await.map_err(s)?;
            return Ok(());
        }
        let granted = self.steering.granted();
        let Some(cap) = run.pilot.steer(run.passes.clock.now(), granted) else {
            return Ok(());
        };
        let seen = wall_now();
        set_params(src, Some(cap), None).await.map_err(s)?;
        run.qemu_cap = cap;
        let back = ops::read_params(src).await.map_err(s)?;
        run.extras.steers.push(SteerRecord {
            at_s: seen - run.passes.t0,
            granted_bytes_per_s: granted,
            cap_set_bytes_per_s: cap,
            cap_read_back_bytes_per_s: back.max_bandwidth.map(|b| b as f64),
            read_back_at_s: wall_now() - run.passes.t0,
        });
        self.emit(Event::CapGranted {
            granted_bytes_per_s: granted,
            cap_bytes_per_s: cap,
        });
        Ok(())
    }

    /// Handles events, steering and polls until QEMU reports a final status; returns that
    /// answer.
    async fn watch(
        &self,
        src: &mut QmpClient,
        run: &mut Run,
    ) -> Result<MigrationInfo, GovernorError> {
        let cfg = &self.cfg;
        let started = Instant::now();
        let mut last_poll = Instant::now();
        loop {
            self.steer(src, run).await?;
            if run.cancelled_at.is_some_and(|t| t.elapsed() > CANCEL_WAIT) {
                // QEMU did not end the migration in time; the caller cancels once more.
                return Err(match run.timed_out {
                    Some(overdue) => GovernorError::TimedOut {
                        overdue,
                        source_running: None,
                    },
                    None => GovernorError::Cancelled {
                        source_running: None,
                    },
                });
            }
            let wait = STEER_TICK.min(cfg.poll.saturating_sub(last_poll.elapsed()));
            let event = src.next_event(wait).await.map_err(GovernorError::Source)?;
            let mut final_event = false;
            if let Some(e) = event {
                match e.name.as_str() {
                    "MIGRATION_PASS" => self.on_pass(src, run, &e).await?,
                    "MIGRATION" => {
                        final_event = e
                            .data_str("status")
                            .and_then(|st| {
                                serde_json::from_value::<MigrationStatus>(json!(st)).ok()
                            })
                            .is_some_and(MigrationStatus::is_final);
                    }
                    _ => {}
                }
            }
            if final_event || last_poll.elapsed() >= cfg.poll {
                last_poll = Instant::now();
                let q: MigrationInfo = src
                    .execute_as("query-migrate", None)
                    .await
                    .map_err(GovernorError::Source)?;
                if q.status.is_final() {
                    src.drain_events();
                    return Ok(q);
                }
                self.poll(src, run, &q, started.elapsed().as_secs_f64())
                    .await?;
            }
        }
    }

    /// One `query-migrate` poll of a migration under way: the wire peak, a progress event
    /// now and then, and the timeouts.
    async fn poll(
        &self,
        src: &mut QmpClient,
        run: &mut Run,
        q: &MigrationInfo,
        elapsed_s: f64,
    ) -> Result<(), GovernorError> {
        let Some(ram) = &q.ram else {
            return Ok(());
        };
        run.passes.wire.sample(elapsed_s, ram.transferred);
        if run.cancelled_at.is_some() || !run.passes.started() {
            return Ok(());
        }
        if run
            .last_progress
            .is_none_or(|t| t.elapsed() >= PROGRESS_EVERY)
        {
            run.last_progress = Some(Instant::now());
            self.emit(Event::Progress {
                round: run.pilot.round(),
                bytes_sent: run.passes.sent_in_round(ram.transferred),
                bytes_remaining: ram.remaining,
            });
        }
        if run.stopping || q.status != MigrationStatus::Active {
            return Ok(());
        }
        match run.pilot.progress(run.passes.clock.now(), ram.remaining) {
            Some(overdue) => self.overdue(src, run, overdue, ram.remaining).await,
            None => Ok(()),
        }
    }

    /// A timeout fired: abort cancels the migration (the source VM runs on), force raises the
    /// downtime limit so that QEMU stops and copies now.
    async fn overdue(
        &self,
        src: &mut QmpClient,
        run: &mut Run,
        overdue: Overdue,
        remaining: f64,
    ) -> Result<(), GovernorError> {
        let s = GovernorError::Source;
        self.emit(Event::TimedOut { overdue });
        match overdue.action {
            TimeoutAction::Abort => {
                run.timed_out = Some(overdue);
                run.cancelled_at = Some(Instant::now());
                src.execute("migrate_cancel", None).await.map_err(s)?;
            }
            TimeoutAction::Force => {
                // QEMU went on after the last observed round: it did not stop by itself.
                self.resolve_pending(src, run, false).await?;
                let next = run.pilot.force_stop(self.steering.granted());
                set_params(src, Some(next.cap()), Some(self.cfg.stop_downtime_ms))
                    .await
                    .map_err(s)?;
                run.qemu_cap = next.cap();
                run.stopping = true;
                run.extras.switchover = "forced".into();
                run.extras.forced = Some(overdue.to_string());
                run.extras.stop_downtime_limit_ms = Some(self.cfg.stop_downtime_ms);
                self.emit_next(next, remaining);
            }
        }
        Ok(())
    }

    /// Emits what comes next: a round starting with `bytes` to send, or the stop-and-copy.
    fn emit_next(&self, next: Next, bytes: f64) {
        self.emit(match next {
            Next::Round { round, wish, cap } => Event::RoundStarted {
                round,
                wish_bytes_per_s: wish,
                cap_bytes_per_s: cap,
                bytes,
            },
            Next::StopAndCopy { reason, cap, .. } => Event::StopAndCopy {
                reason,
                bytes,
                cap_bytes_per_s: cap,
            },
        });
    }

    /// One `MIGRATION_PASS`: pass 1 starts round 1; pass k+1 ends round k, which is measured
    /// and handed to the Pilot.
    async fn on_pass(
        &self,
        src: &mut QmpClient,
        run: &mut Run,
        e: &QmpEvent,
    ) -> Result<(), GovernorError> {
        if run.stopping || run.cancelled_at.is_some() {
            // The sync QEMU makes right before the pause (pre-copy is over), or one made
            // while the migration is being cancelled.
            return Ok(());
        }
        let under_way = run.pilot.round() + u32::from(run.pending.is_some());
        let pass = run
            .passes
            .on_pass(src, e, under_way)
            .await
            .map_err(GovernorError::Source)?;
        match pass {
            Pass::Ignored => {}
            Pass::First(mut record) => {
                record.cap_set_bytes_per_s = Some(run.pilot.cap());
                let bytes = record.remaining;
                run.passes.records.push(record);
                self.emit_next(run.pilot.next(), bytes);
            }
            Pass::NotActive { status, record } => {
                // QEMU switched over by itself (or the migration is ending): a cap would
                // only apply to nothing.
                if matches!(
                    status,
                    MigrationStatus::Device
                        | MigrationStatus::PreSwitchover
                        | MigrationStatus::Completed
                ) {
                    run.extras.switchover = "qemu".into();
                }
                let remaining = record.remaining;
                run.passes.records.push(record);
                self.resolve_pending(src, run, true).await?;
                run.stopping = true;
                if run.pilot.round() > 0 {
                    self.emit_next(run.pilot.switched_over(), remaining);
                }
            }
            Pass::Ended(m) if run.switched.is_some() => {
                // The previous observed round went on: QEMU synced again instead of stopping.
                self.resolve_pending(src, run, false).await?;
                let mut m = m;
                m.record.round = run.pilot.round();
                run.passes.records.push(m.record.clone());
                run.pending = Some(m);
            }
            Pass::Ended(m) => self.decided(src, run, m).await?,
        }
        Ok(())
    }

    /// The policy path: the Pilot decides on the measured round, and the next cap (or the
    /// stop-and-copy) is applied and read back.
    async fn decided(
        &self,
        src: &mut QmpClient,
        run: &mut Run,
        m: Measured,
    ) -> Result<(), GovernorError> {
        let s = GovernorError::Source;
        let round = run.pilot.round();
        let (next, rec) = run
            .pilot
            .end_round(
                m.end_s,
                m.bytes_sent,
                m.dirty_bytes,
                self.steering.granted(),
            )
            .map_err(|source| GovernorError::Policy { round, source })?;
        self.emit(Event::RoundEnded {
            record: Box::new(rec.clone()),
        });
        let limit = match next {
            Next::Round { .. } => None,
            Next::StopAndCopy { .. } => {
                run.stopping = true;
                run.extras.switchover = "policy".into();
                run.extras.stop_downtime_limit_ms = Some(self.cfg.stop_downtime_ms);
                Some(self.cfg.stop_downtime_ms)
            }
        };
        set_params(src, Some(next.cap()), limit).await.map_err(s)?;
        run.qemu_cap = next.cap();
        let reaction = wall_now() - m.event_ts;
        run.reactions.push(reaction);
        let back = ops::read_params(src).await.map_err(s)?;
        let mut record = m.record;
        record.cap_set_bytes_per_s = Some(next.cap());
        record.cap_read_back_bytes_per_s = back.max_bandwidth.map(|b| b as f64);
        record.downtime_limit_read_back_ms = back.downtime_limit;
        record.reaction_s = Some(reaction);
        run.passes.records.push(record);
        self.emit_next(next, m.dirty_bytes);
        Ok(())
    }

    /// `qemu-native`: records the pending observed round now that QEMU's choice is known
    /// (`switched`: it switched over after it; otherwise it went on).
    async fn resolve_pending(
        &self,
        src: &mut QmpClient,
        run: &mut Run,
        switched: bool,
    ) -> Result<(), GovernorError> {
        let (Some(p), Some(flag)) = (run.pending.take(), &run.switched) else {
            return Ok(());
        };
        flag.store(switched, Ordering::Release);
        let round = run.pilot.round();
        let (next, rec) = run
            .pilot
            .end_round(
                p.end_s,
                p.bytes_sent,
                p.dirty_bytes,
                self.steering.granted(),
            )
            .map_err(|source| GovernorError::Policy { round, source })?;
        self.emit(Event::RoundEnded {
            record: Box::new(rec.clone()),
        });
        if matches!(next, Next::Round { .. }) && next.cap() != run.qemu_cap {
            // The grant moved since the cap was last set.
            set_params(src, Some(next.cap()), None)
                .await
                .map_err(GovernorError::Source)?;
            run.qemu_cap = next.cap();
        }
        self.emit_next(next, p.dirty_bytes);
        Ok(())
    }

    /// The report of a completed migration from QEMU's final `query-migrate`.
    async fn finish(
        &self,
        src: &mut QmpClient,
        mut run: Run,
        info: &MigrationInfo,
    ) -> Result<QemuReport, GovernorError> {
        let ram = info.ram_or_default();
        // QEMU's last sync was followed by the switch-over.
        self.resolve_pending(src, &mut run, true).await?;
        if run.pilot.round() > 0 {
            // QEMU switched over by itself without a pass the governor saw.
            let next = run.pilot.switched_over();
            self.emit_next(next, ram.downtime_bytes.unwrap_or(0.0));
        }
        let mut extras = run.extras;
        if extras.switchover.is_empty() {
            extras.switchover = "qemu".into();
        }
        extras.passes = run.passes.records;
        let secs = |v: Option<f64>| v.map(|x| x / 1000.0);
        extras.qemu_total_time_s = secs(info.total_time);
        extras.qemu_downtime_s = secs(info.downtime);
        extras.qemu_setup_time_s = secs(info.setup_time);
        extras.downtime_bytes = ram.downtime_bytes;
        if !run.reactions.is_empty() {
            let n = run.reactions.len() as f64;
            extras.reaction_mean_s = Some(run.reactions.iter().sum::<f64>() / n);
            extras.reaction_max_s = Some(run.reactions.iter().copied().fold(0.0, f64::max));
        }
        let stop = StopCopy {
            bytes: (ram.transferred - run.passes.measured_transferred).max(0.0),
            state_bytes: 0.0,
            downtime_s: extras.qemu_downtime_s.unwrap_or(0.0),
        };
        let mut report = run.pilot.finish(stop, run.passes.wire.peak);
        if let Some(total) = extras.qemu_total_time_s {
            report.summary.total_time_s = total;
            report.summary.mean_bytes_per_s = if total > 0.0 {
                report.summary.total_bytes / total
            } else {
                0.0
            };
        }
        Ok(QemuReport {
            report,
            qemu: extras,
        })
    }
}

/// An error with its sources, `: `-joined, for [`Event::Failed`].
struct ErrorChain<'a>(&'a GovernorError);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(self.0);
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
