//! `livemig receive`: accept migrations until one succeeds, verify it, resume the guest.
//!
//! Every flag is parsed before the socket is bound, so that nothing can fail after a source
//! has handed its guest over. Peers that fail before proving the key (port scans, wrong keys,
//! stray or slow clients) are logged and the receiver waits for the next one, up to
//! `--max-refused` of them.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    /// Longest wait for the peer on any network operation once connected; also the deadline
    /// for the handshake and for any one frame.
    #[arg(long, default_value = "10s")]
    pub timeout: String,
    /// Longest wait for a source to connect (over all connection attempts).
    #[arg(long, default_value = "600s")]
    pub accept_timeout: String,
    /// How many peers may fail before proving the key (each is logged) before giving up.
    #[arg(long, default_value_t = 16)]
    pub max_refused: u32,
    /// How long to let the resumed guest run before exiting (to show it continues).
    #[arg(long, default_value = "1s")]
    pub run_after: String,
}

/// Parses a non-negative duration flag into a `Duration`, refusing values it cannot hold.
pub fn duration(flag: &str, v: &str) -> Result<Duration> {
    let t = units::parse_duration(v).with_context(|| format!("--{flag}"))?;
    if !(t >= 0.0 && t.is_finite()) {
        bail!("--{flag} must be a non-negative duration");
    }
    Duration::try_from_secs_f64(t)
        .map_err(|_| anyhow::anyhow!("--{flag} {v} is too long to represent"))
}

/// [`duration`], also refusing zero.
pub fn positive_duration(flag: &str, v: &str) -> Result<Duration> {
    let d = duration(flag, v)?;
    if d.is_zero() {
        bail!("--{flag} must be positive");
    }
    Ok(d)
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
    // Everything the user gave is checked here, before any source can connect.
    let key = Key::load(&args.key)?;
    let max_memory = units::parse_size(&args.max_memory).context("--max-memory")?;
    if !(max_memory >= 1.0 && max_memory < u64::MAX as f64) {
        bail!("--max-memory must be a positive size");
    }
    let timeout = positive_duration("timeout", &args.timeout)?;
    let accept_timeout = duration("accept-timeout", &args.accept_timeout)?;
    let run_after = duration("run-after", &args.run_after)?;
    if args.max_refused == 0 {
        bail!("--max-refused must be at least 1");
    }
    let cfg = ReceiverConfig {
        max_memory: max_memory as u64,
        handshake_deadline: timeout,
        frame_deadline: timeout,
    };
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut out = std::io::stdout();
    writeln!(out, "listening on {}", listener.local_addr()?)?;
    out.flush()?;
    let received = accept_one(
        &listener,
        &key,
        &cfg,
        accept_timeout,
        timeout,
        args.max_refused,
    )?;
    // Handed over: the source's copy is gone. Nothing here may fail or panic any more (a
    // closed stdout included), so write errors are ignored.
    let _ = writeln!(
        out,
        "received {} of guest memory over {} pre-copy rounds; memory digest verified (xxh3 {:016x})",
        units::fmt_bytes(received.guest.memory().bytes() as f64),
        received.rounds,
        received.digest
    );
    let _ = out.flush();
    let line = show_continuation(&received, run_after);
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    Ok(())
}

/// Accepts connections one at a time until a migration succeeds. A peer that fails before
/// proving the key is logged and the next one awaited (at most `max_refused` such peers); a
/// failure after authentication ends the receiver.
fn accept_one(
    listener: &TcpListener,
    key: &Key,
    cfg: &ReceiverConfig,
    accept_timeout: Duration,
    timeout: Duration,
    max_refused: u32,
) -> Result<Received> {
    let end = Instant::now().checked_add(accept_timeout);
    let mut refused = 0u32;
    loop {
        let left = end.map_or(accept_timeout, |e| {
            e.saturating_duration_since(Instant::now())
        });
        let mut stream = livemig_engine::net::accept(listener, left, timeout)?;
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "an unknown peer".to_string(), |a| a.to_string());
        match livemig_engine::receive(&mut stream, key, cfg) {
            Ok(r) => return Ok(r),
            Err(e) if e.before_auth() => {
                refused += 1;
                let why = anyhow::Error::new(e);
                if refused >= max_refused {
                    return Err(why.context(format!(
                        "refused {peer}; {refused} peers failed before proving the key, giving up"
                    )));
                }
                let _ = writeln!(
                    std::io::stderr(),
                    "refused {peer}: {why:#} ({refused} of at most {max_refused}); waiting for another source"
                );
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context("migration failed; partial guest state discarded"))
            }
        }
    }
}
