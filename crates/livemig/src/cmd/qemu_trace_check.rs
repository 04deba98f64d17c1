//! `livemig qemu trace-check`: how well the simulator predicts a real guest from its recorded
//! working-set trace. For each workload a fresh source records the trace, then migrates for
//! real under a policy; the simulator replays the trace with the same policy and settings,
//! and the real and predicted bytes and times are printed side by side with their ratios
//! (the curve replay, and for comparison the shortest period's dirty rate replayed as a write
//! rate with a uniform and a scan pattern: what a one-period trace gave before).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use livemig_policy::report::MigrationReport;
use livemig_policy::{PolicyKind, PolicySpec};
use livemig_qemu::vm::GUEST_MEMORY_BYTES;
use livemig_sim::scenario::ScenarioSpec;
use livemig_sim::simulate;
use livemig_workload::units::{fmt_bytes, fmt_duration};
use serde::Serialize;

use crate::args::{duration, resolve_spec, trace_periods, Runner, TimeoutArgs};
use crate::out;
use crate::qemu_runs::{bench_run, locate_image, TraceRecording};

/// `livemig qemu trace-check` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig qemu trace-check --workload sweep=scan:rate=64MiB/s,buffer=160MiB
  livemig qemu trace-check --workload hot=hotcold:rate=48MiB/s,buffer=128MiB,hot=25%,share=90% --policy predictive
  livemig qemu trace-check --workload sweep=scan:rate=64MiB/s,buffer=160MiB --periods 1s,2s,4s,8s --trace 30s --json

The simulated memory is what QEMU sent in round 1 of the real run (zero pages travel as
markers) and T is the real run's, as in `livemig qemu bench`. A prediction is within the
issue's target when both ratios (predicted / real) lie between 0.75 and 1.25.")]
pub struct TraceCheckArgs {
    /// Folder with vmlinuz and initramfs.cpio.gz (default: what scripts/build-guest.sh makes).
    #[arg(long)]
    pub guest_dir: Option<PathBuf>,
    /// Workloads as NAME=SPEC (the guest program's spec); one check each.
    #[arg(long = "workload", value_name = "NAME=SPEC", required = true)]
    pub workloads: Vec<String>,
    /// The policy of the real run and of its prediction.
    #[arg(long, value_enum, default_value_t = Runner::Policy(PolicyKind::DirtyFactor))]
    pub policy: Runner,
    /// The measurement periods of the working-set trace (comma-separated whole seconds).
    #[arg(long, value_delimiter = ',', default_value = "1s,2s,4s,8s,16s")]
    pub periods: Vec<String>,
    /// How long to record (at least one measurement of each period).
    #[arg(long, default_value = "31s")]
    pub trace: String,
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
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep the traces, consoles and JSON here (default: a temporary folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One replay's prediction against the real run.
#[derive(Debug, Serialize)]
struct Predicted {
    replay: String,
    total_bytes: f64,
    total_time_s: f64,
    rounds: u32,
    converged: bool,
    bytes_ratio: f64,
    time_ratio: f64,
}

/// One workload's check.
#[derive(Debug, Serialize)]
struct Check {
    workload: String,
    spec: String,
    policy: String,
    trace: PathBuf,
    /// The measured curve: (period s, distinct bytes).
    curve: Vec<(f64, f64)>,
    /// The simulated memory (the real run's round 1 bytes).
    memory_bytes: f64,
    real: MigrationReport,
    /// The real rounds' mean slowness, cap x duration / bytes (1 = at the cap).
    real_slowness: Option<f64>,
    predicted: Vec<Predicted>,
    heartbeat: String,
}

/// Runs `livemig qemu trace-check`.
pub fn run(args: TraceCheckArgs) -> Result<()> {
    crate::rt::runtime()?.block_on(check_all(args))
}

async fn check_all(args: TraceCheckArgs) -> Result<()> {
    let Runner::Policy(kind) = args.policy else {
        bail!(
            "--policy {} has no simulated counterpart; pick a policy",
            args.policy.name()
        );
    };
    let image = locate_image(args.guest_dir.as_deref())?;
    let tmp = tempfile::tempdir()?;
    let out_dir = args.out.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let settings = PolicySpec {
        rounds: Some(args.rounds),
        stop_remaining: Some(args.stop_remaining.clone()),
        min_bandwidth: Some(args.min_bandwidth.clone()),
        max_bandwidth: Some(args.max_bandwidth.clone()),
        ..PolicySpec::default()
    };
    let cfg = resolve_spec(&settings, GUEST_MEMORY_BYTES)?;
    let periods = trace_periods("1s", &args.periods)?;
    let length = duration("trace", &args.trace)?;
    let timeouts = args.timeouts.timeouts()?;
    let mut checks = Vec::new();
    for w in &args.workloads {
        let Some((name, spec)) = w.split_once('=') else {
            bail!("--workload takes NAME=SPEC, got `{w}`");
        };
        let dir = out_dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let trace = dir.join("trace.csv");
        out::note(&format!(
            "[{name}] recording {} of working set, then {} for real ...",
            fmt_duration(length.as_secs_f64()),
            args.policy.name()
        ));
        let recording = TraceRecording {
            path: &trace,
            periods: &periods,
            length,
        };
        let crate::qemu_runs::BenchRun {
            result: run,
            heartbeat,
            ..
        } = bench_run(
            &image,
            spec,
            &dir,
            args.policy,
            &cfg,
            timeouts,
            Some(recording),
        )
        .await;
        let real = match run {
            Ok(r) => r.report,
            Err(e) => {
                out::note(&format!("[{name}] failed: {e:#}"));
                continue;
            }
        };
        let check = predict(name, spec, kind, &trace, real, &settings, heartbeat)
            .with_context(|| format!("[{name}] prediction"))?;
        checks.push(check);
    }
    let json = serde_json::to_string_pretty(&checks)?;
    std::fs::write(out_dir.join("trace-check.json"), &json)?;
    if args.json {
        return Ok(out::emit_line(&json)?);
    }
    let mut text = table(&checks);
    let _ = writeln!(
        text,
        "\nN = {}, h = {}, B_min = {}, B_max = {}; outputs in {}",
        cfg.max_rounds,
        fmt_bytes(cfg.stop_remaining),
        livemig_workload::units::fmt_rate(cfg.min_bandwidth),
        livemig_workload::units::fmt_rate(cfg.max_bandwidth),
        out_dir.display()
    );
    out::emit(&text)?;
    Ok(())
}

/// Replays the trace every way under `kind` with the real run's round-1 bytes as memory and
/// its threshold, and scores each replay against the real run.
fn predict(
    name: &str,
    spec: &str,
    kind: PolicyKind,
    trace: &Path,
    real: MigrationReport,
    settings: &PolicySpec,
    heartbeat: String,
) -> Result<Check> {
    let m_eff = real
        .rounds
        .first()
        .map(|r| r.bytes_sent)
        .context("the real run has no round")?;
    let recorded = livemig_workload::trace::read_trace(trace)?;
    let curve = recorded
        .working_set(1.0)
        .context("the trace has no periods")??;
    let rate = curve.initial_rate();
    let replays = [
        ("curve", format!("trace:file={}", trace.display())),
        ("rate, uniform", format!("uniform:rate={rate}")),
        ("rate, scan", format!("scan:rate={rate}")),
    ];
    let mut predicted = Vec::new();
    for (replay, workload) in replays {
        let mut s = ScenarioSpec {
            name: format!("{name}, {replay}"),
            memory: format!("{m_eff}"),
            workload,
            ..ScenarioSpec::default()
        };
        s.policy = settings.clone();
        s.policy.threshold = real.threshold;
        let scenario = s.resolve(None)?;
        let mut policy = kind.build(scenario.cfg.clone())?;
        let sim = simulate(policy.as_mut(), scenario.setup())?;
        let (p, r) = (&sim.summary, &real.summary);
        predicted.push(Predicted {
            replay: replay.to_string(),
            total_bytes: p.total_bytes,
            total_time_s: p.total_time_s,
            rounds: p.rounds,
            converged: p.converged,
            bytes_ratio: p.total_bytes / r.total_bytes,
            time_ratio: p.total_time_s / r.total_time_s,
        });
    }
    let slow: Vec<f64> = real
        .rounds
        .iter()
        .filter(|r| r.duration_s >= 0.1 && r.bytes_sent > 0.0)
        .map(|r| r.cap_bytes_per_s * r.duration_s / r.bytes_sent)
        .collect();
    Ok(Check {
        workload: name.to_string(),
        spec: spec.to_string(),
        policy: real.policy.clone(),
        trace: trace.to_path_buf(),
        curve: curve.points().to_vec(),
        memory_bytes: m_eff,
        real_slowness: (!slow.is_empty()).then(|| slow.iter().sum::<f64>() / slow.len() as f64),
        real,
        predicted,
        heartbeat,
    })
}

fn table(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let _ = writeln!(s, "\n## {}: `{}`, {}", c.workload, c.spec, c.policy);
        let curve: Vec<String> = c
            .curve
            .iter()
            .map(|(t, w)| format!("{t} s: {}", fmt_bytes(*w)))
            .collect();
        let _ = writeln!(s, "working set: {}", curve.join(", "));
        let _ = writeln!(
            s,
            "{:<15} {:>6} {:>5} {:>11} {:>9} {:>7} {:>7}",
            "", "rounds", "conv", "bytes", "total", "bytes×", "time×"
        );
        let r = &c.real.summary;
        let _ = writeln!(
            s,
            "{:<15} {:>6} {:>5} {:>11} {:>9}",
            "real",
            r.rounds,
            if r.converged { "yes" } else { "no" },
            fmt_bytes(r.total_bytes),
            fmt_duration(r.total_time_s)
        );
        for p in &c.predicted {
            let _ = writeln!(
                s,
                "{:<15} {:>6} {:>5} {:>11} {:>9} {:>6.2}x {:>6.2}x",
                p.replay,
                p.rounds,
                if p.converged { "yes" } else { "no" },
                fmt_bytes(p.total_bytes),
                fmt_duration(p.total_time_s),
                p.bytes_ratio,
                p.time_ratio
            );
        }
        let _ = writeln!(
            s,
            "simulated memory {} (real round 1); real rounds ran {} their cap; heartbeat {}",
            fmt_bytes(c.memory_bytes),
            c.real_slowness
                .map_or("-".into(), |q| format!("{q:.2}x slower than")),
            c.heartbeat
        );
    }
    s
}
