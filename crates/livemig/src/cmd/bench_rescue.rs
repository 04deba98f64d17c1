//! `livemig bench-rescue`: a guest that dirties faster than B_max, migrated on loopback by the
//! engine three ways at the same bandwidth: `predictive` with its rescue (the throttle computed
//! from the estimate), a constant cap with QEMU's auto-converge rule (20 % after two passes
//! that dirtied more than half of what they sent, then +10 % each time), and a constant cap
//! alone. It reports whether each converged, its downtime, and how much the guest was slowed:
//! its own progress (page writes) during the migration against what it does unthrottled, and
//! that loss in seconds of the guest's work. QEMU's auto-converge has no round limit: its way
//! gets [`AUTO_CONVERGE_ROUNDS`] rounds.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use livemig_engine::{InitialContent, SenderConfig, SimGuest, SimGuestConfig};
use livemig_policy::report::MigrationReport;
use livemig_policy::stats::StatsError;
use livemig_policy::{Decision, Policy, PolicyConfig, PolicyKind, RoundStats};
use livemig_workload::units::{self, fmt_bytes, fmt_duration, fmt_rate};
use serde::Serialize;

use crate::out;

/// `livemig bench-rescue` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig bench-rescue
  livemig bench-rescue --workload uniform:rate=400MiB/s --bandwidth 100MiB/s --json

The guest (random memory, its workload's writes) runs 0.5 s unmigrated to measure its own
speed, then is migrated three ways; each way starts from a fresh guest in the same state.")]
pub struct Args {
    /// Guest memory.
    #[arg(long, default_value = "256MiB")]
    pub memory: String,
    /// The guest's workload: faster than --bandwidth, so no constant cap converges.
    #[arg(long, default_value = "uniform:rate=200MiB/s")]
    pub workload: String,
    /// B_max: the bandwidth every way gets.
    #[arg(long, default_value = "64MiB/s")]
    pub bandwidth: String,
    /// Round limit N.
    #[arg(long, default_value_t = 10)]
    pub rounds: u32,
    /// Stop level h.
    #[arg(long, default_value = "8MiB")]
    pub stop_remaining: String,
    /// The most of the guest's CPU `predictive`'s rescue may take.
    #[arg(long, default_value_t = 0.95)]
    pub max_throttle: f64,
    /// The operator's downtime target, reported against.
    #[arg(long, default_value = "300ms")]
    pub downtime_target: String,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

const TIMEOUT: Duration = Duration::from_secs(30);
/// Rounds allowed to the auto-converge way (QEMU itself has no limit).
pub const AUTO_CONVERGE_ROUNDS: u32 = 40;

/// QEMU's auto-converge rule on top of a constant cap: at a round's end (a dirty-bitmap sync),
/// a round that dirtied more than half of what it sent counts as high; the second high one in
/// a row throttles the guest, 20 % at first and 10 % more each time after, up to 99 %.
#[derive(Debug)]
struct AutoConverge {
    inner: Box<dyn Policy>,
    high: u32,
    throttle: f64,
}

impl Policy for AutoConverge {
    fn name(&self) -> &'static str {
        "auto-converge"
    }
    fn threshold(&self) -> Option<f64> {
        self.inner.threshold()
    }
    fn first_cap(&self) -> f64 {
        self.inner.first_cap()
    }
    fn stop_copy_cap(&self) -> f64 {
        self.inner.stop_copy_cap()
    }
    fn after_round(&mut self, s: &RoundStats) -> Result<Decision, StatsError> {
        let mut d = self.inner.after_round(s)?;
        if s.dirty_bytes > 0.5 * s.bytes_sent {
            self.high += 1;
            if self.high >= 2 {
                self.throttle = if self.throttle == 0.0 {
                    0.2
                } else {
                    (self.throttle + 0.1).min(0.99)
                };
                self.high = 0;
            }
        } else {
            self.high = 0;
        }
        d.audit.throttle = (self.throttle > 0.0).then_some(self.throttle);
        Ok(d)
    }
}

/// One way's result.
#[derive(Debug, Serialize)]
struct Way {
    way: String,
    converged: bool,
    rounds: u32,
    total_time_s: f64,
    downtime_s: f64,
    max_throttle: f64,
    /// 1 - the guest's page writes during the migration over what it writes unthrottled in
    /// that time.
    slowdown: f64,
    /// The guest's work lost: slowdown x the time it ran during the migration (seconds).
    lost_s: f64,
    report: MigrationReport,
}

/// Runs `livemig bench-rescue`.
pub fn run(args: Args) -> Result<()> {
    let memory = units::parse_size(&args.memory).context("--memory")? as u64;
    let bandwidth = units::parse_rate_with_unit(&args.bandwidth).context("--bandwidth")?;
    let h = units::parse_size(&args.stop_remaining).context("--stop-remaining")?;
    let target =
        units::parse_duration_with_unit(&args.downtime_target).context("--downtime-target")?;
    let cfg = PolicyConfig {
        memory_bytes: memory as f64,
        max_rounds: args.rounds,
        stop_remaining: h,
        min_bandwidth: (bandwidth / 16.0).min(PolicyConfig::default().min_bandwidth),
        max_bandwidth: bandwidth,
        fixed_bandwidth: Some(bandwidth),
        ..PolicyConfig::default()
    };
    cfg.validate()?;
    let guest_cfg = SimGuestConfig {
        memory_bytes: memory,
        workload: args.workload.clone(),
        content: InitialContent::Random,
        seed: 7,
    };
    let rescue = PolicyConfig {
        max_throttle: Some(args.max_throttle),
        ..cfg.clone()
    };
    rescue.validate()?;
    let mut ways = Vec::new();
    for way in ["predictive + rescue", "fixed + auto-converge", "fixed"] {
        out::note(&format!("{way} ..."));
        let policy: Box<dyn Policy> = match way {
            "predictive + rescue" => PolicyKind::Predictive.build(rescue.clone())?,
            "fixed + auto-converge" => Box::new(AutoConverge {
                inner: PolicyKind::Fixed.build(PolicyConfig {
                    max_rounds: AUTO_CONVERGE_ROUNDS,
                    ..cfg.clone()
                })?,
                high: 0,
                throttle: 0.0,
            }),
            _ => PolicyKind::Fixed.build(cfg.clone())?,
        };
        ways.push(one_way(way, &guest_cfg, policy, h)?);
    }
    if args.json {
        out::emit_line(&serde_json::to_string_pretty(&ways)?)?;
        return Ok(());
    }
    let mut s = format!(
        "{} guest, `{}`, B_max {} for every way; downtime target {}\n",
        fmt_bytes(memory as f64),
        args.workload,
        fmt_rate(bandwidth),
        fmt_duration(target)
    );
    s.push_str(&format!(
        "{:<22} {:>5} {:>6} {:>9} {:>9} {:>7} {:>13} {:>9} {:>10}\n",
        "way",
        "conv",
        "rounds",
        "total",
        "downtime",
        "<= tgt",
        "max throttle",
        "slowdown",
        "work lost"
    ));
    for w in &ways {
        s.push_str(&format!(
            "{:<22} {:>5} {:>6} {:>9} {:>9} {:>7} {:>12.0}% {:>8.1}% {:>10}\n",
            w.way,
            if w.converged { "yes" } else { "no" },
            w.rounds,
            fmt_duration(w.total_time_s),
            fmt_duration(w.downtime_s),
            if w.downtime_s <= target { "yes" } else { "no" },
            100.0 * w.max_throttle,
            100.0 * w.slowdown,
            fmt_duration(w.lost_s)
        ));
    }
    out::emit(&s)?;
    Ok(())
}

/// A fresh guest: its own speed over 0.5 s, then one migration under `policy`.
fn one_way(
    way: &str,
    guest_cfg: &SimGuestConfig,
    mut policy: Box<dyn Policy>,
    h: f64,
) -> Result<Way> {
    let guest = SimGuest::start(guest_cfg, u64::MAX)?;
    let (w0, _) = guest.self_check();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let (w1, _) = guest.self_check();
    let speed = (w1 - w0) as f64 / t0.elapsed().as_secs_f64();
    let send_cfg = SenderConfig {
        stop_remaining: h,
        timeout: TIMEOUT,
        max_pause: TIMEOUT * 2,
        resolve_timeout: TIMEOUT * 2,
        ..SenderConfig::default()
    };
    let (w2, _) = guest.self_check();
    let started = Instant::now();
    let report = crate::loopback::migrate(&guest, policy.as_mut(), &send_cfg, TIMEOUT)?;
    // The source is paused for good: its counter stopped at the pause.
    let (w3, _) = guest.self_check();
    let ran = started.elapsed().as_secs_f64() - report.summary.downtime_s;
    let expected = speed * ran.max(1e-9);
    let s = &report.summary;
    Ok(Way {
        way: way.to_string(),
        converged: s.converged,
        rounds: s.rounds,
        total_time_s: s.total_time_s,
        downtime_s: s.downtime_s,
        max_throttle: report
            .rounds
            .iter()
            .filter_map(|r| r.decision.audit.throttle)
            .fold(0.0, f64::max),
        slowdown: (1.0 - (w3 - w2) as f64 / expected).clamp(0.0, 1.0),
        lost_s: (1.0 - (w3 - w2) as f64 / expected).clamp(0.0, 1.0) * ran,
        report,
    })
}
