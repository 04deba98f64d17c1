//! The governor: runs a QEMU migration under the [`Pilot`], the round sequencer every executor
//! drives. At every `MIGRATION_PASS` it measures the round that ended, hands it to the Pilot
//! and applies the next cap (or forces stop-and-copy) through `migrate-set-parameters`.
//!
//! Layers: this module is the driver (checks, the watch loop, steering, polls); `rounds`
//! hands each pass to the Pilot and applies what comes next (timeouts included); `passes`
//! turns passes into measured rounds; `ops` holds the QMP operations; `native` stands in for
//! a policy when QEMU's own defaults decide (`qemu-native`); `config` holds the settings and
//! the errors.
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

mod config;
mod native;
mod ops;
mod passes;
mod rounds;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use livemig_policy::pilot::{Executor, Overdue, Pilot, Setup, TimeoutAction, TimeoutKind};
/// The live handle on a migration: the granted cap and cancellation.
pub use livemig_policy::Control as Steering;
pub use livemig_policy::Timeouts;
use livemig_policy::{Event, Policy};
use serde_json::json;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use crate::dirty;
use crate::features;
use crate::qmp::{QmpClient, QmpError};
pub use crate::result::{PassRecord, QemuExtras, QemuReport, SteerRecord};
use crate::saved::SavedSettings;
use crate::types::{MigrationInfo, MigrationStatus, RamStats, StatusInfo};
use config::{source_is, ErrorChain};
pub use config::{Control, GovernorConfig, GovernorError};
use native::Observed;
pub use native::OBSERVED_NOTE;
pub use ops::{enable_throttle, read_params, set_params, set_throttle, CANCEL_WAIT, CLEANUP_WAIT};
pub use passes::MIN_WIRE_WINDOW_S;
use passes::{wall_now, Measured, Passes};

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
    /// The rescue's throttle set in QEMU (percent).
    throttle_pct: u64,
    /// QEMU's `cpu-throttle-percentage` over the polls of the pass under way: (sum, polls).
    throttle_seen: (f64, u32),
}

impl Run {
    /// Whether the stop-and-copy sets `avail-switchover-bandwidth` (QEMU has it).
    fn switchover_bandwidth(&self) -> bool {
        self.extras
            .features
            .as_ref()
            .is_some_and(|f| f.avail_switchover_bandwidth)
    }
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
        self.emit(pilot.started());
        let mut extras = QemuExtras::default();
        let features = features::probe(src).await;
        let (mode, pages) = (features.dirty_rate_mode, features.dirty_sample_pages);
        extras.features = Some(features);
        let given = cfg.given_sample.clone().filter(|_| switched.is_none());
        if let Some(sample) = given {
            pilot.sample(&sample);
            self.emit(Event::Sampled {
                sample: sample.clone(),
            });
            extras.sample = Some(sample);
        } else if let (Some(period), None) = (cfg.sample, &switched) {
            let m = dirty::measure_in(src, period, mode, pages)
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
        if cfg.rescue && switched.is_none() {
            ops::enable_throttle(src).await.map_err(s)?;
        } else if cfg.auto_converge && switched.is_none() {
            ops::enable_auto_converge(src).await.map_err(s)?;
        }
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
            throttle_pct: 0,
            throttle_seen: (0.0, 0),
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
        if run.cancelled_at.is_some() {
            return Ok(());
        }
        if !run.passes.started() {
            // No pass yet (QEMU still setting up, or the first event lost): the completion
            // timeout runs from `migrate` on this clock; nothing can be forced yet.
            if let Some(limit_s) = self.cfg.timeouts.completion_s(self.cfg.memory_bytes) {
                if elapsed_s > limit_s {
                    let overdue = Overdue {
                        kind: TimeoutKind::Completion,
                        action: TimeoutAction::Abort,
                        limit_s,
                    };
                    return self.overdue(src, run, overdue, ram.remaining).await;
                }
            }
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
        if let Some(p) = q.cpu_throttle_percentage {
            let seen = run.extras.cpu_throttle_seen.get_or_insert(0.0);
            *seen = seen.max(p);
        }
        if q.status == MigrationStatus::Active {
            let p = q.cpu_throttle_percentage.unwrap_or(0.0);
            if p.is_finite() {
                run.throttle_seen.0 += p.clamp(0.0, 100.0);
                run.throttle_seen.1 += 1;
            }
        }
        if run.stopping || q.status != MigrationStatus::Active {
            return Ok(());
        }
        let now = run.passes.clock.now();
        if let Some(overdue) = run.pilot.progress(now, ram.remaining) {
            return self.overdue(src, run, overdue, ram.remaining).await;
        }
        self.probe(src, run, now, ram).await
    }

    /// The mid-round check: QEMU's dirty bitmap is synced only at a pass's end, so the policy
    /// sees the round's progress only, in pages covered (what remained at the round's start
    /// less what remains now: zero pages travel as markers and count as covered).
    async fn probe(
        &self,
        src: &mut QmpClient,
        run: &mut Run,
        now: f64,
        ram: &RamStats,
    ) -> Result<(), GovernorError> {
        if run.switched.is_some() || run.pilot.round() == 0 {
            return Ok(());
        }
        // Only within the pass the round is: after a sync whose event is not handled yet,
        // `remaining` already counts the next pass.
        let Some(start) = run
            .passes
            .records
            .last()
            .filter(|r| r.pass as f64 == ram.dirty_sync_count)
            .map(|r| r.remaining)
        else {
            return Ok(());
        };
        let covered = (start - ram.remaining).max(0.0);
        let round = run.pilot.round();
        let Some((raise, cap)) = run.pilot.probe(now, covered, None, self.steering.granted())
        else {
            return Ok(());
        };
        set_params(src, Some(cap), None)
            .await
            .map_err(GovernorError::Source)?;
        run.qemu_cap = cap;
        self.emit(Event::Raised {
            round,
            elapsed_s: run.pilot.round_elapsed(now),
            wish_bytes_per_s: raise.wish_bytes_per_s,
            cap_bytes_per_s: cap,
            reason: raise.reason,
        });
        Ok(())
    }
}
