//! The round loop: send, let the guest dirty, ask the policy, repeat; then stop-and-copy.

use livemig_policy::pilot::{Executor, Next, Pilot, PilotError, Setup as PilotSetup, Timeouts};
pub use livemig_policy::pilot::{MAX_ROUNDS, PEAK_WINDOW_S};
use livemig_policy::report::{peak_window, MigrationReport, StopCopy};
use livemig_policy::{DirtySample, Event, Policy, RoundStats};
use livemig_workload::{DirtyModel, Workload};

use crate::link::{Link, SAMPLE_POINTS};
use crate::noise::Noise;

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("the round sequence stopped")]
    Pilot(#[from] PilotError),
    #[error("round {round} has a zero transfer rate (cap {cap} bytes/s)")]
    ZeroRate { round: u32, cap: f64 },
    #[error("the migration was stepped before it started or after it ended")]
    Finished,
    #[error("the step was ended with {left} bytes still to send")]
    StepNotSent { left: f64 },
}

/// What a simulation needs besides the policy.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    pub workload: &'a Workload,
    pub model: &'a DirtyModel,
    pub link: &'a Link,
    pub memory_bytes: f64,
    pub stop_remaining: f64,
}

/// A measured dirty count: the model's, with the link's relative noise.
pub(crate) fn measured(setup: Setup<'_>, noise: &mut Noise, exact: f64) -> f64 {
    if setup.link.noise > 0.0 {
        (exact * (1.0 + setup.link.noise * noise.normal())).clamp(0.0, setup.memory_bytes)
    } else {
        exact
    }
}

/// The dirty-log sample taken during the `sample_s` seconds before the migration starts.
pub(crate) fn sample(setup: Setup<'_>, noise: &mut Noise) -> DirtySample {
    let len = setup.link.sample_s;
    let points = (1..=SAMPLE_POINTS)
        .map(|i| {
            let t = len * f64::from(i) / f64::from(SAMPLE_POINTS);
            let written = setup.workload.rate.written(-len, -len + t);
            (t, measured(setup, noise, setup.model.distinct(written)))
        })
        .collect();
    DirtySample {
        points,
        resolution_bytes_per_s: None,
    }
}

/// Seconds between mid-round checks (the policy's [`Policy::during_round`]).
pub const PROBE_S: f64 = 0.25;
/// A check due within this many seconds of the round's end is skipped: the round is over
/// (and two ways of summing the same times agree on it).
pub const PROBE_EDGE_S: f64 = 1e-6;
/// Most mid-round checks in one round (an hour of checks at [`PROBE_S`]).
pub const MAX_PROBES: f64 = 14_400.0;
pub(crate) const PROBE_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// One pre-copy round to run.
struct Round {
    round: u32,
    start: f64,
    to_send: f64,
    cap: f64,
    grant: Option<f64>,
    /// The share of its time the guest runs (1 - the rescue's throttle).
    keep: f64,
}

/// What a round did: how long it took and the time-weighted cap it ran under.
struct Ran {
    duration: f64,
    cap: f64,
}

/// Sends one round, checking with the policy every [`PROBE_S`] (the guest's distinct dirt so
/// far, as a dirty log would show it); a raise applies from that instant.
fn run_round(
    setup: Setup<'_>,
    pilot: &mut Pilot<'_>,
    noise: &mut Noise,
    r: Round,
    segments: &mut Vec<(f64, f64, f64)>,
    observer: &mut dyn FnMut(&Event),
) -> Result<Ran, SimError> {
    let mut cap = r.cap;
    let mut rate = setup.link.rate(cap);
    if !(rate > 0.0 && rate.is_finite()) {
        return Err(SimError::ZeroRate {
            round: r.round,
            cap,
        });
    }
    let (mut t, mut sent, mut area) = (r.start, 0.0, 0.0);
    // The segment at the current rate, for the wire peak: its start and bytes.
    let (mut seg_t, mut seg_bytes) = (r.start, 0.0);
    let mut k = 1.0;
    loop {
        let left = r.to_send - sent;
        let end = t + left / rate;
        let probe_at = r.start + k * PROBE_S;
        // Past MAX_PROBES checks the round ends without more (a very long round).
        if end <= probe_at + PROBE_EDGE_S || k > MAX_PROBES {
            area += cap * (end - t);
            segments.push((seg_t, end - seg_t, seg_bytes + left));
            t = end;
            break;
        }
        let dt = probe_at - t;
        sent += rate * dt;
        seg_bytes += rate * dt;
        area += cap * dt;
        t = probe_at;
        k += 1.0;
        let written = r.keep * setup.workload.rate.written(r.start, t);
        let dirtied = measured(setup, noise, setup.model.distinct(written));
        if let Some((raise, new_cap)) = pilot.probe(t, sent, Some(dirtied), r.grant) {
            observer(&Event::Raised {
                round: r.round,
                elapsed_s: t - r.start,
                wish_bytes_per_s: raise.wish_bytes_per_s,
                cap_bytes_per_s: new_cap,
                reason: raise.reason,
            });
            let new_rate = setup.link.rate(new_cap);
            if new_rate > 0.0 && new_rate.is_finite() && new_cap != cap {
                segments.push((seg_t, t - seg_t, seg_bytes));
                (seg_t, seg_bytes) = (t, 0.0);
                cap = new_cap;
                rate = new_rate;
            }
        }
    }
    let duration = t - r.start;
    Ok(Ran {
        duration,
        cap: if duration > 0.0 { area / duration } else { cap },
    })
}

/// Simulates one migration under `policy`.
pub fn simulate(policy: &mut dyn Policy, setup: Setup<'_>) -> Result<MigrationReport, SimError> {
    simulate_granted(policy, setup, None)
}

/// [`simulate`] with every cap bounded by `grant` (bytes/s), as a budget would.
pub fn simulate_granted(
    policy: &mut dyn Policy,
    setup: Setup<'_>,
    grant: Option<f64>,
) -> Result<MigrationReport, SimError> {
    simulate_observed(policy, setup, grant, &mut |_| {})
}

/// [`simulate_granted`], telling `observer` what happens as the one event type of every
/// executor (started, sampled, each round's start and record, stop-and-copy, hand-over).
pub fn simulate_observed(
    policy: &mut dyn Policy,
    setup: Setup<'_>,
    grant: Option<f64>,
    observer: &mut dyn FnMut(&Event),
) -> Result<MigrationReport, SimError> {
    let mut noise = Noise::new(setup.link.seed);
    // Mid-round counts draw from their own stream: the rounds' noise stays what it was.
    let mut probe_noise = Noise::new(setup.link.seed ^ PROBE_SEED);
    let sample = (setup.link.sample_s > 0.0).then(|| sample(setup, &mut noise));
    let mut pilot = Pilot::new(
        Box::new(policy),
        PilotSetup {
            executor: Executor::Sim,
            memory_bytes: setup.memory_bytes,
            stop_remaining: setup.stop_remaining,
            workload: Some(setup.workload.spec().to_string()),
            timeouts: Timeouts::none(),
        },
    );
    observer(&pilot.started());
    if let Some(s) = sample {
        pilot.sample(&s);
        observer(&Event::Sampled { sample: s });
    }
    let mut segments = Vec::new();
    let mut now = 0.0;
    let mut next = pilot.start(now, grant)?;
    let mut to_send = setup.memory_bytes;
    loop {
        let (round, wish, cap) = match next {
            Next::Round { round, wish, cap } => (round, wish, cap),
            Next::StopAndCopy { cap, reason, .. } => {
                observer(&Event::StopAndCopy {
                    reason,
                    bytes: to_send,
                    cap_bytes_per_s: cap,
                });
                let stop_rate = setup.link.rate(cap);
                let bytes = to_send + setup.link.state_bytes;
                let transfer = if bytes > 0.0 { bytes / stop_rate } else { 0.0 };
                segments.push((now, transfer, bytes));
                let stop = StopCopy {
                    bytes: to_send,
                    state_bytes: setup.link.state_bytes,
                    downtime_s: transfer + setup.link.resume_latency_s,
                };
                observer(&Event::HandedOver {
                    downtime_s: stop.downtime_s,
                });
                return Ok(pilot.finish(stop, peak_window(&segments, PEAK_WINDOW_S)));
            }
        };
        observer(&Event::RoundStarted {
            round,
            wish_bytes_per_s: wish,
            cap_bytes_per_s: cap,
            bytes: to_send,
        });
        // The rescue's throttle leaves the guest `keep` of its time: it writes that much less.
        let keep = 1.0 - pilot.throttle();
        let ran = run_round(
            setup,
            &mut pilot,
            &mut probe_noise,
            Round {
                round,
                start: now,
                to_send,
                cap,
                grant,
                keep,
            },
            &mut segments,
            observer,
        )?;
        let written = keep * setup.workload.rate.written(now, now + ran.duration);
        let dirty = measured(setup, &mut noise, setup.model.distinct(written));
        let stats = RoundStats {
            round,
            cap_bytes_per_s: ran.cap,
            bytes_sent: to_send,
            duration_s: ran.duration,
            dirty_bytes: dirty,
        };
        let (n, record) = pilot.end_measured(stats, grant)?;
        observer(&Event::RoundEnded {
            record: Box::new(record.clone()),
        });
        next = n;
        now += ran.duration;
        to_send = dirty;
    }
}
