//! `livemig plan drain`: what draining hosts costs under livemig's budget and the baselines,
//! simulated in seconds (`livemig-fleet`: the RMS's own allocator, the simulator's per-round
//! model, the physical links shared fairly). No RMS, no agents, no clock.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use livemig_fleet::{drain, DrainFigures, DrainReport, DrainScenario, Mix, SchemeName};
use livemig_policy::PolicyKind;
use livemig_workload::units::{self, fmt_bytes, fmt_duration, fmt_rate};

use crate::args::PolicyName;
use crate::{out, table};

/// `livemig plan` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Simulate draining hosts: every VM of the draining hosts migrates at once, under
    /// livemig's budget and the baselines, side by side.
    #[command(after_long_help = "Examples:
  livemig plan drain
  livemig plan drain --hosts 8 --drain 2 --vms-per-host 20 --scheme budget --json
  livemig plan drain --budget 5Gbit --nic 10Gbit --mix idle:1,heavy:1 --policy predictive")]
    Drain(Box<DrainArgs>),
}

/// Which schemes to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemeArg {
    /// All four, the budget first.
    All,
    /// livemig's budget: admission by prediction, minimums first, the rest to the shortest.
    Budget,
    /// One migration per source host at a time, no cap (Nova's default).
    Sequential,
    /// 2 outbound per host, 5 in all, each capped at budget / 5 (KubeVirt's defaults).
    FixedSlots,
    /// Every migration at once, no cap.
    Unlimited,
}

impl SchemeArg {
    fn schemes(self) -> Vec<SchemeName> {
        match self {
            SchemeArg::All => SchemeName::ALL.to_vec(),
            SchemeArg::Budget => vec![SchemeName::Budget],
            SchemeArg::Sequential => vec![SchemeName::Sequential],
            SchemeArg::FixedSlots => vec![SchemeName::FixedSlots],
            SchemeArg::Unlimited => vec![SchemeName::Unlimited],
        }
    }
}

/// `livemig plan drain` flags.
///
/// The fleet: --hosts hosts, each running --vms-per-host VMs; the first --drain hosts are
/// emptied onto the others, so --drain x --vms-per-host VMs migrate (by default 20 x 50 =
/// 1000 VMs, from 20 hosts onto the 20 others). Every migration is submitted at once and
/// crosses the shared uplink, its source's NIC and its target's NIC. The budget is what the
/// operator lets migrations use on the uplink; the uplink itself carries --link (default 1.25 x
/// the budget): uncapped schemes are bounded by it, not by the budget.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// Hosts in the fleet (2 to 10000).
    #[arg(long, default_value_t = 40)]
    pub hosts: u32,
    /// How many hosts drain (the first ones; at least 1, fewer than --hosts).
    #[arg(long, default_value_t = 20)]
    pub drain: u32,
    /// VMs every host runs at the start.
    #[arg(long, default_value_t = 50)]
    pub vms_per_host: u32,
    /// Every host's memory; a VM no remaining host can hold fails.
    #[arg(long, default_value = "512GiB")]
    pub host_memory: String,
    /// VM memory: one size, or a comma list drawn from uniformly (2GiB,4GiB,8GiB).
    #[arg(long, default_value = "4GiB")]
    pub memory: String,
    /// Workload classes with weights. Classes: idle, web (hotcold 40 MiB/s, 5 % hot),
    /// db (zipf 150 MiB/s, s=0.9), heavy (uniform 250 MiB/s), uniform (50 MiB/s),
    /// hotcold (300 MiB/s, 10 % hot), zipf (200 MiB/s, s=1.1), scan (50 MiB/s).
    #[arg(long, default_value = livemig_fleet::mix::DEFAULT_MIX)]
    pub mix: String,
    /// The migration budget U on the shared uplink (1Gbit, 10Gbit/s, 500MiB/s).
    #[arg(long, default_value = "10Gbit/s")]
    pub budget: String,
    /// The uplink's physical capacity; default 1.25 x the budget.
    #[arg(long)]
    pub link: Option<String>,
    /// Every host's NIC (physical, and the budget's per-host limit).
    #[arg(long, default_value = "25Gbit/s")]
    pub nic: String,
    /// Every migration's policy.
    #[arg(long, value_enum, default_value_t = PolicyName(PolicyKind::DirtyFactor))]
    pub policy: PolicyName,
    /// N: pre-copy rounds at most (the RMS's default).
    #[arg(long, default_value_t = 10)]
    pub rounds: u32,
    /// h: pre-copy stops when at most this much is left (the RMS's default).
    #[arg(long, default_value = "64MiB")]
    pub stop: String,
    /// Which schemes to run.
    #[arg(long, value_enum, default_value_t = SchemeArg::All)]
    pub scheme: SchemeArg,
    /// Seed of the VMs' sizes and classes and of the measurement noise.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The drain `livemig bench-drain` measures on the testbed, to compare with it: 4 hosts
    /// of 4 GiB, h1's six 256 MiB guests (one of each u256k..u40m, in order), a 60 MiB/s
    /// budget, 1 Gbit/s NICs, the `fixed` policy. Other flags are ignored.
    #[arg(long)]
    pub testbed: bool,
    /// Print the figures as JSON (bytes, bytes/s, seconds).
    #[arg(long)]
    pub json: bool,
}

/// A rate with units; `1Gbit` is read as `1Gbit/s`.
fn rate(flag: &str, s: &str) -> Result<f64> {
    units::parse_rate(s)
        .or_else(|e| units::parse_rate(&format!("{}/s", s.trim())).map_err(|_| e))
        .with_context(|| flag.to_string())
}

fn size(flag: &str, s: &str) -> Result<f64> {
    units::parse_size(s).with_context(|| flag.to_string())
}

impl DrainArgs {
    fn scenario(&self) -> Result<DrainScenario> {
        if self.testbed {
            let s = DrainScenario {
                hosts: 4,
                drain: 1,
                vms_per_host: 6,
                host_memory_bytes: size("--host-memory", "4GiB")?,
                vm_memory_bytes: vec![size("--memory", "256MiB")?],
                mix: livemig_fleet::mix::TESTBED_MIX
                    .parse()
                    .context("the testbed's mix")?,
                nic_bytes_per_s: 1e9 / 8.0,
                budget_bytes_per_s: 60.0 * 1024.0 * 1024.0,
                // The testbed's bridge is not shaped: the NICs are the physical limit.
                uplink_bytes_per_s: Some(10e9 / 8.0),
                policy: PolicyKind::Fixed,
                rounds: 10,
                stop_bytes: size("--stop", "64MiB")?,
                seed: self.seed,
                in_order: true,
            };
            s.validate()?;
            return Ok(s);
        }
        let sizes = self
            .memory
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| size("--memory", s))
            .collect::<Result<Vec<f64>>>()?;
        if sizes.is_empty() {
            bail!("--memory: give at least one size (4GiB, or 2GiB,4GiB,8GiB)");
        }
        let mix: Mix = self.mix.parse().context("--mix")?;
        let s = DrainScenario {
            hosts: self.hosts,
            drain: self.drain,
            vms_per_host: self.vms_per_host,
            host_memory_bytes: size("--host-memory", &self.host_memory)?,
            vm_memory_bytes: sizes,
            mix,
            nic_bytes_per_s: rate("--nic", &self.nic)?,
            budget_bytes_per_s: rate("--budget", &self.budget)?,
            uplink_bytes_per_s: self
                .link
                .as_deref()
                .map(|l| rate("--link", l))
                .transpose()?,
            policy: self.policy.0,
            rounds: self.rounds,
            stop_bytes: size("--stop", &self.stop)?,
            seed: self.seed,
            in_order: false,
        };
        s.validate()?;
        Ok(s)
    }
}

/// Runs `livemig plan`.
pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Drain(a) => run_drain(*a),
    }
}

fn run_drain(args: DrainArgs) -> Result<()> {
    let s = args.scenario()?;
    let started = Instant::now();
    let report = drain(&s, &args.scheme.schemes())?;
    let took = started.elapsed().as_secs_f64();
    if args.json {
        out::emit_line(&serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    out::emit_line(&render(&report, took))?;
    Ok(())
}

/// Within the budget: the peak on the uplink at most U (rounding aside).
fn within(f: &DrainFigures) -> bool {
    f.peak_over_budget <= 1.0 + 1e-6
}

fn render(r: &DrainReport, took_s: f64) -> String {
    let mut text = format!(
        "drain: {} of {} hosts, {} VMs ({} per host, mix {}), policy {}, N = {}, h = {}\n\
         budget {} on an uplink of {}, NICs {}\n",
        r.drain,
        r.hosts,
        r.migrations,
        r.vms_per_host,
        r.mix,
        r.policy,
        r.rounds,
        fmt_bytes(r.stop_bytes),
        fmt_rate(r.budget_bytes_per_s),
        fmt_rate(r.uplink_bytes_per_s),
        fmt_rate(r.nic_bytes_per_s),
    );
    let mut t = table::new_table(&[
        "scheme",
        "migrated",
        "failed",
        "not conv.",
        "time to empty",
        "peak uplink",
        "peak/U",
        "downtime max",
        "downtime med.",
        "sent",
        "at once",
    ]);
    for f in &r.figures {
        t.add_row(vec![
            f.scheme.clone(),
            f.migrated.to_string(),
            f.failed.to_string(),
            f.not_converged.to_string(),
            fmt_duration(f.time_to_empty_s),
            fmt_rate(f.peak_uplink_bytes_per_s),
            format!("{:.2}", f.peak_over_budget),
            fmt_duration(f.downtime_max_s),
            fmt_duration(f.downtime_median_s),
            fmt_bytes(f.total_bytes),
            f.max_concurrent.to_string(),
        ]);
    }
    text.push_str(&t.to_string());
    text.push('\n');
    text.push_str(&verdict(r));
    text.push_str(&format!(
        "\n(simulated in {took_s:.2} s; not converged = pre-copy cut by N rounds with more than h left)"
    ));
    text
}

/// Which baseline is best among those within the budget (fewest failed or not converged,
/// then the shortest time to empty), and how the budget compares.
fn verdict(r: &DrainReport) -> String {
    let bad = |f: &DrainFigures| f.failed + f.not_converged;
    let budget = r.figures.iter().find(|f| f.scheme == "budget");
    let best = r
        .figures
        .iter()
        .filter(|f| f.scheme != "budget" && within(f))
        .min_by(|a, b| {
            bad(a)
                .cmp(&bad(b))
                .then(a.time_to_empty_s.total_cmp(&b.time_to_empty_s))
        });
    let over: Vec<&str> = r
        .figures
        .iter()
        .filter(|f| f.scheme != "budget" && !within(f))
        .map(|f| f.scheme.as_str())
        .collect();
    let mut line = match best {
        Some(b) => format!(
            "best baseline within the budget: {} ({} to empty, {} not converged, {} failed)",
            b.scheme,
            fmt_duration(b.time_to_empty_s),
            b.not_converged,
            b.failed
        ),
        None if r.figures.iter().all(|f| f.scheme == "budget") => {
            "no baseline run (--scheme all compares them)".to_string()
        }
        None => "no baseline stays within the budget".to_string(),
    };
    if !over.is_empty() {
        line.push_str(&format!("; over the budget: {}", over.join(", ")));
    }
    if let (Some(u), Some(b)) = (budget, best) {
        let pct = if b.time_to_empty_s > 0.0 {
            100.0 * (u.time_to_empty_s / b.time_to_empty_s - 1.0)
        } else {
            0.0
        };
        line.push_str(&format!(
            "\nlivemig's budget: {} to empty ({:+.0} %), {} not converged, {} failed, downtime max {} vs {}, peak {:.2} x U",
            fmt_duration(u.time_to_empty_s),
            pct,
            u.not_converged,
            u.failed,
            fmt_duration(u.downtime_max_s),
            fmt_duration(b.downtime_max_s),
            u.peak_over_budget
        ));
    }
    line
}
