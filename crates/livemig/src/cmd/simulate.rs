//! `livemig simulate`: one migration in the simulator.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use livemig_policy::PolicyKind;
use livemig_sim::scenario::{read_specs, Scenario, ScenarioSpec};
use livemig_sim::simulate;

use crate::args::{PolicyArgs, PolicyName};
use crate::{out, plot, table};

fn set(field: &mut Option<String>, flag: &Option<String>) {
    if flag.is_some() {
        field.clone_from(flag);
    }
}

/// Scenario flags shared with other commands. With --scenario, any flag given explicitly
/// overrides the file's value; without it, unset flags take the defaults shown.
#[derive(Debug, clap::Args)]
pub struct ScenarioArgs {
    /// Guest memory size M (e.g. 4GiB). Required unless --scenario is given.
    #[arg(long)]
    pub memory: Option<String>,
    /// Workload, KIND:key=value,... One of: idle | uniform:rate=R | hotcold:rate=R,hot=F,share=S
    /// | zipf:rate=R,s=X | scan:rate=R | phased:steps=R@T;R@T[,pattern=P] |
    /// trace:file=PATH[,pattern=P][,scale=X][,replay=curve|rate] |
    /// workingset:points=T@W;T@W. R is a write rate in bytes/s (units allowed); a working-set
    /// trace (several periods) or `workingset` replays its measured curve W(t).
    /// [default: hotcold:rate=300MiB/s,hot=10%,share=90%]
    #[arg(long)]
    pub workload: Option<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Link capacity: no round goes faster, whatever its cap. [default: none]
    #[arg(long)]
    pub link_capacity: Option<String>,
    /// CPU/device state sent during stop-and-copy. [default: 0]
    #[arg(long)]
    pub state_size: Option<String>,
    /// Time from the last byte to the guest running on the destination. [default: 0s]
    #[arg(long)]
    pub resume_latency: Option<String>,
    /// Relative noise on each round's measured dirty bytes (0.1 = 10 %). [default: 0]
    #[arg(long)]
    pub noise: Option<f64>,
    /// Seed of the noise (the model itself is deterministic). [default: 1]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Length of the dirty-log sample offered to the policy before round 1 (0s = none);
    /// only `predictive` uses it. [default: 1s]
    #[arg(long)]
    pub sample: Option<String>,
    /// Take the scenario from a TOML file (see scenarios/suite.toml); flags override it.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// With --scenario: which scenario of the file. [default: the first]
    #[arg(long, requires = "scenario")]
    pub name: Option<String>,
}

impl ScenarioArgs {
    fn base_spec(&self) -> Result<ScenarioSpec> {
        let Some(path) = &self.scenario else {
            let Some(memory) = &self.memory else {
                bail!("--memory is required (or give --scenario FILE)");
            };
            return Ok(ScenarioSpec {
                name: "cli".into(),
                memory: memory.clone(),
                workload: "hotcold:rate=300MiB/s,hot=10%,share=90%".into(),
                ..ScenarioSpec::default()
            });
        };
        let specs = read_specs(path)?;
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let found = match &self.name {
            None => specs.into_iter().next(),
            Some(n) => specs.into_iter().find(|s| &s.name == n),
        };
        found.with_context(|| {
            format!(
                "no scenario `{}` in {} (it has: {})",
                self.name.as_deref().unwrap_or(""),
                path.display(),
                names.join(", ")
            )
        })
    }

    /// The scenario the flags describe.
    pub fn resolve(&self) -> Result<Scenario> {
        let mut spec = self.base_spec()?;
        if let Some(m) = &self.memory {
            spec.memory.clone_from(m);
        }
        if let Some(w) = &self.workload {
            spec.workload.clone_from(w);
        }
        spec.policy.apply(&self.policy.spec());
        set(&mut spec.link_capacity, &self.link_capacity);
        set(&mut spec.state_size, &self.state_size);
        set(&mut spec.resume_latency, &self.resume_latency);
        set(&mut spec.sample, &self.sample);
        spec.noise = self.noise.or(spec.noise);
        spec.seed = self.seed.or(spec.seed);
        let base = match &self.scenario {
            Some(p) => p.parent().map(Path::to_path_buf),
            None => std::env::current_dir().ok(),
        };
        Ok(spec.resolve(base.as_deref())?)
    }
}

/// `livemig simulate` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig simulate --memory 4GiB --workload hotcold:rate=300MiB/s,hot=10%,share=90%
  livemig simulate --scenario scenarios/suite.toml --name hotcold-4g --plot rounds.svg
  livemig simulate --memory 2GiB --workload trace:file=trace.csv --policy qemu --downtime-limit 300
  livemig simulate --memory 256MiB --workload 'workingset:points=1s@64MiB;2s@128MiB;4s@160MiB;8s@160MiB'")]
pub struct Args {
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    /// The bandwidth policy. The simulator studies the method, so it is the default here.
    #[arg(long, value_enum, default_value_t = PolicyName(PolicyKind::DirtyFactor))]
    pub policy: PolicyName,
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
    let mut policy = args.policy.0.build(scenario.cfg.clone())?;
    let report = simulate(policy.as_mut(), scenario.setup())?;
    if let Some(path) = &args.plot {
        plot::rounds(path, &report)?;
    }
    let text = if args.json {
        serde_json::to_string_pretty(&report)?
    } else {
        let mut text = table::report(&report);
        if let Some(path) = &args.plot {
            text.push_str(&format!("\nplot written to {}", path.display()));
        }
        text
    };
    out::emit_line(&text)?;
    Ok(())
}
