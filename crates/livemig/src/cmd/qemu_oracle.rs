//! `livemig qemu oracle`: the lowest constant cap that converges for a real guest, found by
//! bisection over real migrations of it (each a fresh guest booted in the same state), and the
//! policies scored against it as the simulator scores them: peak cap and total time over the
//! oracle's.

use std::path::PathBuf;

use anyhow::{bail, Result};
use livemig_policy::{PolicyConfig, PolicyKind, PolicySpec, Timeouts};
use livemig_qemu::vm::{GuestImage, GUEST_MEMORY_BYTES};
use livemig_workload::units::fmt_rate;

use crate::args::{resolve_spec, Runner, TimeoutArgs};
use crate::oracle::{self, Bisection, OracleResult, Scored};
use crate::out;
use crate::qemu_runs::{bench_run, locate_image};

/// `livemig qemu oracle` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig qemu oracle --workload sweep=scan:rate=64MiB/s,buffer=160MiB
  livemig qemu oracle --workload hot=hotcold:rate=48MiB/s,buffer=128MiB,hot=25%,share=90% --runs 6
  livemig qemu oracle --workload sweep=scan:rate=64MiB/s,buffer=160MiB --json
  livemig qemu oracle --workload cpu=scan:rate=1GiB/s,buffer=128MiB,work=15000 --runs 0 --max-bandwidth 32MiB/s --max-throttle 0.99 --policies predictive,qemu-auto-converge

The last compares the rescue with QEMU's own auto-converge on a guest no cap up to B_max
converges (its page writes cost CPU: `work`); the slowdown column is the guest's own progress
during the migration against the 2 s before it.")]
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
        let mut search = Bisection::new(cfg.min_bandwidth, cfg.max_bandwidth, args.runs);
        while let Some(cap) = search.next() {
            let n = search.probes().len() + 1;
            let fixed = Fixed {
                image: &image,
                spec,
                dir: out_dir.join(format!("{name}-fixed-{n}")),
                cfg: PolicyConfig {
                    fixed_bandwidth: Some(cap),
                    ..cfg.clone()
                },
                timeouts,
            };
            let (ok, t) = fixed.run(name).await?;
            search.record(ok, t);
        }
        let mut scored = Vec::new();
        for &runner in &args.policies {
            let dir = out_dir.join(format!("{name}-{}", runner.name()));
            std::fs::create_dir_all(&dir)?;
            out::note(&format!("[{name}] {} ...", runner.name()));
            let run = bench_run(&image, spec, &dir, runner, &cfg, timeouts, None).await;
            match run.result {
                Ok(r) => {
                    let mut s = Scored::new(
                        runner.name(),
                        &r.report.summary,
                        search.best(),
                        run.heartbeat,
                    );
                    // QEMU's own auto-converge asks nothing of the policy: show what QEMU did.
                    if s.max_throttle.is_none() {
                        s.max_throttle = r.qemu.cpu_throttle_seen.map(|p| p / 100.0);
                    }
                    scored.push(match run.progress {
                        Some(p) => s.slowed(p.slowdown, p.lost_s),
                        None => s,
                    });
                }
                Err(e) => out::note(&format!("[{name}] {} failed: {e:#}", runner.name())),
            }
        }
        results.push(OracleResult::new(name, spec, &search, scored));
    }
    let json = serde_json::to_string_pretty(&results)?;
    std::fs::write(out_dir.join("oracle.json"), &json)?;
    if args.json {
        out::emit_line(&json)?;
        return Ok(());
    }
    out::emit(&oracle::table(&results, "heartbeat"))?;
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
        let run = bench_run(
            self.image,
            self.spec,
            &self.dir,
            Runner::Policy(PolicyKind::Fixed),
            &self.cfg,
            self.timeouts,
            None,
        )
        .await;
        let r = run.result?;
        Ok((r.report.summary.converged, r.report.summary.total_time_s))
    }
}
