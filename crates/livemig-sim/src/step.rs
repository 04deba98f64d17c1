//! One simulated migration stepped from outside, for a caller that shares links among many
//! (the fleet simulation): the caller says for how long the migration sends at which rate and
//! what its grant is; the [`Stepper`] keeps the same per-round model as [`crate::simulate`]
//! (the dirty-log sample, the workload's writes over the round, the measured dirty count, the
//! [`Pilot`] deciding) and builds the same report.
//!
//! ```text
//! let mut s = Stepper::new(policy, setup);        // takes the dirty-log sample
//! s.start(grant)?;                                // round 1 under min(wish, grant)
//! loop {
//!     s.steer(grant);                             // the grant may change at any time
//!     let rate = /* at most s.cap(), as the links allow */;
//!     if s.advance(dt, rate) {                    // the step's bytes are all sent
//!         if let Stepped::Finished(report) = s.end_step(grant)? { break }
//!     }
//! }
//! ```
//!
//! With a constant grant and the link's rate for the cap, the rounds are those of
//! [`crate::simulate_granted`] (`tests::matches_the_round_loop`).

use livemig_policy::pilot::{Executor, Next, Pilot, Setup as PilotSetup, Timeouts};
use livemig_policy::report::{MigrationReport, StopCopy};
use livemig_policy::{DirtySample, Policy};

use crate::noise::Noise;
use crate::run::{measured, sample, Setup, SimError, PEAK_WINDOW_S, PROBE_S, PROBE_SEED};

/// What the migration is doing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Before,
    Round { round: u32 },
    StopCopy,
    Done,
}

/// What [`Stepper::end_step`] led to.
#[derive(Debug, Clone, PartialEq)]
pub enum Stepped {
    /// Round `round` ended having let the guest dirty `dirty_bytes` in `duration_s`; `next`
    /// is the step that follows (another round or stop-and-copy).
    Round {
        round: u32,
        duration_s: f64,
        dirty_bytes: f64,
        next: Next,
    },
    /// Stop-and-copy ended: the guest runs on the destination.
    Finished(Box<MigrationReport>),
}

/// One migration, stepped by its caller. Time is the migration's own: seconds since round 1
/// started (the sample covers the seconds before).
#[derive(Debug)]
pub struct Stepper<'a> {
    pilot: Option<Pilot<'a>>,
    setup: Setup<'a>,
    noise: Noise,
    sample: Option<DirtySample>,
    phase: Phase,
    now: f64,
    step_start: f64,
    step_bytes: f64,
    left: f64,
    /// Memory bytes the stop-and-copy sends (without the device state).
    stop_memory: f64,
    /// `(start, duration, bytes)` on the wire, equal-rate neighbours merged.
    segments: Vec<(f64, f64, f64)>,
    sent: f64,
    /// The mid-round checks' own noise stream, as in [`crate::simulate`].
    probe_noise: Noise,
    /// Mid-round checks made in the round under way.
    probes: u32,
}

impl<'a> Stepper<'a> {
    /// A migration under `policy`; the dirty-log sample is taken (and offered to the policy)
    /// now, as [`crate::simulate`] does.
    pub fn new(policy: Box<dyn Policy + 'a>, setup: Setup<'a>) -> Stepper<'a> {
        let mut noise = Noise::new(setup.link.seed);
        let sample = (setup.link.sample_s > 0.0).then(|| sample(setup, &mut noise));
        let mut pilot = Pilot::new(
            policy,
            PilotSetup {
                executor: Executor::Sim,
                memory_bytes: setup.memory_bytes,
                stop_remaining: setup.stop_remaining,
                workload: Some(setup.workload.spec().to_string()),
                timeouts: Timeouts::none(),
            },
        );
        if let Some(s) = &sample {
            pilot.sample(s);
        }
        Stepper {
            pilot: Some(pilot),
            setup,
            noise,
            sample,
            phase: Phase::Before,
            now: 0.0,
            step_start: 0.0,
            step_bytes: 0.0,
            left: 0.0,
            stop_memory: 0.0,
            segments: Vec::new(),
            sent: 0.0,
            probe_noise: Noise::new(setup.link.seed ^ PROBE_SEED),
            probes: 0,
        }
    }

    /// The pre-migration dirty-log sample, when the link takes one.
    pub fn sample(&self) -> Option<&DirtySample> {
        self.sample.as_ref()
    }

    fn pilot(&mut self) -> Result<&mut Pilot<'a>, SimError> {
        self.pilot.as_mut().ok_or(SimError::Finished)
    }

    /// Round 1 starts (the migration's time 0) under the policy's first cap bounded by
    /// `grant`.
    pub fn start(&mut self, grant: Option<f64>) -> Result<Next, SimError> {
        if self.phase != Phase::Before {
            return Err(SimError::Finished);
        }
        let next = self.pilot()?.start(0.0, grant)?;
        self.enter(next);
        Ok(next)
    }

    fn enter(&mut self, next: Next) {
        self.step_start = self.now;
        self.probes = 0;
        match next {
            Next::Round { round, .. } => {
                self.phase = Phase::Round { round };
                if round == 1 {
                    self.step_bytes = self.setup.memory_bytes;
                }
            }
            Next::StopAndCopy { .. } => {
                self.phase = Phase::StopCopy;
                self.stop_memory = self.step_bytes;
                self.step_bytes += self.setup.link.state_bytes;
            }
        }
        self.left = self.step_bytes;
    }

    /// Applies `grant` now; returns the new cap when it changed.
    pub fn steer(&mut self, grant: Option<f64>) -> Option<f64> {
        let now = self.now;
        self.pilot.as_mut().and_then(|p| p.steer(now, grant))
    }

    /// The cap in force (the policy's wish bounded by the grant); 0 before the start and
    /// after the end.
    pub fn cap(&self) -> f64 {
        match (self.phase, &self.pilot) {
            (Phase::Round { .. } | Phase::StopCopy, Some(p)) => p.cap(),
            _ => 0.0,
        }
    }

    /// The highest rate the migration can send at now: its cap, bounded by the link's
    /// capacity.
    pub fn ceiling(&self) -> f64 {
        self.setup.link.rate(self.cap())
    }

    /// Bytes left to send in the step under way.
    pub fn left(&self) -> f64 {
        self.left
    }

    /// The round under way (0 before round 1, during stop-and-copy and after).
    pub fn round(&self) -> u32 {
        match self.phase {
            Phase::Round { round } => round,
            _ => 0,
        }
    }

    /// Whether the guest is paused (stop-and-copy under way).
    pub fn stopped(&self) -> bool {
        self.phase == Phase::StopCopy
    }

    /// The migration's own time (s since round 1 started).
    pub fn now(&self) -> f64 {
        self.now
    }

    /// Every byte sent so far (state included).
    pub fn sent(&self) -> f64 {
        self.sent
    }

    /// Seconds until the next mid-round check of the round under way ([`Stepper::probe`]),
    /// every [`PROBE_S`] from the round's start as in [`crate::simulate`]; `None` outside a
    /// round. A caller that never probes runs the rounds without mid-round checks; one that
    /// does skips a check within [`PROBE_EDGE_S`] of the round's end, as the round loop does.
    pub fn probe_in(&self) -> Option<f64> {
        let Phase::Round { .. } = self.phase else {
            return None;
        };
        let k = f64::from(self.probes + 1);
        Some((self.step_start + k * PROBE_S - self.now).max(0.0))
    }

    /// The mid-round check now: the policy sees the round's bytes sent and the guest's
    /// distinct dirt since the round began; returns the new cap when it raised it.
    pub fn probe(&mut self, grant: Option<f64>) -> Option<f64> {
        let Phase::Round { .. } = self.phase else {
            return None;
        };
        self.probes += 1;
        let setup = self.setup;
        let keep = 1.0 - self.pilot.as_ref().map_or(0.0, |p| p.throttle());
        let written = keep * setup.workload.rate.written(self.step_start, self.now);
        let dirtied = measured(setup, &mut self.probe_noise, setup.model.distinct(written));
        let (now, sent) = (self.now, self.step_bytes - self.left);
        let pilot = self.pilot.as_mut()?;
        pilot
            .probe(now, sent, Some(dirtied), grant)
            .map(|(_, cap)| cap)
    }

    /// Sends at `rate` bytes/s for `dt` seconds (no more than the step has left). Returns
    /// whether the step's bytes are all sent (within a relative 1e-9, for the caller's
    /// rounding of `dt`); then call [`Stepper::end_step`].
    pub fn advance(&mut self, dt: f64, rate: f64) -> bool {
        if !matches!(self.phase, Phase::Round { .. } | Phase::StopCopy) || dt <= 0.0 {
            return self.left <= 0.0;
        }
        let bytes = (rate.max(0.0) * dt).min(self.left);
        self.left -= bytes;
        if self.left <= 1e-9 * self.step_bytes.max(1.0) {
            self.left = 0.0;
        }
        match self.segments.last_mut() {
            Some(last)
                if (last.0 + last.1 - self.now).abs() <= 1e-12 * self.now.max(1.0)
                    && (last.2 / last.1 - rate).abs() <= 1e-12 * rate =>
            {
                last.1 += dt;
                last.2 += bytes;
            }
            _ => self.segments.push((self.now, dt, bytes)),
        }
        self.sent += bytes;
        self.now += dt;
        self.left <= 0.0
    }

    /// Ends the step whose bytes are all sent: a round is measured (the workload's writes
    /// since it started, with the link's noise) and the policy decides, the next step's cap
    /// bounded by `grant`; a stop-and-copy closes the report.
    pub fn end_step(&mut self, grant: Option<f64>) -> Result<Stepped, SimError> {
        if self.left > 0.0 {
            return Err(SimError::StepNotSent { left: self.left });
        }
        match self.phase {
            Phase::Round { round } => {
                let (from, to) = (self.step_start, self.now);
                let keep = 1.0 - self.pilot.as_ref().map_or(0.0, |p| p.throttle());
                let written = keep * self.setup.workload.rate.written(from, to);
                let setup = self.setup;
                let dirty = measured(setup, &mut self.noise, setup.model.distinct(written));
                let bytes = self.step_bytes;
                let (next, _) = self.pilot()?.end_round(to, bytes, dirty, grant)?;
                self.step_bytes = dirty;
                self.enter(next);
                Ok(Stepped::Round {
                    round,
                    duration_s: to - from,
                    dirty_bytes: dirty,
                    next,
                })
            }
            Phase::StopCopy => {
                let pilot = self.pilot.take().ok_or(SimError::Finished)?;
                self.phase = Phase::Done;
                let stop = StopCopy {
                    bytes: self.stop_memory,
                    state_bytes: self.setup.link.state_bytes,
                    downtime_s: self.now - self.step_start + self.setup.link.resume_latency_s,
                };
                let peak = crate::peak::window(&self.segments, PEAK_WINDOW_S);
                Ok(Stepped::Finished(Box::new(pilot.finish(stop, peak))))
            }
            Phase::Before | Phase::Done => Err(SimError::Finished),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::Link;
    use crate::run::{simulate_granted, PROBE_EDGE_S};
    use livemig_policy::{PolicyConfig, PolicyKind};
    use livemig_workload::{DirtyModel, Workload};

    const MIB: f64 = 1024.0 * 1024.0;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    fn stepped(
        kind: PolicyKind,
        setup: Setup<'_>,
        cfg: &PolicyConfig,
        grant: Option<f64>,
    ) -> MigrationReport {
        let mut s = Stepper::new(kind.build(cfg.clone()).expect("config"), setup);
        s.start(grant).expect("starts");
        loop {
            let rate = s.ceiling();
            let dt = s.left() / rate;
            match s.probe_in() {
                Some(p) if p + PROBE_EDGE_S < dt => {
                    assert!(!s.advance(p, rate), "a check comes before the step's end");
                    s.probe(grant);
                    continue;
                }
                _ => assert!(s.advance(dt, rate), "one advance sends the step"),
            }
            if let Stepped::Finished(r) = s.end_step(grant).expect("steps") {
                return *r;
            }
        }
    }

    #[test]
    fn matches_the_round_loop() {
        for (spec, grant, noise) in [
            ("hotcold:rate=300MiB/s,hot=10%,share=90%", None, 0.0),
            ("uniform:rate=80MiB/s", Some(150.0 * MIB), 0.05),
            ("zipf:rate=200MiB/s,s=1.1", Some(90.0 * MIB), 0.0),
        ] {
            let w = Workload::parse_in(spec, None).expect("spec");
            let memory = 2048.0 * MIB;
            let model = DirtyModel::new(&w, memory, 4096.0);
            let link = Link {
                capacity: Some(400.0 * MIB),
                state_bytes: MIB,
                resume_latency_s: 0.01,
                noise,
                seed: 3,
                sample_s: 1.0,
            };
            let cfg = PolicyConfig {
                memory_bytes: memory,
                ..PolicyConfig::default()
            };
            let setup = Setup {
                workload: &w,
                model: &model,
                link: &link,
                memory_bytes: memory,
                stop_remaining: cfg.stop_remaining,
            };
            for kind in [PolicyKind::DirtyFactor, PolicyKind::Predictive] {
                let mut policy = kind.build(cfg.clone()).expect("config");
                let a = simulate_granted(policy.as_mut(), setup, grant).expect("runs");
                let b = stepped(kind, setup, &cfg, grant);
                assert_eq!(a.rounds.len(), b.rounds.len(), "{spec} {kind}");
                for (x, y) in a.rounds.iter().zip(&b.rounds) {
                    assert!(close(x.cap_bytes_per_s, y.cap_bytes_per_s), "{x:?} {y:?}");
                    assert!(close(x.duration_s, y.duration_s), "{x:?} {y:?}");
                    assert!(close(x.dirty_bytes, y.dirty_bytes), "{x:?} {y:?}");
                }
                let (x, y) = (&a.summary, &b.summary);
                assert_eq!(x.converged, y.converged);
                assert!(close(x.downtime_s, y.downtime_s), "{x:?} {y:?}");
                assert!(close(x.total_bytes, y.total_bytes), "{x:?} {y:?}");
                assert!(close(x.peak_bytes_per_s, y.peak_bytes_per_s), "{x:?} {y:?}");
            }
        }
    }

    #[test]
    fn a_lower_grant_mid_round_slows_it() {
        let w = Workload::parse_in("uniform:rate=10MiB/s", None).expect("spec");
        let memory = 1024.0 * MIB;
        let model = DirtyModel::new(&w, memory, 4096.0);
        let link = Link::default();
        let cfg = PolicyConfig {
            memory_bytes: memory,
            initial_bandwidth: Some(200.0 * MIB),
            ..PolicyConfig::default()
        };
        let setup = Setup {
            workload: &w,
            model: &model,
            link: &link,
            memory_bytes: memory,
            stop_remaining: cfg.stop_remaining,
        };
        let policy = PolicyKind::DirtyFactor.build(cfg).expect("config");
        let mut s = Stepper::new(policy, setup);
        s.start(None).expect("starts");
        assert!(close(s.cap(), 200.0 * MIB));
        assert!(!s.advance(2.0, 200.0 * MIB));
        assert_eq!(s.steer(Some(100.0 * MIB)), Some(100.0 * MIB));
        assert!(s.advance(s.left() / (100.0 * MIB), 100.0 * MIB));
        let Stepped::Round { duration_s, .. } = s.end_step(Some(100.0 * MIB)).expect("ends") else {
            panic!("a round")
        };
        // 400 MiB in 2 s, 624 MiB in 6.24 s: the mean cap is 1024 MiB / 8.24 s.
        assert!(close(duration_s, 8.24), "{duration_s}");
        assert!(s.end_step(None).is_err(), "the next step is not sent yet");
    }
}
