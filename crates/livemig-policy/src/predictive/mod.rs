//! `predictive`: the method's structure with a growth model and an exact planner.
//!
//! Like `dirty-factor` it measures every round, computes the dirty factors and their average
//! against T (kept in the audit), chooses the next round's bandwidth and stops at N rounds or
//! when at most h remains. Unlike it, it does not assume that the next round dirties at the mean
//! past rate: it fits the guest's distinct-dirty growth `D(t)` ([`growth`]) to a pre-migration
//! dirty-log sample and to every round so far, and picks the lowest constant bandwidth that
//! brings the remaining bytes to h within the rounds left ([`plan`]). Round 1 is planned from the
//! sample. When not even B_max can converge it says so in the audit at once, runs at B_max, and
//! ends pre-copy as soon as another round would not shrink what remains.
//!
//! The loop is closed ([`course`]): every round's measurement is compared with what its plan
//! predicted; the plan works in effective bandwidth (a round that took longer than its cap
//! allows teaches the slowness), scales the curve by how far the latest round lies above it,
//! never lowers the cap after a round that left more than planned, and a mid-round check
//! ([`Policy::during_round`]) raises the cap of a round that dirties more, or sends slower,
//! than planned.

pub mod course;
pub mod growth;
pub mod plan;

use crate::decision::{Audit, Branch, Decision, Probed, Raise, StopReason};
use crate::dirty_factor::termination;
use crate::stats::{DirtySample, FactorTracker, RoundProbe, RoundStats, StatsError};
use crate::{threshold, Policy, PolicyConfig};
use course::Course;
use growth::{Growth, Point};
use plan::{Curve, Dilated, Plan, Scaled};

/// The planned bandwidth is raised by this factor, a margin for estimation error.
pub const B_MARGIN: f64 = 1.03;
/// Weight of the latest measured round against one sample point in the fit.
pub const ROUND_WEIGHT: f64 = 4.0;
/// Each older round (and the sample) weighs this much less per round of age, so the fit
/// follows a guest whose behaviour changes.
pub const RECENCY: f64 = 0.5;
/// The planner aims at h / (1 + RESIDUAL_Z x the fit's relative residual).
pub const RESIDUAL_Z: f64 = 2.0;
/// Under an infeasible estimate, pre-copy ends once a round is predicted to shrink the
/// remaining bytes by less than this fraction.
pub const MIN_PROGRESS: f64 = 0.05;
/// A sample whose resolution is coarser than this fraction of its rate is called coarse.
pub const COARSE: f64 = 0.02;
/// After a round that left more than its plan predicted (beyond the noise floor), older points
/// weigh this much less again: the guest changed.
pub const SURPRISE: f64 = 0.25;

/// Weight of a mid-round observation kept for the fit (the round's own point weighs
/// [`ROUND_WEIGHT`]).
pub const PROBE_WEIGHT: f64 = 0.25;

/// The rescue's throttle is found to within this share of the guest's CPU.
pub const THROTTLE_STEP: f64 = 0.005;

/// The `predictive` policy.
#[derive(Debug, Clone)]
pub struct Predictive {
    cfg: PolicyConfig,
    threshold: f64,
    tracker: FactorTracker,
    points: Vec<Point>,
    first_cap: Option<f64>,
    stopped: bool,
    /// Learned from the rounds: how much longer rounds take than their cap allows.
    slowness: f64,
    /// The plan for the round under way.
    course: Option<Course>,
    /// Round 1 was planned from a coarse sample: said in round 1's audit.
    coarse: Option<String>,
    /// The rescue's throttle asked for the round under way (0: none).
    throttle: f64,
    /// Mid-round observations of the round under way kept for the fit (at doubling times:
    /// the growth curve's short end, in the guest's current behaviour), and when the next
    /// one is kept.
    seen: Vec<Point>,
    next_keep_s: f64,
}

/// A plan's answer in caps: the cap to ask for and what it is predicted to do.
struct Planned {
    cap: f64,
    /// The effective bandwidth behind the cap (cap / slowness, before the margin).
    effective: f64,
    plan: Plan,
}

impl Predictive {
    /// A policy for a validated config.
    pub fn new(cfg: PolicyConfig) -> Predictive {
        let threshold = threshold::for_config(&cfg);
        Predictive {
            cfg,
            threshold,
            tracker: FactorTracker::default(),
            points: Vec::new(),
            first_cap: None,
            stopped: false,
            slowness: 1.0,
            course: None,
            coarse: None,
            throttle: 0.0,
            seen: Vec::new(),
            next_keep_s: course::PROBE_EVERY_S,
        }
    }

    fn fit(&self) -> Option<Growth> {
        Growth::fit(&self.points, self.cfg.memory_bytes)
    }

    fn aim(&self, g: &Growth) -> f64 {
        self.cfg.stop_remaining / (1.0 + RESIDUAL_Z * g.residual)
    }

    /// The lowest cap that brings `remaining` to h within `rounds` under `curve` seen through
    /// a throttle that leaves the guest `keep` of its time, planned in effective bandwidth at
    /// slowness `q`.
    fn plan(&self, curve: &Scaled, keep: f64, remaining: f64, rounds: u32, q: f64) -> Planned {
        let plan = plan::lowest(
            &Dilated {
                curve: *curve,
                keep,
            },
            remaining,
            rounds,
            self.aim(&curve.growth),
            self.cfg.min_bandwidth / q,
            self.cfg.max_bandwidth / q,
        );
        self.in_caps(plan, q)
    }

    /// The rescue: the smallest throttle (at most the configured one) under which B_max
    /// converges, with the bandwidth margin on the guest's speed; the largest when none does.
    /// `None` when rescue is off.
    fn rescue(
        &self,
        curve: &Scaled,
        remaining: f64,
        rounds: u32,
        q: f64,
    ) -> Option<(f64, Planned)> {
        let max = self.cfg.max_throttle?;
        let converges = |x: f64| {
            matches!(
                self.plan(curve, 1.0 - x, remaining, rounds, q).plan,
                Plan::Converges { .. }
            )
        };
        let x = if !converges(max) {
            max
        } else {
            let (mut lo, mut hi) = (0.0, max);
            while hi - lo > THROTTLE_STEP {
                let mid = 0.5 * (lo + hi);
                if converges(mid) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            // The margin: the guest keeps B_MARGIN less of its time than the bare answer.
            (1.0 - (1.0 - hi) / B_MARGIN).min(max)
        };
        Some((x, self.plan(curve, 1.0 - x, remaining, rounds, q)))
    }

    fn in_caps(&self, plan: Plan, q: f64) -> Planned {
        match plan {
            Plan::Converges { bandwidth, .. } => Planned {
                cap: (bandwidth * q * B_MARGIN).min(self.cfg.max_bandwidth),
                effective: bandwidth,
                plan,
            },
            Plan::Infeasible { .. } => Planned {
                cap: self.cfg.max_bandwidth,
                effective: self.cfg.max_bandwidth / q,
                plan,
            },
        }
    }

    /// Mid-round re-plan: the rest of the round under way and the rounds after it.
    fn replan_mid(&self, c: &Course, p: &RoundProbe, q: f64) -> Option<(f64, Scaled)> {
        let mut points = self.points.clone();
        points.extend(self.seen.iter().copied());
        if let Some(d) = p.dirtied_bytes {
            points.push(Point {
                // In the guest's own time: a throttled guest ran `keep` of it.
                t_s: p.elapsed_s * c.keep,
                dirty_bytes: d,
                weight: ROUND_WEIGHT,
            });
        }
        let g = Growth::fit(&points, self.cfg.memory_bytes)?;
        let curve = Scaled {
            growth: g,
            bias: c.curve.bias,
        };
        let plan = plan::lowest_mid(
            &Dilated {
                curve,
                keep: c.keep,
            },
            p.elapsed_s,
            (c.to_send - p.bytes_sent).max(0.0),
            c.rounds_after,
            self.aim(&g),
            self.cfg.min_bandwidth / q,
            self.cfg.max_bandwidth / q,
        );
        Some((self.in_caps(plan, q).cap, curve))
    }
}

fn describe(c: &Scaled, q: f64) -> String {
    let g = &c.growth;
    format!(
        "growth W={:.0} B, tau={:.3} s, c={:.0} B/s, beta={:.2}, residual {:.3}; bias {:.2}, slowness {:.2}",
        g.working_set_bytes, g.tau_s, g.linear_bytes_per_s, g.exponent, g.residual, c.bias, q
    )
}

fn mib(b: f64) -> f64 {
    b / (1024.0 * 1024.0)
}

impl Policy for Predictive {
    fn name(&self) -> &'static str {
        "predictive"
    }

    fn threshold(&self) -> Option<f64> {
        Some(self.threshold)
    }

    fn first_cap(&self) -> f64 {
        self.first_cap
            .or(self.cfg.initial_bandwidth)
            .unwrap_or(self.cfg.min_bandwidth)
    }

    fn stop_copy_cap(&self) -> f64 {
        self.cfg.stop_cap()
    }

    fn observe_sample(&mut self, sample: &DirtySample) {
        let valid: Vec<(f64, f64)> = sample.valid_points().collect();
        let rate = valid.iter().map(|&(t, d)| d / t).fold(0.0, f64::max);
        // A coarse sample is read at the top of its resolution: round 1 planned on a rate one
        // step too low would be the slowest round of all.
        let step = sample
            .resolution_bytes_per_s
            .filter(|r| r.is_finite() && *r > 0.0);
        if let Some(r) = step {
            if valid.len() < 3 || r > COARSE * rate {
                self.coarse = Some(format!(
                    "round 1 was planned from a coarse sample ({} point(s), {:.1} MiB/s steps, read as {:.1} MiB/s): the first rounds' measurements correct it",
                    valid.len(),
                    mib(r),
                    mib(rate + r)
                ));
            }
        }
        self.points.extend(valid.iter().map(|&(t, d)| Point {
            t_s: t,
            dirty_bytes: (d + step.unwrap_or(0.0) * t).min(self.cfg.memory_bytes),
            weight: 1.0,
        }));
        let Some(g) = self.fit() else { return };
        let curve = Scaled {
            growth: g,
            bias: 1.0,
        };
        let m = self.cfg.memory_bytes;
        let n = self.cfg.max_rounds;
        let p = self.plan(&curve, 1.0, m, n, 1.0);
        self.first_cap = Some(p.cap);
        self.course = Some(Course::new(1, m, p.effective, curve, 1.0, n - 1));
    }

    fn throttle_applied(&mut self, share: f64) {
        // The round about to end is fitted with what the guest really lost, not what was asked
        // (QEMU applies a throttle up to two passes late).
        if self.throttle > 0.0 || share > 0.0 {
            self.throttle = share.clamp(0.0, crate::config::MAX_THROTTLE);
        }
    }

    fn during_round(&mut self, p: &RoundProbe) -> Probed {
        let Some(c) = self.course.filter(|c| c.round == p.round && !self.stopped) else {
            return Probed::default();
        };
        if p.elapsed_s < course::PROBE_EVERY_S
            || p.elapsed_s - c.checked_s < course::PROBE_EVERY_S
            || !(p.elapsed_s.is_finite() && p.bytes_sent.is_finite())
        {
            return Probed::default();
        }
        if let Some(c) = self.course.as_mut() {
            c.checked_s = p.elapsed_s;
        }
        let raise = self.check(&c, p);
        // The observation itself, at doubling times: the fit's short end in the guest's
        // current behaviour (in its own time, a throttle counted).
        let kept = match p.dirtied_bytes {
            // (A relative 1e-9 below the doubling time still counts: executors sum times
            // differently.)
            Some(d)
                if d.is_finite() && d >= 0.0 && p.elapsed_s >= self.next_keep_s * (1.0 - 1e-9) =>
            {
                self.seen.push(Point {
                    t_s: p.elapsed_s * c.keep,
                    dirty_bytes: d.min(self.cfg.memory_bytes),
                    weight: PROBE_WEIGHT,
                });
                self.next_keep_s = 2.0 * p.elapsed_s;
                true
            }
            _ => false,
        };
        Probed { raise, kept }
    }

    fn after_round(&mut self, s: &RoundStats) -> Result<Decision, StatsError> {
        self.after(s)
    }
}

impl Predictive {
    /// The mid-round check against the course: a raise when the round dirtied more, or sent
    /// less, than planned and the re-plan asks enough more.
    fn check(&mut self, c: &Course, p: &RoundProbe) -> Option<Raise> {
        let min_excess = course::PROBE_MIN_EXCESS_OF_H * self.cfg.stop_remaining;
        let expected = c.expected_by(p.elapsed_s);
        let heavier = p.dirtied_bytes.filter(|d| {
            d.is_finite()
                && *d > expected * (1.0 + course::PROBE_TOLERANCE)
                && *d - expected > min_excess
        });
        // Progress is judged since the round's start or its last raise, at the rate planned
        // since then.
        let planned_sent = c.sent_by(p.elapsed_s);
        let since_planned = planned_sent - c.mark_sent;
        let slower = p.elapsed_s - c.mark_s >= course::SLOW_CHECK_AFTER_S
            && p.bytes_sent - c.mark_sent < since_planned * (1.0 - course::PROBE_TOLERANCE)
            && p.bytes_sent < c.to_send;
        if heavier.is_none() && !slower {
            return None;
        }
        let q = if slower {
            c.slowness_since(p.elapsed_s, p.bytes_sent, p.cap_bytes_per_s)
                .unwrap_or(course::MAX_CORRECTION)
                .max(self.slowness)
        } else {
            self.slowness
        };
        let (wish, curve) = self.replan_mid(c, p, q)?;
        if wish < p.cap_bytes_per_s * course::MIN_RAISE {
            return None;
        }
        let effective = wish / q / B_MARGIN;
        let left = (c.to_send - p.bytes_sent).max(0.0);
        if let Some(c) = self.course.as_mut() {
            c.curve = curve;
            c.raised(p.elapsed_s, p.bytes_sent, wish, effective);
            c.predicted = c.seen().predict(p.elapsed_s + left / effective);
        }
        let why = match heavier {
            Some(d) => format!(
                "dirtied {:.1} MiB in {:.2} s where the plan expected {:.1} MiB",
                mib(d),
                p.elapsed_s,
                mib(expected)
            ),
            None => format!(
                "sent {:.1} MiB in {:.2} s where the plan expected {:.1} MiB",
                mib(p.bytes_sent),
                p.elapsed_s,
                mib(planned_sent)
            ),
        };
        Some(Raise {
            wish_bytes_per_s: wish,
            reason: format!("{why}: re-planned the rest of the round and the rounds left"),
        })
    }

    fn after(&mut self, s: &RoundStats) -> Result<Decision, StatsError> {
        if self.stopped {
            return Err(StatsError::AfterStop(s.round));
        }
        let f = self.tracker.push(s)?;
        let mut audit = Audit::measured(&f, s.cap_bytes_per_s, s.dirty_bytes, Some(self.threshold));
        let planned = self.course.take().filter(|c| c.round == s.round);
        audit.predicted_remaining_bytes = planned.map(|c| c.predicted);
        let mut notes: Vec<String> = Vec::new();
        if s.round == 1 {
            notes.extend(self.coarse.take());
        }
        if let Some(q) = course::slowness(s) {
            self.slowness = q;
        }
        // The fit is of the guest unthrottled: a round under a throttle that left it `keep` of
        // its time counts as that much of the guest's time.
        let keep = 1.0 - self.throttle;
        let seen = RoundStats {
            duration_s: s.duration_s * keep,
            ..*s
        };
        // A round that left more than its plan by more than the noise floor says the guest
        // changed: what came before it counts that much less.
        let changed =
            planned.is_some_and(|c| s.dirty_bytes > c.predicted * (1.0 + course::NOISE_FLOOR));
        let age = if changed { RECENCY * SURPRISE } else { RECENCY };
        for p in &mut self.points {
            p.weight *= age;
        }
        self.points.append(&mut self.seen);
        self.next_keep_s = course::PROBE_EVERY_S;
        if seen.duration_s > 0.0 {
            self.points.push(Point {
                t_s: seen.duration_s,
                dirty_bytes: s.dirty_bytes,
                weight: ROUND_WEIGHT,
            });
        }
        if let Some(reason) = termination(&self.cfg, f.round, s.dirty_bytes) {
            self.stopped = true;
            audit.note = (!notes.is_empty()).then(|| notes.join("; "));
            return Ok(Decision::stop(reason, audit));
        }
        let rounds_left = self.cfg.max_rounds - f.round;
        let Some(g) = self.fit() else {
            // No usable point (every round took no time): behave like B_max.
            notes.push("no growth estimate yet: B_max".into());
            audit.note = Some(notes.join("; "));
            return Ok(Decision::next(self.cfg.max_bandwidth, Branch::Plan, audit));
        };
        let curve = Scaled {
            growth: g,
            bias: course::bias(&g, &seen),
        };
        // A round that left more than its plan predicted: the cap does not fall.
        let floor = match planned {
            Some(c) if s.dirty_bytes > c.predicted => {
                if s.dirty_bytes > c.predicted * (1.0 + course::tolerance(RESIDUAL_Z, &g)) {
                    notes.push(format!(
                        "left {:.1} MiB where the plan predicted {:.1} MiB: re-planned from the measurement",
                        mib(s.dirty_bytes),
                        mib(c.predicted)
                    ));
                }
                // After a mid-round raise, the cap last in force, not the round's average.
                s.cap_bytes_per_s.max(c.raised_to.unwrap_or(0.0))
            }
            _ => 0.0,
        };
        let q = self.slowness;
        let mut p = self.plan(&curve, 1.0, s.dirty_bytes, rounds_left, q);
        notes.insert(0, describe(&curve, q));
        self.throttle = 0.0;
        if let Plan::Infeasible { remaining } = p.plan {
            if let Some((x, rescued)) = self.rescue(&curve, s.dirty_bytes, rounds_left, q) {
                audit.infeasible = true;
                notes.push(format!(
                    "even B_max leaves {remaining:.0} B after {rounds_left} more rounds: rescue throttles the guest by {:.1} %",
                    100.0 * x
                ));
                self.throttle = x;
                audit.throttle = Some(x);
                p = rescued;
            }
        }
        let keep = 1.0 - self.throttle;
        match p.plan {
            Plan::Converges { rounds, .. } => {
                let wish = p.cap.max(floor);
                let next = self.cfg.clamp(wish);
                audit.estimate_bytes_per_s = Some(p.cap);
                audit.clamped = next != wish;
                notes.push(format!("reaches h in {rounds} more rounds"));
                audit.note = Some(notes.join("; "));
                self.course = Some(Course::new(
                    s.round + 1,
                    s.dirty_bytes,
                    next / q / B_MARGIN,
                    curve,
                    keep,
                    rounds_left.saturating_sub(1),
                ));
                Ok(Decision::next(next, Branch::Plan, audit))
            }
            Plan::Infeasible { remaining } => {
                audit.infeasible = true;
                audit.estimate_bytes_per_s = Some(self.cfg.max_bandwidth);
                let next_left =
                    course::predicted(&Dilated { curve, keep }, s.dirty_bytes, p.effective);
                notes.push(format!(
                    "even B_max leaves {remaining:.0} B after {rounds_left} more rounds"
                ));
                audit.note = Some(notes.join("; "));
                if next_left >= s.dirty_bytes * (1.0 - MIN_PROGRESS) {
                    // Pre-copy ends: a throttle computed for rounds that will not run is
                    // never applied, and not reported as taken.
                    audit.throttle = None;
                    self.throttle = 0.0;
                    self.stopped = true;
                    return Ok(Decision::stop(StopReason::Infeasible, audit));
                }
                self.course = Some(Course::new(
                    s.round + 1,
                    s.dirty_bytes,
                    p.effective,
                    curve,
                    keep,
                    rounds_left.saturating_sub(1),
                ));
                Ok(Decision::next(self.cfg.max_bandwidth, Branch::Plan, audit))
            }
        }
    }
}
