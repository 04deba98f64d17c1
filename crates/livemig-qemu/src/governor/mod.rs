//! The governor: starts a QEMU migration and, at every `MIGRATION_PASS`, measures the round
//! that ended, asks the policy and applies its decision through `migrate-set-parameters`.
//!
//! Pre-copy runs with a tiny `downtime-limit` so that QEMU never switches over by itself
//! while the guest still dirties memory; when the policy chooses stop-and-copy the limit is
//! raised and QEMU completes at once. `docs/qemu.md` maps each quantity to QEMU's counters.
//!
//! A [`Steering`] handle (`livemig_policy::Control`) steers a running migration: a granted cap
//! bounds every cap set in QEMU (a lowered grant is applied within one poll), and a
//! cancellation before the switch-over is forced cancels the migration, the source VM
//! running. The source's own settings are saved before anything changes and put back on every
//! exit, success included.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use livemig_policy::report::{ReportBuilder, StopCopy};
use livemig_policy::stats::FactorTracker;
/// The live handle on a migration: the granted cap and cancellation.
pub use livemig_policy::Control as Steering;
use livemig_policy::{Action, Audit, Branch, Decision, Policy, RoundStats, StatsError, StopReason};
use serde_json::json;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use crate::dirty::{self, DirtyError};
use crate::qmp::{Event, QmpClient, QmpError};
pub use crate::result::{PassRecord, Progress, QemuExtras, QemuReport};
use crate::saved::{SavedSettings, StateFileError};
use crate::types::{MigrationInfo, MigrationParameters, MigrationStatus, StatusInfo};

/// `downtime-limit` during pre-copy (ms): QEMU's switch-over test `remaining < bandwidth x
/// limit` then only passes when (almost) nothing is left, so it never preempts the policy.
pub const PRECOPY_DOWNTIME_MS: u64 = 1;
/// `downtime-limit` that forces the switch-over once the policy chose stop-and-copy (ms).
pub const STOP_DOWNTIME_MS: u64 = 60_000;
/// Shortest window of the wire-peak measurement (seconds); method.md asks for 100 ms, polls
/// drift by a few ms.
pub const PEAK_WINDOW_S: f64 = 0.095;
/// How many times QEMU is asked again for total-time and downtime after `completed`.
const TIMES_RETRIES: usize = 40;
/// Longest wait for each command of the restore at the end (`migrate_cancel`, the source's
/// saved capabilities and parameters), however QEMU behaves.
pub const CLEANUP_WAIT: Duration = Duration::from_secs(3);
/// How long a pass handler waits for a queued `MIGRATION_PASS` that `query-migrate` already
/// counts but whose event has not been read yet.
const QUEUED_PASS_WAIT: Duration = Duration::from_millis(500);
/// How long the governor waits for QEMU to report a cancelled migration as ended after
/// `migrate_cancel` (QEMU 7.2 takes well under a second).
pub const CANCEL_WAIT: Duration = Duration::from_secs(10);

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
            deadline: Duration::from_secs(600),
            sample: Some(Duration::from_secs(1)),
            dest_wait: Duration::from_secs(15),
            state_file: None,
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
    #[error("the migration ended as {status:?}: {desc}; the source VM is {}", match .source_running { Some(true) => "still running", Some(false) => "NOT running", None => "in an unknown state (query-status failed)" })]
    Failed {
        status: MigrationStatus,
        desc: String,
        /// `None` when the source did not answer `query-status`.
        source_running: Option<bool>,
    },
    #[error("the migration did not finish within {0:?}; it was cancelled")]
    Deadline(Duration),
    #[error("the migration was cancelled before the switch-over; the source VM is {}", match .source_running { Some(true) => "still running", Some(false) => "NOT running", None => "in an unknown state (query-status failed)" })]
    Cancelled {
        /// `None` when the source did not answer `query-status`.
        source_running: Option<bool>,
    },
    #[error("cannot save the source's settings before changing them; nothing was changed")]
    StateFile(#[source] StateFileError),
}

fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Where the current round started: its pass event's time and `ram.transferred` then.
#[derive(Debug, Clone, Copy)]
struct RoundStart {
    at: f64,
    transferred: f64,
}

/// Runs one migration from `src` to the destination at `cfg.uri`.
#[derive(Debug)]
pub struct Governor {
    cfg: GovernorConfig,
    progress: Option<UnboundedSender<Progress>>,
    steering: Steering,
}

/// The mutable state of one governed migration.
#[derive(Debug)]
struct Run {
    control: Control,
    builder: ReportBuilder,
    extras: QemuExtras,
    /// Wall time `migrate` was issued.
    t0: f64,
    /// The cap in force in QEMU: the steering's effective cap of `wish`.
    cap: f64,
    /// The cap the policy asked for last (QEMU's own for `qemu-native`).
    wish: f64,
    /// When `migrate_cancel` was sent after a cancellation.
    cancelled_at: Option<Instant>,
    round_start: Option<RoundStart>,
    rounds: u32,
    /// The latest QEMU pass accounted for.
    last_pass: u64,
    stopping: bool,
    last_round_end_transferred: f64,
    /// `qemu-native`: the last observed round, whose outcome is known at the next pass.
    native_pending: Option<(RoundStats, Audit)>,
    tracker: FactorTracker,
    reactions: Vec<f64>,
    /// Wire peak: the last window start (elapsed s, transferred) and the best rate so far.
    window: Option<(f64, f64)>,
    peak: f64,
}

impl Governor {
    /// A governor with `cfg`.
    pub fn new(cfg: GovernorConfig) -> Governor {
        Governor {
            cfg,
            progress: None,
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

    /// Migrates: checks both sides, saves the source's settings (and the state file), samples
    /// the dirty rate, starts the migration and governs it pass by pass until QEMU reports
    /// completion; then checks the destination runs. On every exit once the settings were
    /// saved (success, failure, cancellation) they are put back, and the state file is removed
    /// when that worked.
    pub async fn run(
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
                source_running: source_running(src).await,
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
        let restored = restore(src, &saved, under_way).await;
        if restored {
            if let Some(path) = &self.cfg.state_file {
                let _ = std::fs::remove_file(path);
            }
        }
        match result {
            Ok(mut report) => {
                report.qemu.settings_restored = Some(restored);
                Ok(report)
            }
            // Where the source VM is, asked once the settings are back.
            Err(GovernorError::Failed {
                status,
                desc,
                source_running: None,
            }) => Err(GovernorError::Failed {
                status,
                desc,
                source_running: source_running(src).await,
            }),
            Err(GovernorError::Cancelled {
                source_running: None,
            }) => Err(GovernorError::Cancelled {
                source_running: source_running(src).await,
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
            if final_info.status == MigrationStatus::Cancelled && run.cancelled_at.is_some() {
                return Err(GovernorError::Cancelled {
                    source_running: None,
                });
            }
            return Err(GovernorError::Failed {
                status: final_info.status,
                desc: final_info
                    .error_desc
                    .unwrap_or_else(|| "QEMU gave no reason".into()),
                source_running: None,
            });
        }
        let final_info = final_times(src, final_info).await?;
        self.emit(Progress::Completed);
        let mut report = run.finish(&final_info);
        if let Some(d) = dest {
            report.qemu.destination_running = Some(wait_running(d, self.cfg.dest_wait).await?);
        }
        Ok(report)
    }

    /// Enables events, samples the dirty rate, sets the first cap and issues `migrate`
    /// (unless the steering was cancelled meanwhile).
    async fn prepare(
        &self,
        src: &mut QmpClient,
        mut control: Control,
        under_way: &mut bool,
    ) -> Result<Run, GovernorError> {
        let cfg = &self.cfg;
        let s = GovernorError::Source;
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
        if let (Some(period), Control::Policy(p)) = (cfg.sample, &mut control) {
            let m = dirty::measure(src, period)
                .await
                .map_err(GovernorError::Sample)?;
            let sample = m.sample();
            p.observe_sample(&sample);
            extras.sample = Some(sample);
        }
        let (name, threshold, wish) = match &control {
            Control::Policy(p) => (p.name(), p.threshold(), p.first_cap()),
            Control::Native => (
                "qemu-native",
                None,
                original.max_bandwidth.map_or(0.0, |b| b as f64),
            ),
        };
        let mut cap = wish;
        match &control {
            Control::Policy(_) => {
                cap = self.steering.effective(wish);
                set_params(src, Some(cap), Some(cfg.precopy_downtime_ms))
                    .await
                    .map_err(s)?;
                extras.precopy_downtime_limit_ms = Some(cfg.precopy_downtime_ms);
            }
            Control::Native if wish > 0.0 && self.steering.effective(wish) < wish => {
                cap = self.steering.effective(wish);
                set_params(src, Some(cap), None).await.map_err(s)?;
            }
            Control::Native => {}
        }
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
        self.emit(Progress::Started { first_cap: cap });
        Ok(Run {
            control,
            builder,
            extras,
            t0: wall_now(),
            cap,
            wish,
            cancelled_at: None,
            round_start: None,
            rounds: 0,
            last_pass: 0,
            stopping: false,
            last_round_end_transferred: 0.0,
            native_pending: None,
            tracker: FactorTracker::default(),
            reactions: Vec::new(),
            window: None,
            peak: 0.0,
        })
    }

    /// Before the switch-over is forced: a cancelled steering sends `migrate_cancel` (once),
    /// and a grant below the cap in force lowers QEMU's `max-bandwidth` at once.
    async fn steer(&self, src: &mut QmpClient, run: &mut Run) -> Result<(), GovernorError> {
        if run.stopping || run.cancelled_at.is_some() {
            return Ok(());
        }
        if self.steering.is_cancelled() {
            run.cancelled_at = Some(Instant::now());
            src.execute("migrate_cancel", None)
                .await
                .map_err(GovernorError::Source)?;
            return Ok(());
        }
        let eff = self.steering.effective(run.wish);
        if run.wish > 0.0 && eff < run.cap {
            set_params(src, Some(eff), None)
                .await
                .map_err(GovernorError::Source)?;
            run.cap = eff;
        }
        Ok(())
    }

    /// Handles events and polls until QEMU reports a final status; returns that answer.
    async fn watch(
        &self,
        src: &mut QmpClient,
        run: &mut Run,
    ) -> Result<MigrationInfo, GovernorError> {
        let cfg = &self.cfg;
        let started = Instant::now();
        let mut last_poll = Instant::now();
        loop {
            if started.elapsed() > cfg.deadline {
                return Err(GovernorError::Deadline(cfg.deadline));
            }
            self.steer(src, run).await?;
            if run.cancelled_at.is_some_and(|t| t.elapsed() > CANCEL_WAIT) {
                // QEMU did not end the migration in time; the caller cancels once more.
                return Err(GovernorError::Cancelled {
                    source_running: None,
                });
            }
            let wait = cfg.poll.saturating_sub(last_poll.elapsed());
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
                let ram = q.ram_or_default();
                let now = started.elapsed().as_secs_f64();
                run.sample_wire(now, ram.transferred);
                self.emit(Progress::Sample {
                    elapsed_s: now,
                    transferred: ram.transferred,
                    remaining: ram.remaining,
                });
                if q.status.is_final() {
                    src.drain_events();
                    return Ok(q);
                }
            }
        }
    }

    /// One `MIGRATION_PASS`: pass 1 starts round 1; pass k+1 ends round k, which is measured,
    /// decided and applied.
    async fn on_pass(
        &self,
        src: &mut QmpClient,
        run: &mut Run,
        e: &Event,
    ) -> Result<(), GovernorError> {
        if run.stopping || run.cancelled_at.is_some() {
            // The sync QEMU makes right before the pause (pre-copy is over), or one made
            // while the migration is being cancelled.
            return Ok(());
        }
        let s = GovernorError::Source;
        let mut at = e.timestamp.unwrap_or_else(wall_now);
        let mut pass = e.data_u64("pass").unwrap_or(0);
        if pass != 0 && pass <= run.last_pass {
            // Already accounted for (merged into an earlier round).
            return Ok(());
        }
        let mut record = PassRecord {
            pass,
            round: 0,
            at_s: at - run.t0,
            transferred: 0.0,
            remaining: self.cfg.memory_bytes,
            cap_set_bytes_per_s: None,
            cap_read_back_bytes_per_s: None,
            downtime_limit_read_back_ms: None,
            reaction_s: None,
            note: None,
        };
        let Some(start) = run.round_start else {
            run.last_pass = pass;
            run.round_start = Some(RoundStart {
                at,
                transferred: 0.0,
            });
            record.cap_set_bytes_per_s = Some(run.cap);
            run.extras.passes.push(record);
            return Ok(());
        };
        let q: MigrationInfo = src.execute_as("query-migrate", None).await.map_err(s)?;
        let ram = q.ram_or_default();
        record.transferred = ram.transferred;
        record.remaining = ram.remaining;
        if q.status != MigrationStatus::Active {
            // QEMU switched over by itself (or the migration is ending): its counters now
            // include the stop-and-copy, and a cap would only apply to nothing. The round this
            // pass ended is not measured; its bytes count as stop-and-copy.
            if matches!(
                q.status,
                MigrationStatus::Device
                    | MigrationStatus::PreSwitchover
                    | MigrationStatus::Completed
            ) {
                run.extras.switchover = "qemu".into();
            }
            run.stopping = true;
            run.last_pass = pass;
            record.note = Some(format!(
                "QEMU's status was already {:?}: the policy was not asked",
                q.status
            ));
            run.extras.passes.push(record);
            return Ok(());
        }
        // Several passes may have happened since this event (the governor was slow, or QEMU
        // synced twice in a row): `ram.dirty-sync-count` counts them. The counters belong to
        // the latest pass, so the round ends there: the queued passes are merged into it, each
        // recorded with a note. 0 means QEMU does not report the count.
        let synced = ram.dirty_sync_count.max(0.0) as u64;
        let mut merged = Vec::new();
        while synced > pass {
            let later = src
                .take_event(
                    |e| {
                        e.name == "MIGRATION_PASS"
                            && e.data_u64("pass").is_some_and(|p| p > pass && p <= synced)
                    },
                    QUEUED_PASS_WAIT,
                )
                .await
                .map_err(s)?;
            merged.push(record.clone());
            match later {
                Some(l) => {
                    at = l.timestamp.unwrap_or_else(wall_now);
                    pass = l.data_u64("pass").unwrap_or(synced);
                }
                None => {
                    // The event never came: end the round now, at the counters' time.
                    at = wall_now();
                    pass = synced;
                }
            }
            record.pass = pass;
            record.at_s = at - run.t0;
        }
        run.last_pass = pass;
        run.rounds += 1;
        for mut m in merged {
            m.note = Some(format!(
                "queued behind pass {pass}: merged into round {}",
                run.rounds
            ));
            run.extras.passes.push(m);
        }
        let stats = RoundStats {
            round: run.rounds,
            cap_bytes_per_s: run.cap,
            bytes_sent: (ram.transferred - start.transferred).max(0.0),
            duration_s: (at - start.at).max(0.0),
            dirty_bytes: ram.remaining.max(0.0),
        };
        record.round = run.rounds;
        run.round_start = Some(RoundStart {
            at,
            transferred: ram.transferred,
        });
        run.last_round_end_transferred = ram.transferred;
        match &mut run.control {
            Control::Policy(p) => {
                let decision = match p.after_round(&stats) {
                    Ok(d) => d,
                    Err(source) => {
                        return Err(GovernorError::Policy {
                            round: run.rounds,
                            source,
                        });
                    }
                };
                run.builder.round(&stats, &decision);
                let (wish, limit) = match decision.action {
                    Action::Continue {
                        next_cap_bytes_per_s,
                    } => (next_cap_bytes_per_s, None),
                    Action::StopAndCopy { .. } => {
                        run.stopping = true;
                        run.extras.switchover = "policy".into();
                        run.extras.stop_downtime_limit_ms = Some(self.cfg.stop_downtime_ms);
                        (p.stop_copy_cap(), Some(self.cfg.stop_downtime_ms))
                    }
                };
                // The granted cap bounds every cap, the stop-and-copy's included.
                let bw = self.steering.effective(wish);
                set_params(src, Some(bw), limit).await.map_err(s)?;
                let reaction = wall_now() - at;
                run.reactions.push(reaction);
                run.wish = wish;
                run.cap = bw;
                let back: MigrationParameters = src
                    .execute_as("query-migrate-parameters", None)
                    .await
                    .map_err(s)?;
                record.cap_set_bytes_per_s = Some(bw);
                record.cap_read_back_bytes_per_s = back.max_bandwidth.map(|b| b as f64);
                record.downtime_limit_read_back_ms = back.downtime_limit;
                record.reaction_s = Some(reaction);
                if let Some(r) = run.builder.last_round() {
                    self.emit(Progress::Round {
                        record: Box::new(r.clone()),
                        pass: record.clone(),
                    });
                }
            }
            Control::Native => {
                // A grant lifted or raised since the last pass: back up to QEMU's own cap.
                let eff = self.steering.effective(run.wish);
                if run.wish > 0.0 && eff > run.cap {
                    set_params(src, Some(eff), None).await.map_err(s)?;
                    run.cap = eff;
                }
                // The previous observed round went on: QEMU synced again instead of stopping.
                if let Some((st, audit)) = run.native_pending.take() {
                    let d = Decision::next(st.cap_bytes_per_s, Branch::Constant, audit);
                    run.builder.round(&st, &d);
                    if let Some(r) = run.builder.last_round() {
                        self.emit(Progress::Round {
                            record: Box::new(r.clone()),
                            pass: record.clone(),
                        });
                    }
                }
                let f = run
                    .tracker
                    .push(&stats)
                    .map_err(|source| GovernorError::Policy {
                        round: run.rounds,
                        source,
                    })?;
                let mut audit = Audit::measured(&f, run.cap, stats.dirty_bytes, None);
                audit.note = Some("observed only: QEMU's own defaults decide".into());
                run.native_pending = Some((stats, audit));
            }
        }
        run.extras.passes.push(record);
        Ok(())
    }
}

impl Run {
    /// Folds one `ram.transferred` poll into the wire peak (windows >= [`PEAK_WINDOW_S`]).
    fn sample_wire(&mut self, now: f64, transferred: f64) {
        match self.window {
            Some((t, b)) if now - t >= PEAK_WINDOW_S => {
                self.peak = self.peak.max((transferred - b) / (now - t));
                self.window = Some((now, transferred));
            }
            Some(_) => {}
            None => self.window = Some((now, transferred)),
        }
    }

    /// The report of a completed migration from QEMU's final `query-migrate`.
    fn finish(mut self, info: &MigrationInfo) -> QemuReport {
        if let Some((st, audit)) = self.native_pending.take() {
            // QEMU's last sync was followed by the switch-over.
            self.builder
                .round(&st, &Decision::stop(StopReason::DowntimeFits, audit));
        }
        let mut extras = self.extras;
        if extras.switchover.is_empty() {
            extras.switchover = "qemu".into();
        }
        let ram = info.ram_or_default();
        let secs = |v: Option<f64>| v.map(|x| x / 1000.0);
        extras.qemu_total_time_s = secs(info.total_time);
        extras.qemu_downtime_s = secs(info.downtime);
        extras.qemu_setup_time_s = secs(info.setup_time);
        extras.downtime_bytes = ram.downtime_bytes;
        if !self.reactions.is_empty() {
            let n = self.reactions.len() as f64;
            extras.reaction_mean_s = Some(self.reactions.iter().sum::<f64>() / n);
            extras.reaction_max_s = Some(self.reactions.iter().copied().fold(0.0, f64::max));
        }
        let stop = StopCopy {
            bytes: (ram.transferred - self.last_round_end_transferred).max(0.0),
            state_bytes: 0.0,
            downtime_s: extras.qemu_downtime_s.unwrap_or(0.0),
        };
        let mut report = self.builder.finish(stop, self.peak);
        if let Some(total) = extras.qemu_total_time_s {
            report.summary.total_time_s = total;
            report.summary.mean_bytes_per_s = if total > 0.0 {
                report.summary.total_bytes / total
            } else {
                0.0
            };
        }
        QemuReport {
            report,
            qemu: extras,
        }
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

/// Puts the source's saved settings back, on every exit once they were saved. When a
/// migration may still be under way (`cancel`) it is cancelled first and QEMU is given
/// [`CANCEL_WAIT`] to end it (QEMU refuses capabilities while a migration runs). Bounded
/// whatever QEMU does (silent, closed, garbage); errors are dropped because the caller
/// returns the outcome that led here. Returns whether everything was put back.
async fn restore(qmp: &mut QmpClient, saved: &SavedSettings, cancel: bool) -> bool {
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
async fn source_running(qmp: &mut QmpClient) -> Option<bool> {
    let saved = qmp.timeout();
    qmp.set_timeout(CLEANUP_WAIT.min(saved));
    let st = qmp.execute_as::<StatusInfo>("query-status", None).await;
    qmp.set_timeout(saved);
    st.ok().map(|s| s.running)
}

/// QEMU sets `completed` before it computes total-time and downtime: asks again until they
/// are there (bounded).
async fn final_times(
    qmp: &mut QmpClient,
    mut info: MigrationInfo,
) -> Result<MigrationInfo, GovernorError> {
    for _ in 0..TIMES_RETRIES {
        if info.total_time.is_some_and(|t| t > 0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        info = qmp
            .execute_as("query-migrate", None)
            .await
            .map_err(GovernorError::Source)?;
    }
    Ok(info)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> Run {
        Run {
            control: Control::Native,
            builder: ReportBuilder::new("x", "qemu", 1.0, 0.0, None),
            extras: QemuExtras::default(),
            t0: 0.0,
            cap: 0.0,
            wish: 0.0,
            cancelled_at: None,
            round_start: None,
            rounds: 0,
            last_pass: 0,
            stopping: false,
            last_round_end_transferred: 0.0,
            native_pending: None,
            tracker: FactorTracker::default(),
            reactions: Vec::new(),
            window: None,
            peak: 0.0,
        }
    }

    #[test]
    fn wire_peak_uses_windows_of_at_least_95_ms() {
        let mut r = run();
        r.sample_wire(0.0, 0.0);
        // 20 ms later: too short a window, ignored (it would read 50 MB/s).
        r.sample_wire(0.02, 1e6);
        assert_eq!(r.peak, 0.0);
        r.sample_wire(0.1, 2e6);
        assert!((r.peak - 2e7).abs() < 1.0, "{}", r.peak);
        r.sample_wire(0.3, 3e6);
        assert!(
            (r.peak - 2e7).abs() < 1.0,
            "a slower window does not lower the peak"
        );
    }
}
