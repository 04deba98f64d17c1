//! `livemig qemu bench`: boots the test guest and migrates it under every policy and QEMU's
//! defaults, for a light and a heavy workload, and compares the simulator's prediction from a
//! recorded trace with the real dirty-factor run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use livemig_policy::report::MigrationReport;
use livemig_policy::{PolicyKind, PolicySpec};
use livemig_qemu::governor::QemuReport;
use livemig_qemu::vm::GUEST_MEMORY_BYTES;
use livemig_sim::scenario::ScenarioSpec;
use livemig_sim::simulate;
use livemig_workload::units::{fmt_bytes, fmt_duration, fmt_rate};

use crate::args::{duration, resolve_spec, Runner, TimeoutArgs};
use crate::out;
use crate::qemu_runs::{bench_run, locate_image, TraceRecording};

/// `livemig qemu bench` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig qemu bench
  livemig qemu bench --policies predictive,dirty-factor,qemu-native --out qemu-bench
  livemig qemu bench --workload busy=uniform:rate=64MiB/s,buffer=96MiB --json")]
pub struct BenchArgs {
    /// Folder with vmlinuz and initramfs.cpio.gz (default: what scripts/build-guest.sh makes).
    #[arg(long)]
    pub guest_dir: Option<PathBuf>,
    /// Workloads as NAME=SPEC (the guest program's spec); default: a light and a heavy one.
    #[arg(long = "workload", value_name = "NAME=SPEC")]
    pub workloads: Vec<String>,
    /// Only these (comma-separated); default: every policy and qemu-native.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub policies: Vec<Runner>,
    /// Round limit N.
    #[arg(long, default_value_t = 8)]
    pub rounds: u32,
    /// Stop level h.
    #[arg(long, default_value = "4MiB")]
    pub stop_remaining: String,
    /// B_min.
    #[arg(long, default_value = "200Mbit/s")]
    pub min_bandwidth: String,
    /// B_max.
    #[arg(long, default_value = "2Gbit/s")]
    pub max_bandwidth: String,
    /// Length of the dirty-rate trace recorded before the dirty-factor run.
    #[arg(long, default_value = "5s")]
    pub trace: String,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    /// Print every result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep the traces, consoles and JSON here (default: a temporary folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The default bench workloads: (name, guest load spec).
pub const BENCH_WORKLOADS: [(&str, &str); 2] = [
    ("light", "uniform:rate=1MiB/s,buffer=32MiB"),
    ("heavy", "uniform:rate=32MiB/s,buffer=96MiB"),
];

/// The bench's trace measures over 1 s periods (a rate series).
const ONE_SECOND: [Duration; 1] = [Duration::from_secs(1)];

/// One bench migration's outcome.
#[derive(Debug, serde::Serialize)]
struct BenchRun {
    workload: String,
    runner: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<QemuReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Heartbeat continuity across the migration ("ok" or why not).
    heartbeat: String,
}

/// The simulator's prediction for the dirty-factor run of a workload.
#[derive(Debug, serde::Serialize)]
struct Prediction {
    workload: String,
    trace: PathBuf,
    simulated: MigrationReport,
    real: Option<MigrationReport>,
}

/// Runs `livemig qemu bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    crate::rt::runtime()?.block_on(bench(args))
}

async fn bench(args: BenchArgs) -> Result<()> {
    let image = locate_image(args.guest_dir.as_deref())?;
    let tmp = tempfile::tempdir()?;
    let out = args.out.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let workloads: Vec<(String, String)> = if args.workloads.is_empty() {
        BENCH_WORKLOADS
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect()
    } else {
        args.workloads
            .iter()
            .map(|w| match w.split_once('=') {
                Some((n, s)) => Ok((n.to_string(), s.to_string())),
                None => bail!("--workload takes NAME=SPEC, got `{w}`"),
            })
            .collect::<Result<_>>()?
    };
    let runners: Vec<Runner> = if args.policies.is_empty() {
        PolicyKind::ALL
            .iter()
            .map(|k| Runner::Policy(*k))
            .chain([Runner::Native])
            .collect()
    } else {
        args.policies.clone()
    };
    let settings = PolicySpec {
        rounds: Some(args.rounds),
        stop_remaining: Some(args.stop_remaining.clone()),
        min_bandwidth: Some(args.min_bandwidth.clone()),
        max_bandwidth: Some(args.max_bandwidth.clone()),
        ..PolicySpec::default()
    };
    let cfg = resolve_spec(&settings, GUEST_MEMORY_BYTES)?;
    let trace_len = duration("trace", &args.trace)?;
    let timeouts = args.timeouts.timeouts()?;
    let mut runs = Vec::new();
    let mut predictions = Vec::new();
    for (wname, load) in &workloads {
        for &runner in &runners {
            out::note(&format!("[{wname}] {} ...", runner.name()));
            let dir = out.join(format!("{wname}-{}", runner.name()));
            std::fs::create_dir_all(&dir)?;
            let trace = (runner == Runner::Policy(PolicyKind::DirtyFactor)
                && trace_len >= Duration::from_secs(1))
            .then(|| dir.join("trace.csv"));
            let crate::qemu_runs::BenchRun {
                result: run,
                heartbeat: hb,
                ..
            } = bench_run(
                &image,
                load,
                &dir,
                runner,
                &cfg,
                timeouts,
                trace.as_deref().map(|path| TraceRecording {
                    path,
                    periods: &ONE_SECOND,
                    length: trace_len,
                }),
            )
            .await;
            let (result, error) = match run {
                Ok(r) => (Some(r), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            if let (Some(t), Some(r)) = (&trace, &result) {
                match predict(t, r, &settings) {
                    Ok(sim) => predictions.push(Prediction {
                        workload: wname.clone(),
                        trace: t.clone(),
                        simulated: sim,
                        real: Some(r.report.clone()),
                    }),
                    Err(e) => out::note(&format!("[{wname}] no prediction: {e:#}")),
                }
            }
            runs.push(BenchRun {
                workload: wname.clone(),
                runner: runner.name().to_string(),
                result,
                error,
                heartbeat: hb,
            });
        }
    }
    let json = serde_json::json!({"runs": runs, "predictions": predictions});
    std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(&json)?)?;
    if args.json {
        out::emit_line(&serde_json::to_string_pretty(&json)?)?;
        return Ok(());
    }
    let mut text = String::new();
    for (wname, load) in &workloads {
        let _ = writeln!(
            text,
            "\n## {wname}: `{load}`, guest {}",
            fmt_bytes(GUEST_MEMORY_BYTES)
        );
        let _ = writeln!(
            text,
            "{}",
            bench_table(runs.iter().filter(|r| &r.workload == wname))
        );
        for p in predictions.iter().filter(|p| &p.workload == wname) {
            let _ = writeln!(text, "{}", prediction_table(p));
        }
    }
    let _ = writeln!(
        text,
        "\nN = {}, h = {}, B_min = {}, B_max = {}; outputs in {}",
        cfg.max_rounds,
        fmt_bytes(cfg.stop_remaining),
        fmt_rate(cfg.min_bandwidth),
        fmt_rate(cfg.max_bandwidth),
        out.display()
    );
    if args.out.is_none() {
        let _ = writeln!(text, "(temporary: pass --out DIR to keep them)");
    }
    out::emit(&text)?;
    Ok(())
}

/// Replays the recorded trace in the simulator with the dirty-factor policy. The simulated
/// memory is what QEMU really sent in round 1 (zero pages travel as markers), and T is the
/// real run's, so both decide by the same rule.
fn predict(trace: &Path, real: &QemuReport, settings: &PolicySpec) -> Result<MigrationReport> {
    let m_eff = real
        .report
        .rounds
        .first()
        .map(|r| r.bytes_sent)
        .context("the real run has no round")?;
    let mut spec = ScenarioSpec {
        name: "prediction".into(),
        memory: format!("{m_eff}"),
        workload: format!("trace:file={}", trace.display()),
        ..ScenarioSpec::default()
    };
    spec.policy = settings.clone();
    spec.policy.threshold = real.report.threshold;
    let scenario = spec.resolve(None)?;
    let mut policy = PolicyKind::DirtyFactor.build(scenario.cfg.clone())?;
    Ok(simulate(policy.as_mut(), scenario.setup())?)
}

fn bench_table<'a>(runs: impl Iterator<Item = &'a BenchRun>) -> String {
    let mut s = format!(
        "{:<13} {:>6} {:>9} {:>9} {:>11} {:>12} {:>12} {:>6} {:>20} {:>16} {}\n",
        "policy",
        "rounds",
        "total",
        "downtime",
        "bytes",
        "peak cap",
        "peak wire",
        "conv",
        "stop",
        "reaction avg/max",
        "heartbeat"
    );
    for r in runs {
        match &r.result {
            Some(q) => {
                let x = &q.report.summary;
                let react = match (q.qemu.reaction_mean_s, q.qemu.reaction_max_s) {
                    (Some(a), Some(m)) => format!("{:.1}/{:.1} ms", a * 1e3, m * 1e3),
                    _ => "-".into(),
                };
                let peak_cap = if q.report.policy == "qemu-native" {
                    format!("{} (qemu)", fmt_rate(x.peak_cap_bytes_per_s))
                } else {
                    fmt_rate(x.peak_cap_bytes_per_s)
                };
                let _ = writeln!(
                    s,
                    "{:<13} {:>6} {:>9} {:>9} {:>11} {:>12} {:>12} {:>6} {:>20} {:>16} {}",
                    r.runner,
                    x.rounds,
                    fmt_duration(x.total_time_s),
                    fmt_duration(x.downtime_s),
                    fmt_bytes(x.total_bytes),
                    peak_cap,
                    fmt_rate(x.peak_bytes_per_s),
                    if x.converged { "yes" } else { "no" },
                    x.stop_reason.label(),
                    react,
                    r.heartbeat
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "{:<13} failed: {}",
                    r.runner,
                    r.error.as_deref().unwrap_or("?")
                );
            }
        }
    }
    s
}

fn prediction_table(p: &Prediction) -> String {
    let mut s = String::from("dirty-factor, simulator (recorded trace) vs real:\n");
    let _ = writeln!(
        s,
        "{:<10} {:>6} {:>9} {:>9} {:>11} {:>12}",
        "", "rounds", "total", "downtime", "bytes", "peak cap"
    );
    let mut row = |name: &str, r: &MigrationReport| {
        let x = &r.summary;
        let _ = writeln!(
            s,
            "{:<10} {:>6} {:>9} {:>9} {:>11} {:>12}",
            name,
            x.rounds,
            fmt_duration(x.total_time_s),
            fmt_duration(x.downtime_s),
            fmt_bytes(x.total_bytes),
            fmt_rate(x.peak_cap_bytes_per_s)
        );
    };
    row("simulated", &p.simulated);
    if let Some(r) = &p.real {
        row("real", r);
    }
    let _ = write!(s, "trace: {}", p.trace.display());
    s
}
