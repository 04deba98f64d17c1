//! `livemig simulate`: one migration in the simulator.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use livemig_policy::PolicyKind;
use livemig_sim::scenario::{load_suite, Scenario, ScenarioSpec};
use livemig_sim::simulate;

use crate::{plot, table};

/// Scenario flags shared with other commands.
#[derive(Debug, clap::Args)]
pub struct ScenarioArgs {
    /// Guest memory size M (e.g. 4GiB). Required unless --scenario is given.
    #[arg(long)]
    pub memory: Option<String>,
    /// Workload, KIND:key=value,... One of: idle | uniform:rate=R | hotcold:rate=R,hot=F,share=S
    /// | zipf:rate=R,s=X | scan:rate=R | phased:steps=R@T;R@T[,pattern=P] |
    /// trace:file=PATH[,pattern=P][,scale=X]. R is a write rate in bytes/s (units allowed).
    #[arg(long, default_value = "hotcold:rate=300MiB/s,hot=10%,share=90%")]
    pub workload: String,
    /// Round limit N.
    #[arg(long, default_value_t = 10)]
    pub rounds: u32,
    /// Stop level h: pre-copy ends when at most this much remains dirty.
    #[arg(long, default_value = "64MiB")]
    pub stop_remaining: String,
    /// B_min.
    #[arg(long, default_value = "100Mbit/s")]
    pub min_bandwidth: String,
    /// B_max (also the stop-and-copy bandwidth).
    #[arg(long, default_value = "10Gbit/s")]
    pub max_bandwidth: String,
    /// Round 1's bandwidth (default B_min).
    #[arg(long)]
    pub initial_bandwidth: Option<String>,
    /// The constant cap of `fixed` (default B_max) and `qemu` (default 128MiB/s).
    #[arg(long)]
    pub bandwidth: Option<String>,
    /// `qemu`: downtime limit.
    #[arg(long, default_value = "300ms")]
    pub downtime_limit: String,
    /// Threshold T set by hand (default (h/M)^(1/N)).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Page size.
    #[arg(long, default_value = "4096")]
    pub page_size: String,
    /// Link capacity: no round goes faster, whatever its cap.
    #[arg(long)]
    pub link_capacity: Option<String>,
    /// CPU/device state sent during stop-and-copy.
    #[arg(long)]
    pub state_size: Option<String>,
    /// Time from the last byte to the guest running on the destination.
    #[arg(long)]
    pub resume_latency: Option<String>,
    /// Relative noise on each round's measured dirty bytes (0 = the exact model; 0.1 = 10 %).
    #[arg(long, default_value_t = 0.0)]
    pub noise: f64,
    /// Seed of the noise (the model itself is deterministic).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Length of the dirty-log sample offered to the policy before round 1 (0s = none).
    /// Only `predictive` uses it.
    #[arg(long, default_value = "1s")]
    pub sample: String,
    /// Take the scenario from a TOML file instead (see scenarios/suite.toml).
    #[arg(long, conflicts_with = "memory")]
    pub scenario: Option<PathBuf>,
    /// With --scenario: which scenario of the file (default: the first).
    #[arg(long, requires = "scenario")]
    pub name: Option<String>,
}

impl ScenarioArgs {
    /// The scenario the flags describe.
    pub fn resolve(&self) -> Result<Scenario> {
        if let Some(path) = &self.scenario {
            let suite = load_suite(path)?;
            return match &self.name {
                None => suite
                    .into_iter()
                    .next()
                    .context("the scenario file is empty"),
                Some(n) => {
                    let names: Vec<String> = suite.iter().map(|s| s.name.clone()).collect();
                    match suite.into_iter().find(|s| &s.name == n) {
                        Some(s) => Ok(s),
                        None => bail!(
                            "no scenario `{n}` in {} (it has: {})",
                            path.display(),
                            names.join(", ")
                        ),
                    }
                }
            };
        }
        let Some(memory) = &self.memory else {
            bail!("--memory is required (or give --scenario FILE)");
        };
        let spec = ScenarioSpec {
            name: "cli".into(),
            description: None,
            memory: memory.clone(),
            workload: self.workload.clone(),
            rounds: Some(self.rounds),
            stop_remaining: Some(self.stop_remaining.clone()),
            min_bandwidth: Some(self.min_bandwidth.clone()),
            max_bandwidth: Some(self.max_bandwidth.clone()),
            initial_bandwidth: self.initial_bandwidth.clone(),
            threshold: self.threshold,
            bandwidth: self.bandwidth.clone(),
            downtime_limit: Some(self.downtime_limit.clone()),
            page_size: Some(self.page_size.clone()),
            link_capacity: self.link_capacity.clone(),
            state_size: self.state_size.clone(),
            resume_latency: self.resume_latency.clone(),
            noise: Some(self.noise),
            seed: Some(self.seed),
            sample: Some(self.sample.clone()),
        };
        Ok(spec.resolve(std::env::current_dir().ok().as_deref())?)
    }
}

/// `livemig simulate` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    /// Policy: dirty-factor (the method), predictive, xen, xen-v2, qemu, fixed.
    #[arg(long, default_value = "dirty-factor")]
    pub policy: PolicyKind,
    /// Print the result as JSON (bytes and bytes/s) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Draw cap, effective bandwidth, dirty rate and remaining per round (.svg or .png).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Runs `livemig simulate`.
pub fn run(args: Args) -> Result<()> {
    let scenario = args.scenario.resolve()?;
    let mut policy = args.policy.build(scenario.cfg.clone())?;
    let report = simulate(policy.as_mut(), scenario.setup())?;
    if let Some(path) = &args.plot {
        plot::rounds(path, &report)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", table::rounds(&report));
        println!("{}", table::summary(&report));
        if let Some(path) = &args.plot {
            println!("plot written to {}", path.display());
        }
    }
    Ok(())
}
