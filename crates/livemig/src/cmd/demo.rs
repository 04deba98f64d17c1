//! `livemig demo`: both ends on loopback with a generated key, live progress, the round table.

use std::net::TcpListener;
use std::time::Duration;

use anyhow::{Context, Result};
use livemig_engine::{net, Key, ReceiverConfig};
use livemig_policy::PolicyKind;

use crate::cmd::migrate::GuestArgs;
use crate::cmd::receive::show_continuation;
use crate::cmd::simulate::PolicyArgs;
use crate::progress::Progress;
use crate::table;

/// `livemig demo` flags (defaults finish in seconds on a small machine).
#[derive(Debug, clap::Args)]
#[command(
    mut_arg("min_bandwidth", |a| a.default_value("400Mbit/s")),
    mut_arg("stop_remaining", |a| a.default_value("8MiB"))
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
}

/// Runs `livemig demo`.
pub fn run(args: Args) -> Result<()> {
    let scenario = args
        .settings
        .resolve(&args.guest.memory, &args.guest.workload)?;
    let timeout = args.guest.timeout()?;
    let key = Key::generate()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let dest_key = key.clone();
    let dest = std::thread::spawn(move || -> Result<livemig_engine::Received> {
        let mut s = net::accept(&listener, timeout, timeout)?;
        Ok(livemig_engine::receive(
            &mut s,
            &dest_key,
            &ReceiverConfig {
                handshake_deadline: timeout,
                frame_deadline: timeout,
                ..ReceiverConfig::default()
            },
        )?)
    });
    let guest = args.guest.start(&scenario)?;
    if !args.json {
        eprintln!(
            "demo: {} guest, workload {}, policy {}, destination on {addr}",
            livemig_workload::units::fmt_bytes(scenario.cfg.memory_bytes),
            args.guest.workload,
            args.policy
        );
    }
    let mut stream = net::connect(addr, timeout)?;
    let mut policy = args.policy.build(scenario.cfg.clone())?;
    let mut progress = Progress::new(args.json);
    let sent = livemig_engine::migrate(
        &mut stream,
        &key,
        &guest,
        policy.as_mut(),
        &args.guest.sender(&scenario)?,
        &mut |e| progress.observe(e),
    );
    drop(stream);
    let received = dest
        .join()
        .map_err(|_| anyhow::anyhow!("the destination thread panicked"))?;
    let report = sent.context("migration failed; the guest keeps running on the source")?;
    let received = received.context("the destination failed")?;
    drop(guest);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", table::report(&report));
        println!(
            "{}",
            show_continuation(&received, Duration::from_millis(500))
        );
    }
    Ok(())
}
