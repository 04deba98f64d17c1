//! `livemig receive`: serve a migration, verify it, run the guest once the source commits.
//!
//! Every flag is parsed before the socket is bound, so that nothing can fail after a source
//! has handed its guest over. Connections are served concurrently (a small bound); peers that
//! fail before proving the key are logged at a bounded rate and never end the receiver. Exit
//! codes: 0 migrated, 1 failed (nothing kept here; the guest runs on the source), 2 usage,
//! 3 unknown (the verified copy is held, saved to a hold file).

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use livemig_engine::hold::{self, HoldInfo};
use livemig_engine::sender::hex;
use livemig_engine::serve::{ServeConfig, ServeEvent, Served};
use livemig_engine::{Guest, Key, ReceiverConfig};
use livemig_policy::Event;
use livemig_workload::units;

use crate::args::{duration, positive_duration, ProgressArgs};
use crate::outcome::{self, show_continuation, Outcome};
use crate::progress::{Progress, ProgressFormat};

/// `livemig receive` flags.
#[derive(Debug, clap::Args)]
#[command(mut_arg("progress", |a| a.help(
    "Live progress on stderr: `human`, `json` (one JSON event per line, NDJSON, for scripts) \
     or `none` (refusals are still reported). [default: human; none with --json]"
)))]
#[command(after_long_help = "Examples:
  livemig receive --listen 0.0.0.0:7700 --key mig.key
  livemig receive --listen 198.18.0.2:7700 --key mig.key --max-memory 8GiB --hold-dir /srv
  livemig receive --listen 127.0.0.1:0 --key mig.key --json   # port 0: prints the one it took")]
pub struct Args {
    /// Address to listen on (HOST:PORT; port 0 picks one and prints it).
    #[arg(long)]
    pub listen: String,
    /// Shared key file (64 hex digits), the same as the source's.
    #[arg(long)]
    pub key: PathBuf,
    /// The largest guest this host accepts; `host` is what the host can hold now (available
    /// memory, cgroup limit and address-space limit, the smallest).
    #[arg(long, default_value = "host")]
    pub max_memory: String,
    /// Deadline of the handshake, of every frame and of every keep-alive gap.
    #[arg(long, default_value = "10s")]
    pub timeout: String,
    /// Longest wait for a source to start a migration (over all connections).
    #[arg(long, default_value = "600s")]
    pub accept_timeout: String,
    /// Peers that have not proved the key yet, served at once; a new one closes the oldest
    /// (a real source proves the key in milliseconds, so junk cannot keep it out).
    #[arg(long, default_value_t = 8)]
    pub max_connections: usize,
    /// How long a verified copy whose hand-over was interrupted waits for its source to
    /// reconnect and settle it, before the outcome is unknown (exit 3).
    #[arg(long, default_value = "300s")]
    pub hold_timeout: String,
    /// Where to save the held copy if the outcome is unknown.
    #[arg(long, default_value = ".")]
    pub hold_dir: PathBuf,
    /// How long to let the resumed guest run before exiting (to show it continues).
    #[arg(long, default_value = "1s")]
    pub run_after: String,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

/// The destination's memory limit from `--max-memory`.
pub fn max_memory(v: &str) -> Result<u64> {
    if v == "host" {
        return Ok(livemig_engine::hostmem::holdable_bytes());
    }
    let m = units::parse_size(v).context("--max-memory")?;
    if !(m >= 4096.0 && m < u64::MAX as f64) {
        bail!("--max-memory must be at least one page (4KiB)");
    }
    Ok(m as u64)
}

/// Runs `livemig receive`.
pub fn run(args: Args) -> Result<()> {
    // Everything the user gave is checked here, before any source can connect.
    let key = Key::load(&args.key)?;
    let max_memory = max_memory(&args.max_memory)?;
    let timeout = positive_duration("timeout", &args.timeout)?;
    let accept_timeout = duration("accept-timeout", &args.accept_timeout)?;
    let hold_timeout = positive_duration("hold-timeout", &args.hold_timeout)?;
    let run_after = duration("run-after", &args.run_after)?;
    if args.max_connections == 0 || args.max_connections > 1024 {
        bail!("--max-connections must be between 1 and 1024");
    }
    if !args.hold_dir.is_dir() {
        bail!("--hold-dir {} is not a directory", args.hold_dir.display());
    }
    tracing::debug!(
        listen = %args.listen,
        max_memory,
        ?timeout,
        ?accept_timeout,
        ?hold_timeout,
        progress = ?args.progress.format(args.json),
        "receiver settings"
    );
    let cfg = ServeConfig {
        receiver: ReceiverConfig {
            max_memory,
            handshake_deadline: timeout,
            frame_deadline: timeout,
            ..ReceiverConfig::default()
        },
        timeout,
        accept_timeout,
        max_connections: args.max_connections,
        hold_timeout,
        ..ServeConfig::default()
    };
    // Ctrl-C or SIGTERM stops the receiver cleanly: before a migration, or during one before
    // the copy is verified, nothing is kept (exit 1); a verified copy awaiting its source's
    // word is saved to a hold file at once (exit 3); a guest already running here stays (0).
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let on_stop = std::sync::Arc::clone(&stop);
    crate::signals::on_interrupt(move || {
        on_stop.store(true, std::sync::atomic::Ordering::Relaxed)
    })?;
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?.to_string();
    outcome::say(&format!("listening on {address}"));
    let format = args.progress.format(args.json);
    let progress = std::sync::Mutex::new(Progress::new(format));
    let show = |e: &Event| {
        if let Ok(mut p) = progress.lock() {
            p.observe(e);
        }
    };
    // People already read "listening on" on stdout; programs get it as an event too.
    if format == ProgressFormat::Json {
        show(&Event::Listening { address });
    }
    let log = |e: &ServeEvent<'_>| {
        if format == ProgressFormat::Json {
            show(&event_of(e));
        } else {
            log_event(e, &show);
        }
    };
    let served =
        livemig_engine::serve(&listener, &key, &cfg, stop.as_ref(), &log).map_err(|e| {
            outcome::ended(
                Outcome::FailedSourceRunning,
                format!("{:#}", anyhow::Error::new(e)),
            )
        })?;
    match served {
        Served::Migrated(received) => {
            show(&Event::Resumed {
                session: hex(&received.session),
            });
            // The guest runs here now. Nothing may fail or panic any more (a closed stdout
            // included): output errors are ignored.
            let line = format!(
                "received {} of guest memory over {} pre-copy rounds; every page verified (hand-over digest {:016x}); the source committed",
                units::fmt_bytes(received.guest.memory().bytes() as f64),
                received.rounds,
                received.digest
            );
            if args.json {
                outcome::say(
                    &serde_json::json!({
                        "outcome": Outcome::Migrated,
                        "session": hex(&received.session),
                        "memory_bytes": received.guest.memory().bytes(),
                        "rounds": received.rounds,
                        "digest": format!("{:016x}", received.digest),
                        "handover": crate::outcome::Handover::migrated(),
                    })
                    .to_string(),
                );
            } else {
                outcome::say(&line);
            }
            let cont = show_continuation(&received, run_after);
            if !args.json {
                outcome::say(&cont);
            }
            Ok(())
        }
        Served::Failed(e) => {
            let why = format!("{:#}", anyhow::Error::new(e));
            show(&Event::Failed {
                error: why.clone(),
                outcome: Outcome::FailedSourceRunning.name().into(),
            });
            if args.json {
                outcome::say(&outcome::json_failure(
                    Outcome::FailedSourceRunning,
                    &why,
                    None,
                ));
            }
            Err(outcome::ended(
                Outcome::FailedSourceRunning,
                format!("migration failed; nothing is kept here and the guest runs on the source: {why}"),
            ))
        }
        Served::Unknown(held) => {
            let session = hex(&held.session);
            let why = format!("{:#}", anyhow::Error::new(held.reason));
            show(&Event::Failed {
                error: why.clone(),
                outcome: Outcome::Unknown.name().into(),
            });
            let info = HoldInfo {
                role: "destination".into(),
                session: session.clone(),
                peer: None,
                memory_bytes: held.guest.memory().bytes(),
                digest: held.digest,
                self_check: held.guest.self_check().0,
                reason: why.clone(),
                saved_at_unix_s: hold::now_unix_s(),
            };
            let path = args
                .hold_dir
                .join(format!("livemig-{session}.destination.lmhold"));
            let saved = hold::save(&path, &held.guest, &info);
            let shown = path.display().to_string();
            if args.json {
                outcome::say(&outcome::json_failure(
                    Outcome::Unknown,
                    &why,
                    saved.is_ok().then_some(shown.as_str()),
                ));
            }
            if let Err(e) = saved {
                outcome::note(&format!(
                    "livemig: outcome unknown and the held copy cannot be saved ({:#}); this process keeps it paused and tries again every 10 s: do not kill it",
                    anyhow::Error::new(e)
                ));
                while hold::save(&path, &held.guest, &info).is_err() {
                    std::thread::sleep(Duration::from_secs(10));
                }
            }
            Err(outcome::ended(
                Outcome::Unknown,
                format!(
                    "outcome unknown: a verified copy of session {session} is held paused in {shown} and its source did not settle it within --hold-timeout ({why}); see `livemig resolve {shown}`"
                ),
            ))
        }
    }
}

/// The accept loop's event as the one event type (`--progress json`).
fn event_of(e: &ServeEvent<'_>) -> Event {
    match e {
        ServeEvent::Refused { peer, error, .. } => Event::Discarded {
            peer: peer.to_string(),
            reason: format!("refused: {}", crate::out::error_chain(*error)),
        },
        ServeEvent::TooMany { peer } => Event::Discarded {
            peer: peer.to_string(),
            reason: "closed: too many connections at once".into(),
        },
        ServeEvent::Holding { reason } => Event::Held {
            reason: crate::out::error_chain(*reason),
        },
        ServeEvent::Resuming { .. } => Event::Verified {
            how: "every page's xxh3 digest matched the source's, and the source committed".into(),
        },
        ServeEvent::Settled { status } => Event::Settled {
            status: format!("{status:?}"),
        },
        ServeEvent::Claimed { peer } => Event::Accepted {
            peer: peer.to_string(),
        },
        ServeEvent::Received { round, pages, .. } => Event::Received {
            round: *round,
            pages: *pages,
        },
    }
}

/// Logs the accept loop's events on stderr for people (peer text is escaped by the wire
/// decoder); refusals are reported whatever the progress format, the rest through `show`.
fn log_event(e: &ServeEvent<'_>, show: &dyn Fn(&Event)) {
    match e {
        ServeEvent::Refused {
            peer,
            error,
            suppressed,
        } => {
            let more = if *suppressed > 0 {
                format!(" ({suppressed} more refusals not shown)")
            } else {
                String::new()
            };
            outcome::note(&format!(
                "refused {peer}: {}{more}; still waiting for a source",
                crate::out::error_chain(*error)
            ));
        }
        ServeEvent::TooMany { peer } => {
            outcome::note(&format!("closed {peer}: too many connections at once"));
        }
        ServeEvent::Holding { reason } => outcome::note(&format!(
            "the hand-over was interrupted after the copy verified ({reason}); holding it paused until the source settles it"
        )),
        ServeEvent::Settled { status } => {
            outcome::note(&format!("a reconnecting source settled the hand-over: {status:?}"))
        }
        ServeEvent::Resuming { .. } | ServeEvent::Claimed { .. } | ServeEvent::Received { .. } => {
            show(&event_of(e))
        }
    }
}
