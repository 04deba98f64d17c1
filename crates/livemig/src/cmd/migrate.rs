//! `livemig migrate`: migrate a simulated guest to a `livemig receive` over TCP.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use livemig_engine::{Control, Key, SenderConfig, SimGuest, SimGuestConfig};
use livemig_policy::PolicyKind;
use livemig_sim::Scenario;

use crate::cmd::simulate::PolicyArgs;
use crate::outcome::{self, Handover, Outcome};
use crate::progress::{Progress, ProgressFormat};
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
    /// Deadline of the handshake, of every frame and of every keep-alive gap.
    #[arg(long, default_value = "10s")]
    pub timeout: String,
    /// Longest pause of the guest before the destination confirms a verified copy; past it the
    /// source aborts the hand-over and resumes its guest. Must exceed --timeout.
    #[arg(long, default_value = "30s")]
    pub max_pause: String,
    /// After committing, how long the source keeps reconnecting to learn whether the
    /// destination runs the guest before it reports the outcome unknown (exit 3).
    #[arg(long, default_value = "60s")]
    pub resolve_timeout: String,
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

    /// Sender settings for `scenario`, checked against its lowest cap (one frame must move
    /// within the timeout at every cap the policy may set).
    pub fn sender(&self, scenario: &Scenario) -> Result<SenderConfig> {
        let cfg = SenderConfig {
            compress: self.compress,
            stop_remaining: scenario.cfg.stop_remaining,
            sample_s: crate::cmd::receive::duration("sample", &self.sample)?.as_secs_f64(),
            workload: Some(self.workload.clone()),
            timeout: self.timeout()?,
            max_pause: crate::cmd::receive::positive_duration("max-pause", &self.max_pause)?,
            resolve_timeout: crate::cmd::receive::positive_duration(
                "resolve-timeout",
                &self.resolve_timeout,
            )?,
            ..SenderConfig::default()
        };
        cfg.check(scenario.cfg.min_bandwidth)
            .context("--min-bandwidth, --timeout or --max-pause")?;
        Ok(cfg)
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
    /// Where to save the paused guest if the outcome is unknown (exit 3).
    #[arg(long, default_value = ".")]
    pub hold_dir: PathBuf,
    /// Print the result as JSON (bytes and bytes/s) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Live progress on stderr: `human` (bars and lines), `json` (one JSON event per line,
    /// NDJSON, for scripts) or `none`. [default: human; none with --json]
    #[arg(long, value_enum)]
    pub progress: Option<ProgressFormat>,
}

/// Runs `livemig migrate`. Exit codes: 0 migrated, 1 failed (the guest runs on the source),
/// 2 usage, 3 unknown (the paused guest is saved to a hold file).
pub fn run(args: Args) -> Result<()> {
    let scenario = args
        .settings
        .resolve(&args.guest.memory, &args.guest.workload)?;
    let key = Key::load(&args.key)?;
    let timeout = args.guest.timeout()?;
    let send_cfg = args.guest.sender(&scenario)?;
    if !args.hold_dir.is_dir() {
        bail!("--hold-dir {} is not a directory", args.hold_dir.display());
    }
    let addr = args
        .to
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", args.to))?
        .next()
        .with_context(|| format!("{} resolves to no address", args.to))?;
    let mut policy = args.policy.build(scenario.cfg.clone())?;
    // Ctrl-C or SIGTERM cancels the migration: before its commit point the guest keeps
    // running here (exit 1); after it, the hand-over completes.
    let control = Control::new();
    let on_signal = control.clone();
    crate::signals::on_interrupt(move || on_signal.cancel())?;
    let guest = args.guest.start(&scenario)?;
    let failed = |e: anyhow::Error, guest: &SimGuest| {
        let (n, _) = guest.self_check();
        let line = format!(
            "migration failed; the guest keeps running on the source (self-check counter {n})"
        );
        if args.json {
            outcome::say(&outcome::json_failure(
                Outcome::FailedSourceRunning,
                &format!("{e:#}"),
                None,
            ));
        }
        outcome::ended(Outcome::FailedSourceRunning, format!("{line}: {e:#}"))
    };
    let mut stream = match livemig_engine::net::connect(addr, timeout) {
        Ok(s) => s,
        Err(e) => return Err(failed(e.into(), &guest)),
    };
    let mut progress = Progress::new(args.progress.unwrap_or(if args.json {
        ProgressFormat::None
    } else {
        ProgressFormat::Human
    }));
    let mut redial = || livemig_engine::net::connect(addr, timeout);
    let result = livemig_engine::migrate_measured(
        &mut stream,
        &key,
        &guest,
        policy.as_mut(),
        &send_cfg,
        &control,
        &mut |e| progress.observe(e),
        Some(&mut redial),
    );
    drop(stream);
    if let Err(e) = &result {
        progress.observe(&ended_event(e));
    }
    match result {
        Ok((report, _)) => {
            // Handed over: the destination runs the guest; the source's copy is destroyed.
            drop(guest);
            if args.json {
                outcome::say(&outcome::json_result(
                    &report,
                    Outcome::Migrated,
                    &Handover::migrated(),
                ));
            } else {
                outcome::say(&table::report(&report));
            }
            Ok(())
        }
        Err(e) if e.in_doubt() => {
            let session = e.session().unwrap_or("unknown").to_string();
            let why = format!("{:#}", anyhow::Error::new(e));
            let saved = save_hold(&args.hold_dir, &guest, &session, &why, &args.to);
            let (line, file) = match &saved {
                Ok(p) => (
                    format!(
                        "the paused guest is saved in {p}; settle it with `livemig resolve {p} --ask {} --key KEYFILE` once the destination answers, or see docs/protocol.md",
                        args.to
                    ),
                    Some(p.as_str()),
                ),
                Err(err) => (
                    format!(
                        "cannot save the paused guest ({err:#}); this process keeps it paused: do not kill it, settle the destination's side first"
                    ),
                    None,
                ),
            };
            if args.json {
                outcome::say(&outcome::json_failure(Outcome::Unknown, &why, file));
            }
            if saved.is_err() {
                // The only intact copy may be this one: keep it until someone decides.
                outcome::note(&format!("livemig: {why}"));
                outcome::note(&line);
                // Try again every 10 s (space freed, a directory fixed) until it is saved.
                let path = loop {
                    std::thread::sleep(std::time::Duration::from_secs(10));
                    if let Ok(p) = save_hold(&args.hold_dir, &guest, &session, &why, &args.to) {
                        break p;
                    }
                };
                return Err(outcome::ended(
                    Outcome::Unknown,
                    format!("{why}\nthe paused guest is now saved in {path}; see `livemig resolve {path}`"),
                ));
            }
            Err(outcome::ended(Outcome::Unknown, format!("{why}\n{line}")))
        }
        Err(e) => Err(failed(e.into(), &guest)),
    }
}

/// Saves the paused source guest of an unknown outcome; returns the file's path.
fn save_hold(
    dir: &std::path::Path,
    guest: &SimGuest,
    session: &str,
    why: &str,
    peer: &str,
) -> Result<String> {
    use livemig_engine::Guest as _;
    let info = livemig_engine::hold::HoldInfo {
        role: "source".into(),
        session: session.to_string(),
        peer: Some(peer.to_string()),
        memory_bytes: guest.memory().bytes(),
        digest: guest.memory().digest(),
        self_check: guest.self_check().0,
        reason: why.to_string(),
        saved_at_unix_s: livemig_engine::hold::now_unix_s(),
    };
    let path = dir.join(format!("livemig-{session}.source.lmhold"));
    livemig_engine::hold::save(&path, guest, &info)?;
    Ok(path.display().to_string())
}

/// The last event of a migration that did not hand over.
fn ended_event(e: &livemig_engine::SendError) -> livemig_policy::Event {
    use livemig_policy::Event;
    match e {
        livemig_engine::SendError::Cancelled { phase } => Event::Cancelled {
            phase: phase.to_string(),
        },
        e => Event::Failed {
            error: crate::out::error_chain(e),
            outcome: if e.in_doubt() {
                Outcome::Unknown
            } else {
                Outcome::FailedSourceRunning
            }
            .name()
            .to_string(),
        },
    }
}
