//! `livemig receive`: accept one migration, verify it, resume the guest.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use livemig_engine::{Guest, Key, Received, ReceiverConfig};
use livemig_workload::units;

/// `livemig receive` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (HOST:PORT; port 0 picks one and prints it).
    #[arg(long)]
    pub listen: String,
    /// Shared key file (64 hex digits), the same as the source's.
    #[arg(long)]
    pub key: PathBuf,
    /// The largest guest this host accepts.
    #[arg(long, default_value = "64GiB")]
    pub max_memory: String,
    /// Longest wait for the peer on any network operation once connected.
    #[arg(long, default_value = "10s")]
    pub timeout: String,
    /// Longest wait for a source to connect.
    #[arg(long, default_value = "600s")]
    pub accept_timeout: String,
    /// How long to let the resumed guest run before exiting (to show it continues).
    #[arg(long, default_value = "1s")]
    pub run_after: String,
}

fn duration(flag: &str, v: &str) -> Result<Duration> {
    let t = units::parse_duration(v).with_context(|| format!("--{flag}"))?;
    if !(t >= 0.0 && t.is_finite()) {
        bail!("--{flag} must be a non-negative duration");
    }
    Ok(Duration::from_secs_f64(t))
}

/// Shows that a received guest continues: its self-check counter before and after running.
pub fn show_continuation(r: &Received, run_for: Duration) -> String {
    let (before, _) = r.guest.self_check();
    r.guest.resume();
    std::thread::sleep(run_for);
    let (after, _) = r.guest.self_check();
    format!(
        "guest resumed on the destination: self-check counter {before} at hand-over, {after} after {} ({})",
        units::fmt_duration(run_for.as_secs_f64()),
        if after > before || run_for.is_zero() {
            "it continues"
        } else {
            "no writes: idle workload"
        }
    )
}

/// Runs `livemig receive`.
pub fn run(args: Args) -> Result<()> {
    let key = Key::load(&args.key)?;
    let cfg = ReceiverConfig {
        max_memory: units::parse_size(&args.max_memory)? as u64,
    };
    let timeout = duration("timeout", &args.timeout)?;
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let mut stream = livemig_engine::net::accept(
        &listener,
        duration("accept-timeout", &args.accept_timeout)?,
        timeout,
    )?;
    let received = livemig_engine::receive(&mut stream, &key, &cfg)
        .context("migration failed; partial guest state discarded")?;
    println!(
        "received {} of guest memory over {} pre-copy rounds; memory digest verified (xxh3 {:016x})",
        units::fmt_bytes(received.guest.memory().bytes() as f64),
        received.rounds,
        received.digest
    );
    println!(
        "{}",
        show_continuation(&received, duration("run-after", &args.run_after)?)
    );
    Ok(())
}
