//! The rounds of a governed migration: each pass handed to the Pilot, its decision applied
//! (or, under `qemu-native`, QEMU's observed), a fired timeout acted on, the report closed.

use std::sync::atomic::Ordering;

use livemig_policy::pilot::{Next, Overdue, TimeoutAction};
use livemig_policy::report::StopCopy;
use livemig_policy::Event;
use tokio::time::Instant;

use super::ops::{self, set_params};
use super::passes::{wall_now, Measured, Pass};
use super::{Governor, GovernorError, QemuReport, Run};
use crate::qmp::{Event as QmpEvent, QmpClient};
use crate::types::{MigrationInfo, MigrationStatus};

impl Governor {
    /// A timeout fired: abort cancels the migration (the source VM runs on), force raises the
    /// downtime limit so that QEMU stops and copies now.
    pub(super) async fn overdue(
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
                // The round under way cannot be measured (QEMU switches over before its pass
                // ends): pre-copy is over as it stands.
                let granted = self.steering.granted();
                run.pilot.force_stop(overdue, granted);
                let next = run.pilot.switched_over(granted);
                let bw = run.switchover_bandwidth();
                ops::set_stop_params(src, next.cap(), self.cfg.stop_downtime_ms, bw)
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
    pub(super) fn emit_next(&self, next: Next, bytes: f64) {
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
    pub(super) async fn on_pass(
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
        // A new pass: its bytes left to send start afresh for the no-progress timeout.
        run.pilot.restart_progress();
        // What QEMU throttled during the pass that just ended, for the policy's fit (the rescue
        // asks, QEMU applies up to two passes later).
        let (sum, polls) = std::mem::take(&mut run.throttle_seen);
        if self.cfg.rescue && polls > 0 {
            run.pilot.throttle_applied(sum / f64::from(polls) / 100.0);
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
                let switching = matches!(
                    status,
                    MigrationStatus::Device
                        | MigrationStatus::PreSwitchover
                        | MigrationStatus::Completed
                );
                if switching {
                    run.extras.switchover = "qemu".into();
                }
                let remaining = record.remaining;
                run.passes.records.push(record);
                self.resolve_pending(src, run, switching).await?;
                run.stopping = true;
                // A migration that failed or is being cancelled never paused the guest: no
                // stop-and-copy to announce.
                if switching && run.pilot.round() > 0 {
                    let next = run.pilot.switched_over(self.steering.granted());
                    self.emit_next(next, remaining);
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
        match limit {
            Some(limit) => {
                let bw = run.switchover_bandwidth();
                ops::set_stop_params(src, next.cap(), limit, bw)
                    .await
                    .map_err(s)?
            }
            None => set_params(src, Some(next.cap()), None).await.map_err(s)?,
        }
        run.qemu_cap = next.cap();
        if self.cfg.rescue && matches!(next, Next::Round { .. }) {
            let pct = (100.0 * run.pilot.throttle()).round() as u64;
            if pct != run.throttle_pct {
                ops::set_throttle(src, pct).await.map_err(s)?;
                run.throttle_pct = pct;
                run.extras.throttles.push((round, pct));
            }
        }
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
    pub(super) async fn finish(
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
            let next = run.pilot.switched_over(self.steering.granted());
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
