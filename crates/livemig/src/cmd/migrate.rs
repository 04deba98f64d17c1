//! `livemig migrate`: migrate a simulated guest to a `livemig receive` over TCP.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use livemig_engine::{Key, SenderConfig, SimGuest, SimGuestConfig};
use livemig_policy::PolicyKind;
use livemig_sim::Scenario;

use crate::cmd::simulate::PolicyArgs;
use crate::progress::Progress;
use crate::table;

/// The simulated guest: size, workload, content (shared by `migrate` and `demo`).
#[derive(Debug, Clone, clap::Args)]
pub struct GuestArgs {
    /// Guest memory size M (a multiple of 4 KiB).
    #[arg(long, default_value = "256MiB")]
    pub memory: String,
    /// Workload the guest's writer thread follows (same specs as `simulate`).
    #[arg(long, default_value = "hotcold:rate=128MiB/s,hot=5%,share=95%")]
    pub workload: String,
    /// Initial memory content: random (incompressible), zero, or mixed:P (a share P of zero
    /// pages, the rest random).
    #[arg(long, default_value = "random")]
    pub content: String,
    /// Seed of the guest's content and writer.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Try lz4 on every non-zero page (zero pages are always elided).
    #[arg(long)]
    pub compress: bool,
    /// Length of the dirty-log sample taken before round 1 and offered to the policy (0s for
    /// none; `predictive` plans from it).
    #[arg(long, default_value = "1s")]
    pub sample: String,
    /// Longest wait for the peer on any network operation.
    #[arg(long, default_value = "10s")]
    pub timeout: String,
}

impl GuestArgs {
    /// Starts the guest of `scenario` (page size 4 KiB).
    pub fn start(&self, scenario: &Scenario) -> Result<SimGuest> {
        if scenario.cfg.page_size != 4096.0 {
            bail!("the engine moves 4 KiB pages; --page-size must be 4096");
        }
        let cfg = SimGuestConfig {
            memory_bytes: scenario.cfg.memory_bytes as u64,
            workload: self.workload.clone(),
            content: self.content.parse()?,
            seed: self.seed,
        };
        Ok(SimGuest::start(&cfg, u64::MAX)?)
    }

    /// Sender settings for `scenario`.
    pub fn sender(&self, scenario: &Scenario) -> Result<SenderConfig> {
        Ok(SenderConfig {
            compress: self.compress,
            stop_remaining: scenario.cfg.stop_remaining,
            sample_s: crate::cmd::receive::duration("sample", &self.sample)?.as_secs_f64(),
            workload: Some(self.workload.clone()),
            ..SenderConfig::default()
        })
    }

    /// The network timeout.
    pub fn timeout(&self) -> Result<Duration> {
        crate::cmd::receive::positive_duration("timeout", &self.timeout)
    }
}

/// `livemig migrate` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address of the destination's `livemig receive` (HOST:PORT).
    #[arg(long)]
    pub to: String,
    /// Shared key file (64 hex digits), the same as the destination's.
    #[arg(long)]
    pub key: PathBuf,
    #[command(flatten)]
    pub guest: GuestArgs,
    #[command(flatten)]
    pub settings: PolicyArgs,
    /// Policy: dirty-factor (the method), predictive, xen, xen-v2, qemu, fixed.
    #[arg(long, default_value = "dirty-factor")]
    pub policy: PolicyKind,
    /// Print the result as JSON (bytes and bytes/s) instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Runs `livemig migrate`.
pub fn run(args: Args) -> Result<()> {
    let scenario = args
        .settings
        .resolve(&args.guest.memory, &args.guest.workload)?;
    let key = Key::load(&args.key)?;
    let timeout = args.guest.timeout()?;
    let send_cfg = args.guest.sender(&scenario)?;
    let addr = args
        .to
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", args.to))?
        .next()
        .with_context(|| format!("{} resolves to no address", args.to))?;
    let guest = args.guest.start(&scenario)?;
    let mut stream = livemig_engine::net::connect(addr, timeout)?;
    let mut policy = args.policy.build(scenario.cfg.clone())?;
    let mut progress = Progress::new(args.json);
    let result = livemig_engine::migrate(
        &mut stream,
        &key,
        &guest,
        policy.as_mut(),
        &send_cfg,
        &mut |e| progress.observe(e),
    );
    match result {
        Ok(report) => {
            // Handed over: the source's copy is destroyed.
            drop(guest);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", table::report(&report));
            }
            Ok(())
        }
        Err(e) => {
            let (n, _) = guest.self_check();
            Err(anyhow::Error::new(e).context(format!(
                "migration failed; the guest keeps running on the source (self-check counter {n})"
            )))
        }
    }
}
