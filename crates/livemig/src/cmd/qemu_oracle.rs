//! `livemig qemu oracle`: the lowest constant cap that converges for a real guest, found by
//! bisection over real migrations of it (each a fresh guest booted in the same state), and the
//! policies scored against it as the simulator scores them: peak cap and total time over the
//! oracle's.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Result};
use livemig_policy::{PolicyConfig, PolicyKind, PolicySpec, Timeouts};
use livemig_qemu::governor::QemuReport;
use livemig_qemu::vm::{GuestImage, GUEST_MEMORY_BYTES};
use livemig_workload::units::{fmt_duration, fmt_rate};
use serde::Serialize;

use crate::args::{resolve_spec, Runner, TimeoutArgs};
use crate::out;
use crate::qemu_runs::{bench_one, locate_image};

/// `livemig qemu oracle` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig qemu oracle --workload sweep=scan:rate=64MiB/s,buffer=160MiB
  livemig qemu oracle --workload hot=hotcold:rate=48MiB/s,buffer=128MiB,hot=25%,share=90% --runs 6
  livemig qemu oracle --workload sweep=scan:rate=64MiB/s,buffer=160MiB --json")]
pub struct OracleArgs {
    /// Folder with vmlinuz and initramfs.cpio.gz (default: what scripts/build-guest.sh makes).
    #[arg(long)]
    pub guest_dir: Option<PathBuf>,
    /// Workloads as NAME=SPEC (the guest program's spec); one oracle each.
    #[arg(long = "workload", value_name = "NAME=SPEC", required = true)]
    pub workloads: Vec<String>,
    /// Bisection steps after the run at B_max (each a real migration of a fresh guest).
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
    /// The policies scored against the oracle (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "predictive")]
    pub policies: Vec<Runner>,
    /// Round limit N.
    #[arg(long, default_value_t = 10)]
    pub rounds: u32,
    /// Stop level h.
    #[arg(long, default_value = "16MiB")]
    pub stop_remaining: String,
    /// B_min, the lowest cap tried.
    #[arg(long, default_value = "100Mbit/s")]
    pub min_bandwidth: String,
    /// B_max, the highest cap tried.
    #[arg(long, default_value = "2Gbit/s")]
    pub max_bandwidth: String,
    /// `predictive`'s rescue (see `livemig qemu migrate --help`).
    #[arg(long, value_name = "FRACTION")]
    pub max_throttle: Option<f64>,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep the consoles and JSON here (default: a temporary folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One real run at a constant cap.
#[derive(Debug, Serialize)]
struct Probe {
    cap_bytes_per_s: f64,
    converged: bool,
    total_time_s: f64,
}

/// A policy's run scored against the oracle.
#[derive(Debug, Serialize)]
struct Scored {
    policy: String,
    converged: bool,
    peak_cap_bytes_per_s: f64,
    total_time_s: f64,
    downtime_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_throttle: Option<f64>,
    cap_ratio: Option<f64>,
    time_ratio: Option<f64>,
    heartbeat: String,
}

/// One workload's oracle and scores.
#[derive(Debug, Serialize)]
struct OracleResult {
    workload: String,
    spec: String,
    /// The lowest converging cap found, and its run's total time; `None` when not even B_max
    /// converges.
    oracle_bytes_per_s: Option<f64>,
    oracle_total_time_s: Option<f64>,
    probes: Vec<Probe>,
    scored: Vec<Scored>,
}

/// Runs `livemig qemu oracle`.
pub fn run(args: OracleArgs) -> Result<()> {
    crate::rt::runtime()?.block_on(oracle(args))
}

fn settings(args: &OracleArgs) -> PolicySpec {
    PolicySpec {
        rounds: Some(args.rounds),
        stop_remaining: Some(args.stop_remaining.clone()),
        min_bandwidth: Some(args.min_bandwidth.clone()),
        max_bandwidth: Some(args.max_bandwidth.clone()),
        max_throttle: args.max_throttle,
        ..PolicySpec::default()
    }
}

async fn oracle(args: OracleArgs) -> Result<()> {
    let image = locate_image(args.guest_dir.as_deref())?;
    let tmp = tempfile::tempdir()?;
    let out_dir = args.out.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&out_dir)?;
    let cfg = resolve_spec(&settings(&args), GUEST_MEMORY_BYTES)?;
    let timeouts = args.timeouts.timeouts()?;
    let mut results = Vec::new();
    for w in &args.workloads {
        let Some((name, spec)) = w.split_once('=') else {
            bail!("--workload takes NAME=SPEC, got `{w}`");
        };
        let mut probes = Vec::new();
        let mut n = 0;
        let mut at = |cap: f64| {
            n += 1;
            Fixed {
                image: &image,
                spec,
                dir: out_dir.join(format!("{name}-fixed-{n}")),
                cfg: PolicyConfig {
                    fixed_bandwidth: Some(cap),
                    ..cfg.clone()
                },
                timeouts,
            }
        };
        let (hi_ok, hi_time) = at(cfg.max_bandwidth).run(name).await?;
        probes.push(Probe {
            cap_bytes_per_s: cfg.max_bandwidth,
            converged: hi_ok,
            total_time_s: hi_time,
        });
        let mut best = hi_ok.then_some((cfg.max_bandwidth, hi_time));
        if hi_ok {
            let (mut lo, mut hi) = (cfg.min_bandwidth, cfg.max_bandwidth);
            for _ in 0..args.runs {
                let mid = (lo * hi).sqrt();
                let (ok, t) = at(mid).run(name).await?;
                probes.push(Probe {
                    cap_bytes_per_s: mid,
                    converged: ok,
                    total_time_s: t,
                });
                if ok {
                    hi = mid;
                    best = Some((mid, t));
                } else {
                    lo = mid;
                }
            }
        }
        let mut scored = Vec::new();
        for &runner in &args.policies {
            let dir = out_dir.join(format!("{name}-{}", runner.name()));
            std::fs::create_dir_all(&dir)?;
            out::note(&format!("[{name}] {} ...", runner.name()));
            let (run, hb) = bench_one(&image, spec, &dir, runner, &cfg, timeouts, None).await;
            match run {
                Ok(r) => scored.push(score(runner, &r, best, hb)),
                Err(e) => out::note(&format!("[{name}] {} failed: {e:#}", runner.name())),
            }
        }
        results.push(OracleResult {
            workload: name.to_string(),
            spec: spec.to_string(),
            oracle_bytes_per_s: best.map(|b| b.0),
            oracle_total_time_s: best.map(|b| b.1),
            probes,
            scored,
        });
    }
    let json = serde_json::to_string_pretty(&results)?;
    std::fs::write(out_dir.join("oracle.json"), &json)?;
    if args.json {
        out::emit_line(&json)?;
        return Ok(());
    }
    out::emit(&table(&results))?;
    Ok(())
}

/// One real migration at a constant cap: a fresh guest under `fixed`.
struct Fixed<'a> {
    image: &'a GuestImage,
    spec: &'a str,
    dir: PathBuf,
    cfg: PolicyConfig,
    timeouts: Timeouts,
}

impl Fixed<'_> {
    /// Whether it converged, and its total time.
    async fn run(self, name: &str) -> Result<(bool, f64)> {
        std::fs::create_dir_all(&self.dir)?;
        let cap = self.cfg.fixed_bandwidth.unwrap_or(self.cfg.max_bandwidth);
        out::note(&format!("[{name}] fixed at {} ...", fmt_rate(cap)));
        let (run, _) = bench_one(
            self.image,
            self.spec,
            &self.dir,
            Runner::Policy(PolicyKind::Fixed),
            &self.cfg,
            self.timeouts,
            None,
        )
        .await;
        let r = run?;
        Ok((r.report.summary.converged, r.report.summary.total_time_s))
    }
}

fn score(runner: Runner, r: &QemuReport, best: Option<(f64, f64)>, heartbeat: String) -> Scored {
    let s = &r.report.summary;
    let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    Scored {
        policy: runner.name().to_string(),
        converged: s.converged,
        peak_cap_bytes_per_s: s.peak_cap_bytes_per_s,
        total_time_s: s.total_time_s,
        downtime_s: s.downtime_s,
        max_throttle: s.max_throttle,
        cap_ratio: best.and_then(|(b, _)| ratio(s.peak_cap_bytes_per_s, b)),
        time_ratio: best.and_then(|(_, t)| ratio(s.total_time_s, t)),
        heartbeat,
    }
}

fn table(results: &[OracleResult]) -> String {
    let mut s = String::new();
    for r in results {
        let _ = writeln!(s, "\n## {}: `{}`", r.workload, r.spec);
        match (r.oracle_bytes_per_s, r.oracle_total_time_s) {
            (Some(b), Some(t)) => {
                let _ = writeln!(
                    s,
                    "oracle: {} (total {}) after {} real runs",
                    fmt_rate(b),
                    fmt_duration(t),
                    r.probes.len()
                );
            }
            _ => {
                let _ = writeln!(s, "oracle: no constant cap up to B_max converges");
            }
        }
        let _ = writeln!(
            s,
            "{:<13} {:>5} {:>13} {:>9} {:>9} {:>9} {:>10} {:>10} heartbeat",
            "policy", "conv", "peak cap", "total", "downtime", "throttle", "cap/orc", "time/orc"
        );
        for x in &r.scored {
            let ratio = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}x"));
            let _ = writeln!(
                s,
                "{:<13} {:>5} {:>13} {:>9} {:>9} {:>9} {:>10} {:>10} {}",
                x.policy,
                if x.converged { "yes" } else { "no" },
                fmt_rate(x.peak_cap_bytes_per_s),
                fmt_duration(x.total_time_s),
                fmt_duration(x.downtime_s),
                x.max_throttle
                    .map_or("-".to_string(), |t| format!("{:.0} %", 100.0 * t)),
                ratio(x.cap_ratio),
                ratio(x.time_ratio),
                x.heartbeat
            );
        }
    }
    s
}
