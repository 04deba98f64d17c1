//! `livemig demo`: both ends on loopback with a generated key, live progress, the round table;
//! with `--hosts N`, the whole system (RMS and N agents) on loopback ([`system`]).

mod system;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use livemig_engine::serve::{ServeConfig, Served};
use livemig_engine::{net, Control, Key, ReceiverConfig};

use crate::args::{
    help, GuestArgs, PolicyArgs, PolicyName, ProgressArgs, TimeoutArgs, REAL_DEFAULT_POLICY,
};
use crate::outcome::{self, show_continuation, Handover, Outcome};
use crate::progress::Progress;
use crate::table;

/// `livemig demo` flags (defaults finish in seconds on a small machine).
#[derive(Debug, clap::Args)]
#[command(
    // The shared flags name their defaults in their help; the demo's own defaults replace both.
    mut_arg("min_bandwidth", |a| a.default_value("400Mbit/s").help(help::MIN_BANDWIDTH)),
    mut_arg("stop_remaining", |a| a.default_value("8MiB").help(help::STOP_REMAINING))
)]
#[command(after_long_help = "Examples:
  livemig demo
  livemig demo --policy dirty-factor --memory 512MiB
  livemig demo --workload uniform:rate=64MiB/s --compress --json
  livemig demo --hosts 3

With --hosts N it starts the whole system on loopback instead: `livemig rms` and N
`livemig agent` processes with a fresh token, creates a VM on host-1, asks the RMS to move
it, follows the migration round by round, shows where the VMs run, and stops everything.")]
pub struct Args {
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
    /// Print the result as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Run the whole system instead: the RMS and this many agents on loopback (2 to 8).
    #[arg(long, value_name = "N")]
    pub hosts: Option<usize>,
}

/// Runs `livemig demo`.
pub fn run(args: Args) -> Result<()> {
    if let Some(hosts) = args.hosts {
        return system::run(system::Plan {
            hosts,
            memory: args.guest.memory.clone(),
            workload: args.guest.workload.clone(),
            policy: args.policy.0.to_string(),
            json: args.json,
        });
    }
    let cfg = args.guest.policy_config(&args.settings)?;
    let timeouts = args.timeouts.timeouts()?;
    let progress_format = args.progress.format(args.json);
    let timeout = args.guest.timeout()?;
    let send_cfg = args.guest.sender(&cfg, timeouts)?;
    let mut policy = args.policy.0.build(cfg.clone())?;
    tracing::debug!(
        ?cfg,
        ?send_cfg,
        ?timeouts,
        ?progress_format,
        "demo settings"
    );
    let key = Key::generate()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let dest_key = key.clone();
    let serve_cfg = ServeConfig {
        receiver: ReceiverConfig {
            handshake_deadline: timeout,
            frame_deadline: timeout,
            ..ReceiverConfig::default()
        },
        timeout,
        accept_timeout: timeout,
        hold_timeout: send_cfg.resolve_timeout * 2,
        ..ServeConfig::default()
    };
    // Ctrl-C or SIGTERM stops both ends cleanly: the source cancels (the guest keeps running
    // there unless the hand-over was already committed) and the destination stops serving.
    let control = Control::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (on_cancel, on_stop) = (control.clone(), Arc::clone(&stop));
    crate::signals::on_interrupt(move || {
        on_cancel.cancel();
        on_stop.store(true, Ordering::Relaxed);
    })?;
    let dest = std::thread::spawn(move || {
        livemig_engine::serve(&listener, &dest_key, &serve_cfg, &stop, &|_| {})
    });
    let guest = args.guest.start(&cfg)?;
    if !args.json {
        outcome::note(&format!(
            "demo: {} guest, workload {}, policy {}, destination on {addr}",
            livemig_workload::units::fmt_bytes(cfg.memory_bytes),
            args.guest.workload,
            args.policy.0
        ));
    }
    let mut stream = net::connect(addr, timeout).map_err(|e| {
        outcome::ended(
            Outcome::FailedSourceRunning,
            format!(
                "cannot reach the demo's destination; the guest keeps running on the source: {:#}",
                anyhow::Error::new(e)
            ),
        )
    })?;
    let mut progress = Progress::new(progress_format);
    let mut redial = || net::connect(addr, timeout).map(net::boxed);
    let sent = livemig_engine::migrate_measured(
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
    let served = dest
        .join()
        .map_err(|_| anyhow::anyhow!("the destination thread panicked"))?;
    let (report, _) = match sent {
        Ok(r) => r,
        Err(e) if e.in_doubt() => {
            return Err(outcome::ended(
                Outcome::Unknown,
                format!("{:#}", anyhow::Error::new(e)),
            ))
        }
        Err(e) => {
            return Err(outcome::ended(
                Outcome::FailedSourceRunning,
                format!(
                    "migration failed; the guest keeps running on the source: {:#}",
                    anyhow::Error::new(e)
                ),
            ))
        }
    };
    let received = match served {
        Ok(Served::Migrated(r)) => r,
        Ok(other) => {
            return Err(outcome::ended(
                Outcome::Unknown,
                format!("the source handed over but the destination reports {other:?}"),
            ))
        }
        Err(e) => {
            return Err(outcome::ended(
                Outcome::Unknown,
                format!(
                    "the source handed over but the destination failed: {:#}",
                    anyhow::Error::new(e)
                ),
            ))
        }
    };
    drop(guest);
    tracing::info!(
        rounds = report.summary.rounds,
        total_time_s = report.summary.total_time_s,
        downtime_s = report.summary.downtime_s,
        "migrated"
    );
    let audit_failed = report.summary.audit.as_ref().is_some_and(|a| !a.passed);
    let out = if audit_failed {
        Outcome::MigratedAuditFailed
    } else {
        Outcome::Migrated
    };
    if args.json {
        outcome::say(&outcome::json_result(
            &report,
            out,
            &Handover::engine(&report),
        ));
    } else {
        outcome::say(&table::report(&report));
        outcome::say(&show_continuation(&received, Duration::from_millis(500)));
    }
    if audit_failed {
        // The demo keeps nothing: its paused source is gone with the process.
        return Err(outcome::ended(
            out,
            "the audit after the resume failed (see above); exit 6".into(),
        ));
    }
    Ok(())
}
