//! The round sequencer every executor drives: sample → first cap → rounds → stop-and-copy →
//! report. Sans-IO: the executor moves the bytes and reads its clock; the [`Pilot`] numbers
//! the rounds, asks the policy, bounds every cap by the grant, guards against a policy that
//! never stops, watches the per-GiB completion and no-progress timeouts, and builds the one
//! report. Time arrives as seconds since the start of round 1.
//!
//! ```text
//! let mut p = Pilot::new(policy, setup);
//! p.sample(&sample);                          // optional, before start
//! let mut next = p.start(0.0, grant)?;        // round 1's cap
//! loop {
//!     // send the round under next.cap(); before every frame or poll:
//!     //   if let Some(cap) = p.steer(now, grant) { apply cap }
//!     //   if let Some(overdue) = p.progress(now, left) { abort, or p.force_stop(..) }
//!     next = p.end_round(now, bytes_sent, dirty_bytes, grant)?.0;
//!     if let Next::StopAndCopy { .. } = next { break }
//! }
//! let report = p.finish(stop_copy, peak);
//! ```

pub use crate::report::Executor;
pub use crate::timeout::{Overdue, TimeoutAction, TimeoutKind, Timeouts, GIB};

use crate::decision::Raise;
use crate::decision::{Action, Decision, StopReason};
use crate::report::{MidRound, MigrationReport, ProbeSeen, ReportBuilder, RoundRecord, StopCopy};
use crate::stats::{DirtySample, RoundProbe, RoundStats, StatsError};
use crate::Policy;

/// A policy that never chooses stop-and-copy is cut off after this many rounds.
pub const MAX_ROUNDS: u32 = 10_000;
/// Window of the wire-peak measurement (method.md section 8).
pub const PEAK_WINDOW_S: f64 = 0.1;

/// What the executor does next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// Run pre-copy round `round` under `cap` (the policy's `wish` bounded by the grant).
    Round { round: u32, wish: f64, cap: f64 },
    /// Pause the guest and send what remains under `cap`.
    StopAndCopy {
        reason: StopReason,
        wish: f64,
        cap: f64,
    },
}

impl Next {
    /// The cap the executor runs under now.
    pub fn cap(&self) -> f64 {
        match *self {
            Next::Round { cap, .. } | Next::StopAndCopy { cap, .. } => cap,
        }
    }
}

/// Why the sequence cannot go on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PilotError {
    #[error("the policy refused a round")]
    Policy(#[from] StatsError),
    #[error("the policy ran {MAX_ROUNDS} rounds without choosing stop-and-copy")]
    Endless,
    #[error("the policy asked for an invalid cap of {0} bytes/s")]
    BadCap(f64),
    #[error("a round was reported before the pilot started, or after stop-and-copy")]
    NotInRound,
}

/// What the pilot needs to know of the migration besides the policy.
#[derive(Debug, Clone)]
pub struct Setup {
    pub executor: Executor,
    /// M (bytes).
    pub memory_bytes: f64,
    /// h (bytes), for the report's `converged`.
    pub stop_remaining: f64,
    /// The workload spec, when known, for the report.
    pub workload: Option<String>,
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Before,
    Round { round: u32, started_s: f64 },
    Stopped,
}

/// The round sequencer of one migration.
#[derive(Debug)]
pub struct Pilot<'p> {
    policy: Box<dyn Policy + 'p>,
    setup: Setup,
    builder: ReportBuilder,
    stage: Stage,
    /// The policy's cap for the current round (or stop-and-copy).
    wish: f64,
    /// The cap in force: `wish` bounded by the grant.
    cap: f64,
    /// Time-weighted cap of the current round: the integral so far and when the cap last
    /// changed.
    cap_area: f64,
    cap_since_s: f64,
    /// The lowest and highest cap in force during the round under way.
    cap_range: (f64, f64),
    /// Lowest bytes-left-to-send seen, and when.
    low: Option<(f64, f64)>,
    /// A timeout forced stop-and-copy: the round under way is the last.
    forced: Option<Overdue>,
    /// The executor switched over by itself, its own downtime test passed.
    switched: bool,
    /// The policy's mid-round raises in the round under way.
    raises: Vec<MidRound>,
    /// The mid-round checks the policy kept or acted on in the round under way.
    probes: Vec<ProbeSeen>,
    /// The throttle the executor measured in force during the round under way, if it told.
    applied: Option<f64>,
}

impl<'p> Pilot<'p> {
    /// A pilot for one migration under `policy`.
    pub fn new(policy: Box<dyn Policy + 'p>, setup: Setup) -> Pilot<'p> {
        let mut builder = ReportBuilder::new(
            policy.name(),
            setup.executor.name(),
            setup.memory_bytes,
            setup.stop_remaining,
            policy.threshold(),
        );
        if let Some(w) = &setup.workload {
            builder = builder.workload(w);
        }
        Pilot {
            policy,
            setup,
            builder,
            stage: Stage::Before,
            wish: 0.0,
            cap: 0.0,
            cap_area: 0.0,
            cap_since_s: 0.0,
            cap_range: (0.0, 0.0),
            low: None,
            forced: None,
            switched: false,
            raises: Vec::new(),
            applied: None,
            probes: Vec::new(),
        }
    }

    /// The policy's name.
    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// The policy's threshold T, when it has one.
    pub fn threshold(&self) -> Option<f64> {
        self.policy.threshold()
    }

    /// The event that announces this migration.
    pub fn started(&self) -> crate::event::Event {
        crate::event::Event::Started {
            executor: self.setup.executor,
            policy: self.policy.name().to_string(),
            memory_bytes: self.setup.memory_bytes,
            threshold: self.policy.threshold(),
        }
    }

    /// The executor this pilot reports for.
    pub fn executor(&self) -> Executor {
        self.setup.executor
    }

    /// Offers the dirty-log sample taken before round 1 to the policy (call before
    /// [`Pilot::start`]; ignored after).
    pub fn sample(&mut self, sample: &DirtySample) {
        if self.stage == Stage::Before {
            self.policy.observe_sample(sample);
        }
    }

    /// Round 1 starts at `now_s` under the policy's first cap bounded by `grant`.
    pub fn start(&mut self, now_s: f64, grant: Option<f64>) -> Result<Next, PilotError> {
        if self.stage != Stage::Before {
            return Err(PilotError::NotInRound);
        }
        let wish = checked(self.policy.first_cap())?;
        self.enter_round(1, now_s, wish, grant);
        Ok(self.next())
    }

    fn enter_round(&mut self, round: u32, now_s: f64, wish: f64, grant: Option<f64>) {
        self.stage = Stage::Round {
            round,
            started_s: now_s,
        };
        self.wish = wish;
        self.cap = bounded(wish, grant);
        self.cap_area = 0.0;
        self.cap_since_s = now_s;
        self.cap_range = (self.cap, self.cap);
        // Progress is judged within a round: its bytes left to send fall while bytes move.
        self.low = None;
        self.raises.clear();
        self.probes.clear();
    }

    /// What the executor does now.
    pub fn next(&self) -> Next {
        match self.stage {
            Stage::Before => Next::Round {
                round: 0,
                wish: self.wish,
                cap: self.cap,
            },
            Stage::Round { round, .. } => Next::Round {
                round,
                wish: self.wish,
                cap: self.cap,
            },
            Stage::Stopped => Next::StopAndCopy {
                reason: self.stop_reason(),
                wish: self.wish,
                cap: self.cap,
            },
        }
    }

    /// The cap in force now.
    pub fn cap(&self) -> f64 {
        self.cap
    }

    /// The rescue's throttle the policy asks for now: the share of the guest's CPU to take
    /// away (0 when none). The executor applies it when it changes and lifts it once the
    /// stop-and-copy is done (or the migration ends otherwise).
    pub fn throttle(&self) -> f64 {
        self.builder
            .last_round()
            .and_then(|r| r.decision.audit.throttle)
            .unwrap_or(0.0)
    }

    /// Seconds since the round under way began (0 outside a round).
    pub fn round_elapsed(&self, now_s: f64) -> f64 {
        match self.stage {
            Stage::Round { started_s, .. } => (now_s - started_s).max(0.0),
            _ => 0.0,
        }
    }

    /// The round under way (0 before round 1 and during stop-and-copy).
    pub fn round(&self) -> u32 {
        match self.stage {
            Stage::Round { round, .. } => round,
            _ => 0,
        }
    }

    /// Applies `grant` at `now_s`: returns the new cap when it changed (lowered or raised, never
    /// above the policy's wish nor the grant), for the executor to apply at once.
    pub fn steer(&mut self, now_s: f64, grant: Option<f64>) -> Option<f64> {
        let cap = bounded(self.wish, grant);
        if self.stage == Stage::Before || cap == self.cap {
            return None;
        }
        // A clock that runs back (an executor mixing clocks) never makes time run backwards.
        let now_s = now_s.max(self.cap_since_s);
        self.cap_area += self.cap * (now_s - self.cap_since_s);
        self.cap_since_s = now_s;
        self.cap = cap;
        self.cap_range = (self.cap_range.0.min(cap), self.cap_range.1.max(cap));
        Some(cap)
    }

    /// A mid-round check at `now_s`: the round under way has sent `bytes_sent` and, where the
    /// executor sees it, the guest has dirtied `dirtied_bytes` of distinct memory since the
    /// round began. When the policy raises its wish, returns the raise and the new cap (bounded
    /// by `grant`) for the executor to apply at once. Call it every few hundred milliseconds;
    /// the policy rate-limits itself.
    pub fn probe(
        &mut self,
        now_s: f64,
        bytes_sent: f64,
        dirtied_bytes: Option<f64>,
        grant: Option<f64>,
    ) -> Option<(Raise, f64)> {
        let Stage::Round { round, started_s } = self.stage else {
            return None;
        };
        let elapsed_s = (now_s - started_s).max(0.0);
        let probe = RoundProbe {
            round,
            elapsed_s,
            bytes_sent,
            dirtied_bytes,
            // The cap in force under `grant` (the executor steered to it already).
            cap_bytes_per_s: bounded(self.wish, grant),
        };
        let answer = self.policy.during_round(&probe);
        if answer.kept || answer.raise.is_some() {
            self.probes.push(ProbeSeen {
                elapsed_s,
                bytes_sent,
                dirtied_bytes,
                granted_bytes_per_s: grant,
            });
        }
        let raise = answer.raise?;
        // Only a finite raise above the wish in force is taken.
        let wish = checked(raise.wish_bytes_per_s).ok()?;
        if wish <= self.wish {
            return None;
        }
        self.wish = wish;
        let cap = self.steer(now_s, grant).unwrap_or(self.cap);
        self.raises.push(MidRound {
            elapsed_s,
            bytes_sent,
            dirtied_bytes,
            wish_bytes_per_s: wish,
            cap_bytes_per_s: cap,
            reason: raise.reason.clone(),
        });
        Some((raise, cap))
    }

    /// The executor started a new pass over the memory within the round under way (QEMU's
    /// passes, when the pilot's rounds lag them): its bytes left to send start afresh.
    pub fn restart_progress(&mut self) {
        self.low = None;
    }

    /// Reports `remaining` bytes left to send in the round under way at `now_s` and checks the
    /// timeouts (only during pre-copy rounds).
    pub fn progress(&mut self, now_s: f64, remaining: f64) -> Option<Overdue> {
        if !matches!(self.stage, Stage::Round { .. }) {
            return None;
        }
        match self.low {
            Some((low, _)) if remaining >= low => {}
            _ => self.low = Some((remaining, now_s)),
        }
        let t = self.setup.timeouts;
        if let Some(limit_s) = t.completion_s(self.setup.memory_bytes) {
            if now_s > limit_s {
                return Some(Overdue {
                    kind: TimeoutKind::Completion,
                    action: t.action,
                    limit_s,
                });
            }
        }
        if let (Some(limit_s), Some((_, at))) = (t.progress_s, self.low) {
            if now_s - at > limit_s {
                return Some(Overdue {
                    kind: TimeoutKind::Progress,
                    action: t.action,
                    limit_s,
                });
            }
        }
        None
    }

    /// The round under way ended at `now_s` having sent `bytes_sent`, while the guest dirtied
    /// `dirty_bytes` of distinct pages: the policy decides, and the next step's cap is bounded
    /// by `grant`. Returns what comes next and the round's record.
    pub fn end_round(
        &mut self,
        now_s: f64,
        bytes_sent: f64,
        dirty_bytes: f64,
        grant: Option<f64>,
    ) -> Result<(Next, &RoundRecord), PilotError> {
        let Stage::Round { round, started_s } = self.stage else {
            return Err(PilotError::NotInRound);
        };
        let duration_s = (now_s - started_s).max(0.0);
        // The cap the round ran under: time-weighted when the grant moved it during the round,
        // else exactly the cap in force (cap x d / d is not always the cap in floating point).
        let ran_under = if duration_s > 0.0 && self.cap_area > 0.0 {
            // Bounded by the caps in force: a steer stamped after the round's end (an executor
            // whose round ends at an earlier event's time) cannot push it outside them.
            ((self.cap_area + self.cap * (now_s - self.cap_since_s).max(0.0)) / duration_s)
                .clamp(self.cap_range.0, self.cap_range.1)
        } else {
            self.cap
        };
        self.end_measured(
            RoundStats {
                round,
                cap_bytes_per_s: ran_under,
                bytes_sent,
                duration_s,
                dirty_bytes,
            },
            grant,
        )
    }

    /// [`Pilot::end_round`] with the statistics measured by the executor itself (the
    /// simulator's exact durations and caps; a replay), and the grant for the next step.
    pub fn end_measured(
        &mut self,
        stats: RoundStats,
        grant: Option<f64>,
    ) -> Result<(Next, &RoundRecord), PilotError> {
        let Stage::Round { round, started_s } = self.stage else {
            return Err(PilotError::NotInRound);
        };
        if stats.round != round {
            return Err(StatsError::OutOfOrder {
                expected: round,
                got: stats.round,
            }
            .into());
        }
        let applied = self.applied.take();
        if let Some(x) = applied {
            self.policy.throttle_applied(x);
        }
        let mut decision = self.policy.after_round(&stats)?;
        if let Some(o) = self.forced {
            let mut audit = decision.audit;
            audit.note = Some(format!("{o}: stop-and-copy forced"));
            decision = Decision::stop(StopReason::TimedOut, audit);
        }
        let raises = std::mem::take(&mut self.raises);
        let probes = std::mem::take(&mut self.probes);
        self.builder
            .round_wished(&stats, self.wish, &decision, raises, probes);
        self.builder.set_throttle_applied(applied);
        let now_s = started_s + stats.duration_s;
        match decision.action {
            Action::Continue {
                next_cap_bytes_per_s,
            } => {
                if round >= MAX_ROUNDS {
                    return Err(PilotError::Endless);
                }
                let wish = checked(next_cap_bytes_per_s)?;
                self.enter_round(round + 1, now_s, wish, grant);
            }
            Action::StopAndCopy { .. } => {
                let wish = checked(self.policy.stop_copy_cap()).or_else(|e| {
                    // A forced stop keeps going with the last cap rather than fail.
                    self.forced.map(|_| self.wish).ok_or(e)
                })?;
                self.stage = Stage::Stopped;
                self.wish = wish;
                self.cap = bounded(wish, grant);
            }
        }
        let next = self.next();
        match self.builder.last_round() {
            Some(r) => Ok((next, r)),
            None => Err(PilotError::NotInRound),
        }
    }

    /// The share of the guest's CPU the executor measured taken away during the round under
    /// way (QEMU: its `cpu-throttle-percentage`, applied up to two passes after the policy asked
    /// it). Offered to the policy when the round ends and kept in its record. Values outside
    /// [0, 1) are ignored.
    pub fn throttle_applied(&mut self, share: f64) {
        if (0.0..1.0).contains(&share) {
            self.applied = Some(share);
        }
    }

    /// The executor switched over by itself during the round under way (QEMU's own test
    /// passed, or a forced stop QEMU acted on before the round ended): that round is not
    /// measured, pre-copy is over. Returns the stop-and-copy step.
    pub fn switched_over(&mut self, grant: Option<f64>) -> Next {
        if self.stage != Stage::Stopped {
            let wish = checked(self.policy.stop_copy_cap()).unwrap_or(self.wish);
            self.stage = Stage::Stopped;
            self.wish = wish;
            self.cap = bounded(wish, grant);
            if self.forced.is_none() {
                // The executor's own downtime test passed (QEMU: what remains fits its
                // `downtime-limit` at the bandwidth it measures).
                self.switched = true;
            }
        }
        self.next()
    }

    /// A timeout whose action is `force` fired: the round under way is the last. The executor
    /// ends it now and reports it with [`Pilot::end_round`] (which then answers stop-and-copy,
    /// [`StopReason::TimedOut`], whatever the policy says), or, when it cannot measure it, calls
    /// [`Pilot::switched_over`]. Returns the stop-and-copy step that follows.
    pub fn force_stop(&mut self, overdue: Overdue, grant: Option<f64>) -> Next {
        self.forced = Some(overdue);
        let wish = checked(self.policy.stop_copy_cap()).unwrap_or(self.wish);
        Next::StopAndCopy {
            reason: StopReason::TimedOut,
            wish,
            cap: bounded(wish, grant),
        }
    }

    /// Why pre-copy ended (or will end): a forced stop's timeout, else the last decision's
    /// reason.
    pub fn stop_reason(&self) -> StopReason {
        if self.switched {
            return StopReason::DowntimeFits;
        }
        match self.forced {
            Some(_) => StopReason::TimedOut,
            None => self
                .builder
                .last_round()
                .and_then(|r| r.decision.stop_reason())
                .unwrap_or(StopReason::RoundLimit),
        }
    }

    /// Whether a timeout forced stop-and-copy.
    pub fn forced(&self) -> Option<Overdue> {
        self.forced
    }

    /// The last round recorded.
    pub fn last_round(&self) -> Option<&RoundRecord> {
        self.builder.last_round()
    }

    /// Pre-copy time so far (the recorded rounds).
    pub fn precopy_time_s(&self) -> f64 {
        self.builder.precopy_time_s()
    }

    /// Closes the report with the stop-and-copy figures and the wire peak measured by the
    /// executor.
    pub fn finish(mut self, stop: StopCopy, peak_wire_bytes_per_s: f64) -> MigrationReport {
        if self.forced.is_some() || self.switched {
            // Also when the last round could not be measured (QEMU switched over first).
            let reason = self.stop_reason();
            self.builder.set_stop_reason(reason);
        }
        self.builder.finish(stop, peak_wire_bytes_per_s)
    }
}

/// Replays the measured rounds of `report` through a fresh pilot under `policy`: the round
/// records a sequence of the same measurements produces, for checking that an executor's
/// report is what the one sequence makes of its measurements.
/// `sample` is the dirty-log sample the executor offered the policy, if any.
pub fn replay<'p>(
    policy: Box<dyn Policy + 'p>,
    sample: Option<&DirtySample>,
    report: &MigrationReport,
) -> Result<Vec<RoundRecord>, PilotError> {
    let executor = match report.executor.as_str() {
        "engine" => Executor::Engine,
        "qemu" => Executor::Qemu,
        _ => Executor::Sim,
    };
    let mut pilot = Pilot::new(
        policy,
        Setup {
            executor,
            memory_bytes: report.memory_bytes,
            stop_remaining: report.stop_remaining_bytes,
            workload: report.workload.clone(),
            timeouts: Timeouts::none(),
        },
    );
    if let Some(s) = sample {
        pilot.sample(s);
    }
    pilot.start(0.0, None)?;
    let mut started_s = 0.0;
    for r in &report.rounds {
        // The mid-round checks the policy kept or acted on, with what they saw (the others
        // changed nothing).
        for m in &r.probes {
            pilot.probe(
                started_s + m.elapsed_s,
                m.bytes_sent,
                m.dirtied_bytes,
                m.granted_bytes_per_s,
            );
        }
        started_s += r.duration_s;
        if let Some(x) = r.throttle_applied {
            pilot.throttle_applied(x);
        }
        let stats = RoundStats {
            round: r.round,
            cap_bytes_per_s: r.cap_bytes_per_s,
            bytes_sent: r.bytes_sent,
            duration_s: r.duration_s,
            dirty_bytes: r.dirty_bytes,
        };
        // The wish of the next round is the policy's; the grant that bounded it between checks
        // is not in the report, so the replay runs ungranted there: the measured cap is what
        // the policy sees at a round's end, and each kept check carries its own grant.
        pilot.end_measured(stats, None)?;
    }
    Ok(pilot.builder.report_rounds().to_vec())
}

/// `wish` bounded by `grant`.
fn bounded(wish: f64, grant: Option<f64>) -> f64 {
    grant
        .filter(|g| *g > 0.0 && g.is_finite())
        .map_or(wish, |g| g.min(wish))
}

fn checked(cap: f64) -> Result<f64, PilotError> {
    if cap.is_finite() && cap > 0.0 {
        Ok(cap)
    } else {
        Err(PilotError::BadCap(cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PolicyConfig, PolicyKind};

    fn pilot(kind: PolicyKind, timeouts: Timeouts) -> Pilot<'static> {
        let cfg = PolicyConfig {
            memory_bytes: 1024.0 * 1024.0 * 1024.0,
            max_rounds: 5,
            stop_remaining: 64.0 * 1024.0 * 1024.0,
            min_bandwidth: 1e6,
            max_bandwidth: 1e9,
            ..PolicyConfig::default()
        };
        let policy = kind.build(cfg).expect("policy");
        Pilot::new(
            policy,
            Setup {
                executor: Executor::Sim,
                memory_bytes: 1024.0 * 1024.0 * 1024.0,
                stop_remaining: 64.0 * 1024.0 * 1024.0,
                workload: None,
                timeouts,
            },
        )
    }

    #[test]
    fn a_lowered_grant_applies_at_once_and_the_round_records_the_time_weighted_cap() {
        let mut p = pilot(PolicyKind::Fixed, Timeouts::none());
        let next = p.start(0.0, None).expect("start");
        let wish = next.cap();
        assert_eq!(p.steer(1.0, None), None, "nothing changed");
        assert_eq!(p.steer(1.0, Some(wish / 4.0)), Some(wish / 4.0));
        assert_eq!(
            p.steer(3.0, Some(wish * 10.0)),
            Some(wish),
            "never above the wish"
        );
        let (_, rec) = p.end_round(4.0, 1e6, 5e8, None).expect("round");
        // 1 s at wish, 2 s at wish/4, 1 s at wish: (1 + 0.5 + 1) / 4 of the wish.
        assert!((rec.cap_bytes_per_s - wish * 2.5 / 4.0).abs() < 1e-6 * wish);
        assert_eq!(rec.wish_bytes_per_s, wish);
        assert_eq!(rec.duration_s, 4.0);
        // A steer stamped past the round's end cannot push the recorded cap outside the caps
        // in force.
        let wish2 = p.next().cap();
        p.steer(10.0, Some(wish2 / 2.0));
        let (_, rec) = p.end_round(5.0, 1e6, 1e3, None).expect("round 2");
        assert!(
            rec.cap_bytes_per_s <= wish2 && rec.cap_bytes_per_s >= wish2 / 2.0,
            "{} not within [{}, {}]",
            rec.cap_bytes_per_s,
            wish2 / 2.0,
            wish2
        );
    }

    /// Regression: a round whose cap never moved recorded cap x d / d, which is not the cap
    /// for some durations (16e6 x 0.7 / 0.7), so a round did not report the cap it ran under.
    #[test]
    fn a_round_without_a_grant_change_reports_its_cap_exactly() {
        let cfg = PolicyConfig {
            memory_bytes: 1e9,
            max_rounds: 10,
            stop_remaining: 1.0,
            fixed_bandwidth: Some(16e6),
            ..PolicyConfig::default()
        };
        let policy = PolicyKind::Fixed.build(cfg).expect("policy");
        let mut p = Pilot::new(
            policy,
            Setup {
                executor: Executor::Qemu,
                memory_bytes: 1e9,
                stop_remaining: 1.0,
                workload: None,
                timeouts: Timeouts::none(),
            },
        );
        assert_eq!(p.start(0.0, None).expect("start").cap(), 16e6);
        assert_ne!(16e6 * 0.7 / 0.7, 16e6, "the case this guards against");
        let (_, rec) = p.end_round(0.7, 1e7, 1e6, None).expect("round");
        assert_eq!(rec.cap_bytes_per_s, 16e6);
        // A grant that changed the cap at the very start: the whole round ran under it.
        let mut now = 0.7;
        p.steer(now, Some(4e6));
        now += 1.1;
        let (_, rec) = p.end_round(now, 1e7, 1e6, None).expect("round");
        assert_eq!(rec.cap_bytes_per_s, 4e6);
    }

    #[test]
    fn a_grant_in_force_bounds_the_next_round_and_the_stop_and_copy() {
        let mut p = pilot(PolicyKind::DirtyFactor, Timeouts::none());
        let first = p.start(0.0, Some(2e6)).expect("start");
        assert_eq!(first.cap(), 1e6, "B_min below the grant");
        let mut now = 0.0;
        let mut next = first;
        for _ in 0..10 {
            now += 10.0;
            p.steer(now - 5.0, Some(2e6));
            next = p.end_round(now, 1e7, 5e8, Some(2e6)).expect("round").0;
            assert!(next.cap() <= 2e6, "{next:?}");
            if let Next::StopAndCopy { wish, cap, .. } = next {
                assert_eq!(wish, 1e9, "stop-and-copy wishes B_max");
                assert_eq!(cap, 2e6);
                break;
            }
        }
        assert!(matches!(next, Next::StopAndCopy { .. }), "N = 5 rounds");
        assert!(
            p.end_round(now + 1.0, 1.0, 1.0, None).is_err(),
            "no round after the stop"
        );
    }

    #[test]
    fn the_progress_timeout_fires_without_a_new_low_and_the_completion_one_per_gib() {
        let t = Timeouts {
            completion_per_gib_s: Some(100.0),
            progress_s: Some(10.0),
            action: TimeoutAction::Force,
        };
        let mut p = pilot(PolicyKind::Fixed, t);
        assert_eq!(p.progress(0.0, 1e9), None, "not started");
        p.start(0.0, None).expect("start");
        assert_eq!(p.progress(1.0, 1e9), None);
        assert_eq!(p.progress(5.0, 5e8), None, "a new low at 5 s");
        assert_eq!(p.progress(14.0, 6e8), None);
        let o = p.progress(15.5, 6e8).expect("no new low for 10.5 s");
        assert_eq!(o.kind, TimeoutKind::Progress);
        assert_eq!(o.action, TimeoutAction::Force);
        let mut p = pilot(PolicyKind::Fixed, t);
        p.start(0.0, None).expect("start");
        for i in 1..=100 {
            assert_eq!(p.progress(f64::from(i), 1e9 - f64::from(i)), None);
        }
        let o = p.progress(100.5, 1.0).expect("1 GiB at 100 s per GiB");
        assert_eq!(o.kind, TimeoutKind::Completion);
        // A new round starts its own lows: its first report is progress.
        let mut p = pilot(PolicyKind::Fixed, t);
        p.start(0.0, None).expect("start");
        assert_eq!(p.progress(1.0, 10.0), None);
        p.end_round(5.0, 1e9, 5e8, None).expect("round");
        assert_eq!(p.progress(14.0, 5e8), None, "round 2's first report");
        let o = p.progress(24.5, 5e8).expect("stalled in round 2");
        assert_eq!(o.kind, TimeoutKind::Progress);
        assert_eq!(t.completion_s(1.0), Some(100.0), "at least one GiB counts");
    }

    #[test]
    fn a_forced_stop_ends_pre_copy_after_the_round_under_way_whatever_the_policy_says() {
        let mut p = pilot(PolicyKind::Fixed, Timeouts::none());
        p.start(0.0, None).expect("start");
        let o = Overdue {
            kind: TimeoutKind::Progress,
            action: TimeoutAction::Force,
            limit_s: 1.0,
        };
        let next = p.force_stop(o, Some(5e6));
        assert!(matches!(next, Next::StopAndCopy { cap, .. } if cap == 5e6));
        let (next, rec) = p.end_round(2.0, 1e6, 1e9, Some(5e6)).expect("round");
        assert_eq!(rec.decision.stop_reason(), Some(StopReason::TimedOut));
        assert!(
            matches!(next, Next::StopAndCopy { reason: StopReason::TimedOut, cap, .. } if cap == 5e6)
        );
        let mut q = pilot(PolicyKind::Fixed, Timeouts::none());
        q.start(0.0, None).expect("start");
        assert!(matches!(q.switched_over(None), Next::StopAndCopy { .. }));
        assert!(
            q.last_round().is_none(),
            "an unmeasured round is not recorded"
        );
    }
}
