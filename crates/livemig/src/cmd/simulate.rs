//! `livemig simulate`: one migration in the simulator.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use livemig_policy::PolicyKind;
use livemig_sim::scenario::{load_suite, Scenario, ScenarioSpec};
use livemig_sim::simulate;

use crate::cmd::policy_args::PolicyArgs;
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
    #[command(flatten)]
    pub policy: PolicyArgs,
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
            link_capacity: self.link_capacity.clone(),
            state_size: self.state_size.clone(),
            resume_latency: self.resume_latency.clone(),
            noise: Some(self.noise),
            seed: Some(self.seed),
            ..self.policy.spec("cli", memory, &self.workload)
        };
        Ok(spec.resolve(std::env::current_dir().ok().as_deref())?)
    }
}

/// `livemig simulate` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    /// Policy: dirty-factor (the method), xen, xen-v2, qemu, fixed.
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
