//! `livemig demo`: both ends on loopback with a generated key, live progress, the round table.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use livemig_engine::serve::{ServeConfig, Served};
use livemig_engine::{net, Control, Key, ReceiverConfig};
use livemig_policy::PolicyKind;

use crate::cmd::migrate::GuestArgs;
use crate::cmd::receive::show_continuation;
use crate::cmd::simulate::PolicyArgs;
use crate::outcome::{self, Handover, Outcome};
use crate::progress::{Progress, ProgressFormat};
use crate::table;

/// `livemig demo` flags (defaults finish in seconds on a small machine).
#[derive(Debug, clap::Args)]
#[command(
    // The shared flags name their defaults in their help; the demo's own defaults replace both.
    mut_arg("min_bandwidth", |a| a.default_value("400Mbit/s").help("B_min.")),
    mut_arg("stop_remaining", |a| a
        .default_value("8MiB")
        .help("Stop level h: pre-copy ends when at most this much remains dirty."))
)]
pub struct Args {
    #[command(flatten)]
    pub guest: GuestArgs,
    #[command(flatten)]
    pub settings: PolicyArgs,
    /// Policy: dirty-factor (the method), predictive, xen, xen-v2, qemu, fixed.
    #[arg(long, default_value = "dirty-factor")]
    pub policy: PolicyKind,
    /// Print the result as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Live progress on stderr: `human` (bars and lines), `json` (one JSON event per line,
    /// NDJSON, for scripts) or `none`. [default: human; none with --json]
    #[arg(long, value_enum)]
    pub progress: Option<ProgressFormat>,
}

/// Runs `livemig demo`.
pub fn run(args: Args) -> Result<()> {
    let scenario = args
        .settings
        .resolve(&args.guest.memory, &args.guest.workload)?;
    let timeout = args.guest.timeout()?;
    let send_cfg = args.guest.sender(&scenario)?;
    let mut policy = args.policy.build(scenario.cfg.clone())?;
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
    let guest = args.guest.start(&scenario)?;
    if !args.json {
        outcome::note(&format!(
            "demo: {} guest, workload {}, policy {}, destination on {addr}",
            livemig_workload::units::fmt_bytes(scenario.cfg.memory_bytes),
            args.guest.workload,
            args.policy
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
    let mut progress = Progress::new(args.progress.unwrap_or(if args.json {
        ProgressFormat::None
    } else {
        ProgressFormat::Human
    }));
    let mut redial = || net::connect(addr, timeout);
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
    if args.json {
        outcome::say(&outcome::json_result(
            &report,
            Outcome::Migrated,
            &Handover::migrated(),
        ));
    } else {
        outcome::say(&table::report(&report));
        outcome::say(&show_continuation(&received, Duration::from_millis(500)));
    }
    Ok(())
}
