//! `livemig resolve`: settle a hand-over whose outcome is unknown, from a hold file.
//!
//! A hold file is an intact paused copy that one end saved when it could not learn the other's
//! outcome. Without an action it prints what the file holds and what to do. `--ask` (on the
//! source's file) reconnects to the destination and commits the session as the protocol would
//! have: if the destination runs the guest (or resumes the copy it still holds) the source's
//! copy is deleted; any other answer leaves the outcome unknown and the file in place. `--resume`
//! and `--discard` are the operator's manual decisions: resume exactly one copy, discard the
//! other.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use livemig_engine::hold;
use livemig_engine::wire::{ResolveDecision, ResolveStatus, SESSION_ID_LEN};
use livemig_engine::{Guest, Key};

use crate::outcome::{self, Outcome};

/// `livemig resolve` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig resolve livemig-SESSION.source.lmhold
  livemig resolve livemig-SESSION.source.lmhold --ask 198.18.0.2:7700 --key mig.key
  livemig resolve livemig-SESSION.destination.lmhold --discard   # the source runs the guest
  livemig resolve livemig-SESSION.source.lmhold --resume         # only if no other copy runs")]
pub struct Args {
    /// The hold file.
    pub file: PathBuf,
    /// Ask the destination at this address (HOST:PORT, a `livemig receive` still holding the
    /// session) to run the guest; the source's copy is deleted when it does (source's hold
    /// file only).
    #[arg(long, conflicts_with_all = ["resume", "discard"], requires = "key")]
    pub ask: Option<String>,
    /// The shared key file, for --ask.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Resume this copy here. Only when the other end does not run the guest and never will.
    #[arg(long, conflicts_with = "discard")]
    pub resume: bool,
    /// Delete this copy. Only when the other end runs the guest (or resumes it).
    #[arg(long)]
    pub discard: bool,
    /// Deadline of every network operation (with --ask), and how long --ask keeps trying.
    #[arg(long, default_value = "10s")]
    pub timeout: String,
    /// How long to let a resumed guest run before exiting (to show it continues).
    #[arg(long, default_value = "1s")]
    pub run_after: String,
}

/// Runs `livemig resolve`.
pub fn run(args: Args) -> Result<()> {
    let timeout = crate::args::positive_duration("timeout", &args.timeout)?;
    let run_after = crate::args::duration("run-after", &args.run_after)?;
    let info = hold::info(&args.file)?;
    let shown = args.file.display().to_string();
    if let Some(addr) = &args.ask {
        if info.role != "source" {
            bail!(
                "--ask settles a source's hold file; {shown} was saved by the {}",
                info.role
            );
        }
        let key = Key::load(args.key.as_deref().context("--ask needs --key")?)?;
        let addr = addr
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {addr}"))?
            .next()
            .with_context(|| format!("{addr} resolves to no address"))?;
        let id = session_bytes(&info.session).with_context(|| {
            format!("{shown}: the session id is not {SESSION_ID_LEN} hex bytes")
        })?;
        let mut dial =
            || livemig_engine::net::connect(addr, timeout).map(livemig_engine::net::boxed);
        let status = livemig_engine::sender::resolve(
            &mut dial,
            &key,
            &id,
            ResolveDecision::Commit,
            timeout,
            Instant::now() + timeout * 3,
        );
        return match status {
            Ok(ResolveStatus::Running) => match std::fs::remove_file(&args.file) {
                Ok(()) => {
                    outcome::say(&format!(
                        "the destination runs the guest (session {}); the source's copy {shown} is deleted",
                        info.session
                    ));
                    Ok(())
                }
                // The guest runs on the destination (exit 0), but the file must not be resumed.
                Err(e) => Err(outcome::ended(
                    Outcome::Migrated,
                    format!(
                        "the destination runs the guest, but {shown} cannot be deleted ({e}); delete it by hand and never resume it"
                    ),
                )),
            },
            // Only `Running` settles a committed hand-over: `Unknown` comes from a process that
            // never held the session (a restarted receiver, whose predecessor may run the
            // guest), and `Discarded` cannot answer a commit. The copy is kept.
            other => Err(outcome::ended(
                Outcome::Unknown,
                format!(
                    "still unknown: the destination did not say it runs the guest ({}); {shown} is kept. If you know the destination does not run it and holds no copy, `livemig resolve {shown} --resume`",
                    other.map_or_else(
                        |e| format!("{:#}", anyhow::Error::new(e)),
                        |s| format!("answered {s:?}")
                    )
                ),
            )),
        };
    }
    if args.resume {
        if info.role == livemig_engine::hold::AUDIT_ROLE {
            bail!(
                "{shown} is the paused source of session {} kept after a failed audit: the destination runs this guest, so resuming this copy would run it twice. Keep it to inspect the pages the audit named, or `--discard` it",
                info.session
            );
        }
        resume(&args.file, run_after)?;
        return Ok(());
    }
    if args.discard {
        std::fs::remove_file(&args.file).with_context(|| format!("cannot delete {shown}"))?;
        outcome::say(&format!("discarded {shown} (session {})", info.session));
        return Ok(());
    }
    outcome::say(&format!(
        "{shown}: a paused copy saved by the {} of session {}\n  memory {} bytes, xxh3 {:016x}, self-check counter {}\n  why: {}\n  settle it: on the source's file `livemig resolve {shown} --ask DEST:PORT --key KEYFILE`; or by hand: `--resume` this copy only if the other end does not run the guest, `--discard` it if the other end does",
        info.role,
        info.session,
        info.memory_bytes,
        info.digest,
        info.self_check,
        livemig_engine::wire::printable(&info.reason),
    ));
    Ok(())
}

fn session_bytes(hex: &str) -> Option<[u8; SESSION_ID_LEN]> {
    if hex.len() != 2 * SESSION_ID_LEN || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut id = [0u8; SESSION_ID_LEN];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

/// Loads the copy (checked against its digest), takes the file out of the way, resumes the
/// guest, lets it run, deletes the file. The file is renamed *before* the guest resumes, so that
/// a failure can never leave a resumable file behind a guest that ran: if the rename fails,
/// nothing is started (exit 2).
fn resume(file: &std::path::Path, run_after: Duration) -> Result<()> {
    let (info, guest) = hold::load(file, livemig_engine::hostmem::holdable_bytes())?;
    let mut taken = file.as_os_str().to_owned();
    taken.push(".resumed");
    let taken = PathBuf::from(taken);
    std::fs::rename(file, &taken).with_context(|| {
        format!(
            "cannot move {} out of the way before resuming; nothing was started",
            file.display()
        )
    })?;
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}; nothing was started", dir.display()))?;
    guest.resume();
    std::thread::sleep(run_after);
    let (after, _) = guest.self_check();
    let gone = match std::fs::remove_file(&taken) {
        Ok(()) => format!("{} deleted", file.display()),
        Err(e) => format!(
            "{} could not be deleted ({e}); it is not a hold file any more, delete it",
            taken.display()
        ),
    };
    outcome::say(&format!(
        "resumed session {}: self-check counter {} when held, {after} after {}; {gone}",
        info.session,
        info.self_check,
        livemig_workload::units::fmt_duration(run_after.as_secs_f64()),
    ));
    Ok(())
}
