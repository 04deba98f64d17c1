//! `livemig bench-oracle`: the engine's oracle. For each workload, the lowest constant cap
//! that converges, found by bisection over real engine migrations on loopback (each a fresh
//! simulated guest in the same state: same memory, same seed, same workload), and the
//! policies scored against it as the simulator scores them: peak cap and total time over the
//! oracle's. The engine moves real bytes over real TCP under its own rate limiter, and every
//! migration ends with the memory audit, whose verdict is the table's last column.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use livemig_engine::{InitialContent, SenderConfig, SimGuest, SimGuestConfig};
use livemig_policy::report::MigrationReport;
use livemig_policy::{PolicyConfig, PolicyKind};
use livemig_workload::units::{self, fmt_rate};
use livemig_workload::Workload;

use crate::args::PolicyName;
use crate::oracle::{self, Bisection, OracleResult, Scored};
use crate::out;

/// `livemig bench-oracle` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig bench-oracle
  livemig bench-oracle --workload sweep=scan:rate=64MiB/s --runs 6 --policies predictive,dirty-factor
  livemig bench-oracle --memory 512MiB --workload hot=hotcold:rate=96MiB/s,hot=10%,share=90% --json

Each run is a fresh guest (random memory, the workload's writer) migrated to a receiver thread
on loopback; the search makes 1 + --runs migrations per workload, then one per policy.")]
pub struct Args {
    /// Guest memory.
    #[arg(long, default_value = "256MiB")]
    pub memory: String,
    /// Workloads as NAME=SPEC (see `livemig simulate --help`); one oracle each.
    #[arg(
        long = "workload",
        value_name = "NAME=SPEC",
        default_values_t = [
            "light=uniform:rate=8MiB/s".to_string(),
            "hot=hotcold:rate=96MiB/s,hot=10%,share=90%".to_string(),
            "sweep=scan:rate=48MiB/s".to_string(),
        ]
    )]
    pub workloads: Vec<String>,
    /// Bisection steps after the run at B_max (each a real migration of a fresh guest).
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
    /// The policies scored against the oracle (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "predictive")]
    pub policies: Vec<PolicyName>,
    /// Round limit N.
    #[arg(long, default_value_t = 10)]
    pub rounds: u32,
    /// Stop level h.
    #[arg(long, default_value = "8MiB")]
    pub stop_remaining: String,
    /// B_min, the lowest cap tried.
    #[arg(long, default_value = "100Mbit/s")]
    pub min_bandwidth: String,
    /// B_max, the highest cap tried.
    #[arg(long, default_value = "2Gbit/s")]
    pub max_bandwidth: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Every socket wait and the receiver's frame deadline.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The guests' seed: every run starts from the same memory.
const SEED: u64 = 11;

/// Runs `livemig bench-oracle`.
pub fn run(args: Args) -> Result<()> {
    let memory = units::parse_size(&args.memory).context("--memory")?;
    let cfg = PolicyConfig {
        memory_bytes: memory,
        max_rounds: args.rounds,
        stop_remaining: units::parse_size(&args.stop_remaining).context("--stop-remaining")?,
        min_bandwidth: units::parse_rate_with_unit(&args.min_bandwidth)
            .context("--min-bandwidth")?,
        max_bandwidth: units::parse_rate_with_unit(&args.max_bandwidth)
            .context("--max-bandwidth")?,
        ..PolicyConfig::default()
    };
    cfg.validate()?;
    let mut named = Vec::new();
    for w in &args.workloads {
        let Some((name, spec)) = w.split_once('=') else {
            bail!("--workload takes NAME=SPEC, got `{w}`");
        };
        Workload::parse_self_contained(spec).with_context(|| format!("--workload {name}"))?;
        named.push((name, spec));
    }
    let mut results = Vec::new();
    for (name, spec) in named {
        let guest_cfg = SimGuestConfig {
            memory_bytes: memory as u64,
            workload: spec.to_string(),
            content: InitialContent::Random,
            seed: SEED,
        };
        let mut search = Bisection::new(cfg.min_bandwidth, cfg.max_bandwidth, args.runs);
        while let Some(cap) = search.next() {
            out::note(&format!("[{name}] fixed at {} ...", fmt_rate(cap)));
            let fixed = PolicyConfig {
                fixed_bandwidth: Some(cap),
                ..cfg.clone()
            };
            match one(&guest_cfg, PolicyKind::Fixed, &fixed) {
                Ok(r) => search.record(r.summary.converged, r.summary.total_time_s),
                // The guest stays on the source (the engine never loses it): for the search,
                // a cap that did not get it across.
                Err(e) => {
                    out::note(&format!(
                        "[{name}] fixed at {} failed, counted as not converged: {e:#}",
                        fmt_rate(cap)
                    ));
                    search.record(false, f64::NAN);
                }
            }
        }
        let mut scored = Vec::new();
        for p in &args.policies {
            out::note(&format!("[{name}] {} ...", p.0.name()));
            let r = match one(&guest_cfg, p.0, &cfg) {
                Ok(r) => r,
                Err(e) => {
                    out::note(&format!("[{name}] {} failed: {e:#}", p.0.name()));
                    continue;
                }
            };
            let check = match &r.summary.audit {
                Some(a) if a.passed => format!("ok ({} pages)", a.pages),
                Some(a) => format!("FAILED ({} of {} pages differ)", a.differing, a.pages),
                None => "not audited".to_string(),
            };
            scored.push(Scored::new(p.0.name(), &r.summary, search.best(), check));
        }
        results.push(OracleResult::new(name, spec, &search, scored));
    }
    if args.json {
        out::emit_line(&serde_json::to_string_pretty(&results)?)?;
        return Ok(());
    }
    out::emit(&format!(
        "{} guest on loopback, h {}, caps {} .. {}\n{}",
        units::fmt_bytes(memory),
        units::fmt_bytes(cfg.stop_remaining),
        fmt_rate(cfg.min_bandwidth),
        fmt_rate(cfg.max_bandwidth),
        oracle::table(&results, "audit")
    ))?;
    Ok(())
}

/// One migration of a fresh guest under `kind`.
fn one(
    guest_cfg: &SimGuestConfig,
    kind: PolicyKind,
    cfg: &PolicyConfig,
) -> Result<MigrationReport> {
    let guest = SimGuest::start(guest_cfg, u64::MAX)?;
    let mut policy = kind.build(cfg.clone())?;
    // A constant cap that does not converge ends in a stop-and-copy of what is left at that
    // cap: the pause may last as long as sending the whole memory at B_min.
    let whole = Duration::try_from_secs_f64(cfg.memory_bytes / cfg.min_bandwidth)
        .unwrap_or(Duration::from_secs(86_400))
        .min(Duration::from_secs(86_400));
    let send_cfg = SenderConfig {
        stop_remaining: cfg.stop_remaining,
        timeout: TIMEOUT,
        max_pause: TIMEOUT * 2 + whole,
        resolve_timeout: TIMEOUT * 2,
        ..SenderConfig::default()
    };
    crate::loopback::migrate(&guest, policy.as_mut(), &send_cfg, TIMEOUT)
}
