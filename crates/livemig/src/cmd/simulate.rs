//! `livemig simulate`: one migration in the simulator.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use livemig_policy::PolicyKind;
use livemig_sim::scenario::{read_specs, Scenario, ScenarioSpec};
use livemig_sim::simulate;

use crate::{out, plot, table};

/// The operator's policy settings (N, h, bounds, per-policy knobs), shared by `simulate`,
/// `migrate` and `demo`. Unset flags keep the scenario file's value or the defaults shown.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Round limit N. [default: 10]
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Stop level h: pre-copy ends when at most this much remains dirty. [default: 64MiB]
    #[arg(long)]
    pub stop_remaining: Option<String>,
    /// B_min. [default: 100Mbit/s]
    #[arg(long)]
    pub min_bandwidth: Option<String>,
    /// B_max, also the stop-and-copy bandwidth. [default: 10Gbit/s]
    #[arg(long)]
    pub max_bandwidth: Option<String>,
    /// Round 1's bandwidth. [default: B_min; `predictive` plans it from the sample]
    #[arg(long)]
    pub initial_bandwidth: Option<String>,
    /// The constant cap of `fixed` (default B_max) and `qemu` (default 128MiB/s).
    #[arg(long)]
    pub bandwidth: Option<String>,
    /// `qemu`: downtime limit; a plain number is milliseconds, as in QEMU and libvirt
    /// (`300` = `300ms`). [default: 300ms]
    #[arg(long)]
    pub downtime_limit: Option<String>,
    /// Threshold T set by hand. [default: (h/M)^(1/N)]
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Page size. [default: 4096]
    #[arg(long)]
    pub page_size: Option<String>,
}

fn set(field: &mut Option<String>, flag: &Option<String>) {
    if flag.is_some() {
        field.clone_from(flag);
    }
}

impl PolicyArgs {
    /// Overrides `spec`'s policy settings with the flags that were given.
    pub fn apply(&self, spec: &mut ScenarioSpec) {
        let p = &mut spec.policy;
        p.rounds = self.rounds.or(p.rounds);
        p.threshold = self.threshold.or(p.threshold);
        set(&mut p.stop_remaining, &self.stop_remaining);
        set(&mut p.min_bandwidth, &self.min_bandwidth);
        set(&mut p.max_bandwidth, &self.max_bandwidth);
        set(&mut p.initial_bandwidth, &self.initial_bandwidth);
        set(&mut p.bandwidth, &self.bandwidth);
        set(&mut p.downtime_limit, &self.downtime_limit);
        set(&mut p.page_size, &self.page_size);
    }

    /// Resolves and validates `memory`, `workload` and these settings (the simulator's link
    /// settings at their defaults): what `migrate` and `demo` run.
    pub fn resolve(&self, memory: &str, workload: &str) -> Result<Scenario> {
        let mut spec = ScenarioSpec {
            name: "cli".into(),
            memory: memory.to_string(),
            workload: workload.to_string(),
            ..ScenarioSpec::default()
        };
        self.apply(&mut spec);
        Ok(spec.resolve(std::env::current_dir().ok().as_deref())?)
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
    /// trace:file=PATH[,pattern=P][,scale=X]. R is a write rate in bytes/s (units allowed).
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
        self.policy.apply(&mut spec);
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
