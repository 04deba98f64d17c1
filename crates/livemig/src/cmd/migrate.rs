//! `livemig migrate`: migrate a simulated guest to a `livemig receive` over TCP.

use std::net::ToSocketAddrs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use livemig_engine::{Control, Key, SimGuest};
use livemig_policy::report::{MemoryAudit, MigrationReport};

use crate::args::{
    GuestArgs, PolicyArgs, PolicyName, ProgressArgs, TimeoutArgs, REAL_DEFAULT_POLICY,
};
use crate::outcome::{self, Handover, Outcome};
use crate::progress::Progress;
use crate::table;

/// `livemig migrate` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig migrate --to 198.18.0.2:7700 --key mig.key --memory 1GiB
  livemig migrate --to 198.18.0.2:7700 --key mig.key --policy dirty-factor --max-bandwidth 1Gbit/s
  livemig migrate --to dest:7700 --key mig.key --progress-timeout none --on-timeout force
  livemig migrate --to dest:7700 --key mig.key --workload idle --content mixed:80% --compress --json")]
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
    /// The bandwidth policy.
    #[arg(long, value_enum, default_value_t = REAL_DEFAULT_POLICY)]
    pub policy: PolicyName,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    #[command(flatten)]
    pub progress: ProgressArgs,
    /// Where to save the paused guest if the outcome is unknown (exit 3) or the audit after the
    /// resume failed (exit 6).
    #[arg(long, default_value = ".")]
    pub hold_dir: PathBuf,
    /// Print the result as JSON (bytes and bytes/s) instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Runs `livemig migrate`. Exit codes: 0 migrated, 1 failed (the guest runs on the source),
/// 2 usage, 3 unknown (the paused guest is saved to a hold file), 6 migrated but the audit
/// after the resume failed (the guest runs on the destination; the paused source copy is saved
/// to a hold file).
pub fn run(args: Args) -> Result<()> {
    let cfg = args.guest.policy_config(&args.settings)?;
    let timeouts = args.timeouts.timeouts()?;
    let progress_format = args.progress.format(args.json);
    let key = Key::load(&args.key)?;
    let timeout = args.guest.timeout()?;
    let send_cfg = args.guest.sender(&cfg, timeouts)?;
    if !args.hold_dir.is_dir() {
        bail!("--hold-dir {} is not a directory", args.hold_dir.display());
    }
    let addr = args
        .to
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", args.to))?
        .next()
        .with_context(|| format!("{} resolves to no address", args.to))?;
    let mut policy = args.policy.0.build(cfg.clone())?;
    tracing::info!(
        policy = %args.policy.0,
        memory_bytes = cfg.memory_bytes,
        to = %addr,
        "migration starts"
    );
    tracing::debug!(?cfg, ?send_cfg, ?timeouts, ?progress_format, "settings");
    // Ctrl-C or SIGTERM cancels the migration: before its commit point the guest keeps
    // running here (exit 1); after it, the hand-over completes.
    let control = Control::new();
    let on_signal = control.clone();
    crate::signals::on_interrupt(move || on_signal.cancel())?;
    let guest = args.guest.start(&cfg)?;
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
    let mut progress = Progress::new(progress_format);
    let mut redial = || livemig_engine::net::connect(addr, timeout).map(livemig_engine::net::boxed);
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
    match result {
        Ok((report, _)) => {
            tracing::info!(
                rounds = report.summary.rounds,
                total_time_s = report.summary.total_time_s,
                downtime_s = report.summary.downtime_s,
                "migrated"
            );
            if let Some(audit) = report.summary.audit.as_ref().filter(|a| !a.passed) {
                return audit_failed(&args, &report, audit, &guest);
            }
            // Handed over: the destination runs the guest; the source's copy is destroyed.
            drop(guest);
            if args.json {
                outcome::say(&outcome::json_result(
                    &report,
                    Outcome::Migrated,
                    &Handover::engine(&report),
                ));
            } else {
                outcome::say(&table::report(&report));
            }
            Ok(())
        }
        Err(e) if e.in_doubt() => {
            tracing::info!(error = %e, "outcome unknown");
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

/// Handed over, but the audit after the resume found pages of the paused copy that differ
/// from what the destination runs: the paused copy is kept in a hold file (the evidence, and
/// the only copy of those pages as the guest last wrote them), and the exit code is 6.
fn audit_failed(
    args: &Args,
    report: &MigrationReport,
    audit: &MemoryAudit,
    guest: &SimGuest,
) -> Result<()> {
    let why = table::audit_line(audit);
    tracing::error!(differing = audit.differing, pages = ?audit.differing_pages, "the audit failed");
    // No session id reaches a successful report: the file is named by the time instead.
    let session = format!("audit-{}", livemig_engine::hold::now_unix_s());
    let saved = save_hold_as(
        livemig_engine::hold::AUDIT_ROLE,
        &args.hold_dir,
        guest,
        &session,
        &why,
        &args.to,
    );
    let (line, file) = match &saved {
        Ok(p) => (
            format!("the paused source copy is saved in {p}; the guest runs on the destination (see docs/protocol.md, \"A failed audit\")"),
            Some(p.as_str()),
        ),
        Err(e) => (
            format!("the paused source copy cannot be saved ({e:#}); it is lost when this process ends"),
            None,
        ),
    };
    if args.json {
        let mut v = serde_json::from_str::<serde_json::Value>(&outcome::json_result(
            report,
            Outcome::MigratedAuditFailed,
            &Handover::engine(report),
        ))
        .unwrap_or_default();
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("hold_file".into(), file.into());
        }
        outcome::say(&serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        outcome::say(&table::report(report));
    }
    Err(outcome::ended(
        Outcome::MigratedAuditFailed,
        format!("{why}\n{line}"),
    ))
}

/// Saves the paused source guest of an unknown outcome; returns the file's path.
fn save_hold(
    dir: &std::path::Path,
    guest: &SimGuest,
    session: &str,
    why: &str,
    peer: &str,
) -> Result<String> {
    save_hold_as("source", dir, guest, session, why, peer)
}

/// [`save_hold`] under `role` (`source`, or the audit's, which is never resumed).
fn save_hold_as(
    role: &str,
    dir: &std::path::Path,
    guest: &SimGuest,
    session: &str,
    why: &str,
    peer: &str,
) -> Result<String> {
    use livemig_engine::Guest as _;
    let info = livemig_engine::hold::HoldInfo {
        role: role.into(),
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
