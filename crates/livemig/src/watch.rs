//! Watching one migration on the RMS: polls its view, prints each state change, placement
//! attempt and round as it arrives, and ends with an exit code that says how it ended.
//!
//! Exit codes ([`EXIT_CODES`]): 0 completed, 1 failed (the guest runs on the source),
//! 2 any error asking the RMS, 3 unknown (where the guest runs is not known), 4 cancelled,
//! 5 the watch timed out (the migration goes on), 130 Ctrl-C (the migration goes on).

use std::time::Duration;

use anyhow::{Context, Result};
use livemig_rms::{MigrationId, MigrationState, MigrationView};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use crate::ops_view;
use crate::out;
use crate::outcome::exit_with;
use crate::rms_client::{Answer, Rms};

/// The exit codes of a watch, as `--help` shows them.
pub const EXIT_CODES: &str =
    "Exit codes with --watch: 0 completed; 1 failed (the guest runs on the source);
2 usage error or the RMS could not be asked; 3 unknown (where the guest runs is not known
yet: `livemig migration show ID` later); 4 cancelled; 5 --watch-timeout passed (the migration
goes on); 130 Ctrl-C (stops watching, not the migration).";

/// Exit code: the migration failed; the guest runs on the source.
pub const FAILED: i32 = 1;
/// Exit code: where the guest runs is not known.
pub const UNKNOWN: i32 = 3;
/// Exit code: the migration was cancelled.
pub const CANCELLED: i32 = 4;
/// Exit code: the watch timed out before the migration ended.
pub const TIMED_OUT: i32 = 5;
/// Exit code: Ctrl-C stopped the watch.
pub const INTERRUPTED: i32 = 130;

/// The flags of a watch (`vm migrate --watch`, `migration watch`). Unset, they take the
/// defaults their help shows (so that `vm migrate` can tell them given without `--watch`).
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Stop watching after this long (the migration goes on; exit 5). [default: 10m]
    #[arg(long, value_name = "TIME")]
    pub watch_timeout: Option<String>,
    /// Time between two polls of the migration (at least 50ms). [default: 300ms]
    #[arg(long, value_name = "TIME")]
    pub watch_interval: Option<String>,
}

impl WatchArgs {
    /// Whether either flag was given.
    pub fn given(&self) -> bool {
        self.watch_timeout.is_some() || self.watch_interval.is_some()
    }

    /// The checked flags; `json` for NDJSON output.
    pub fn watch(&self, json: bool) -> Result<Watch> {
        let interval = crate::args::positive_duration(
            "watch-interval",
            self.watch_interval.as_deref().unwrap_or("300ms"),
        )?;
        if interval < Duration::from_millis(50) {
            anyhow::bail!("--watch-interval must be at least 50ms");
        }
        let timeout = crate::args::positive_duration(
            "watch-timeout",
            self.watch_timeout.as_deref().unwrap_or("10m"),
        )?;
        Ok(Watch {
            interval,
            timeout,
            json,
        })
    }
}

/// How to watch.
#[derive(Debug, Clone, Copy)]
pub struct Watch {
    /// Between two polls.
    pub interval: Duration,
    /// The whole watch's bound.
    pub timeout: Duration,
    /// NDJSON events and the final view instead of lines.
    pub json: bool,
}

/// What was printed so far.
#[derive(Debug, Default)]
struct Seen {
    state: Option<MigrationState>,
    attempts: usize,
    rounds: usize,
}

/// Whether a watch stops at `s`: the terminal states, and `unknown` (it waits for an agent or
/// an operator, which may take long).
pub fn ends_watch(s: MigrationState) -> bool {
    s.is_terminal() || s == MigrationState::Unknown
}

/// Polls migration `id` until it ends, Ctrl-C, or `w.timeout`; prints as it goes. Returns the
/// final view (its state is one where [`ends_watch`] holds), already printed.
pub async fn watch(rms: &Rms, id: MigrationId, w: Watch) -> Result<MigrationView> {
    let id_text = id.to_string();
    let path = ["api", "v1", "migrations", id_text.as_str()];
    let deadline = Instant::now() + w.timeout;
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install the Ctrl-C handler")?;
    let mut seen = Seen::default();
    let mut failing = false;
    loop {
        let polled = tokio::select! {
            r = rms.get::<MigrationView>(&path) => r,
            _ = interrupt.recv() => return Err(interrupted(id)),
            _ = tokio::time::sleep_until(deadline) => return Err(timed_out(id, &seen, w.timeout)),
        };
        match polled {
            Ok(answer) => {
                if failing {
                    out::note("livemig: the RMS answers again");
                    failing = false;
                }
                show(&answer, &mut seen, w.json)?;
                if ends_watch(answer.value.state) {
                    return Ok(answer.value);
                }
            }
            Err(e) if e.is_transient() => {
                if !failing {
                    out::note(&format!("livemig: {e}; still watching"));
                    failing = true;
                }
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = tokio::time::sleep(w.interval) => {}
            _ = interrupt.recv() => return Err(interrupted(id)),
            _ = tokio::time::sleep_until(deadline) => return Err(timed_out(id, &seen, w.timeout)),
        }
    }
}

/// The exit status of a finished watch: `Ok` on completed, else an error with its code.
pub fn finish(view: &MigrationView) -> Result<()> {
    let (code, what) = match view.state {
        MigrationState::Completed => return Ok(()),
        MigrationState::Failed => (FAILED, "failed; the guest runs on the source"),
        MigrationState::Cancelled => (CANCELLED, "was cancelled; the guest runs on the source"),
        _ => (
            UNKNOWN,
            "ended with its outcome unknown: where the guest runs is not known yet",
        ),
    };
    let why = view
        .error
        .as_deref()
        .map(|e| format!(" ({e})"))
        .unwrap_or_default();
    Err(exit_with(
        code,
        format!("migration {} of {} {what}{why}", view.id, view.vm),
    ))
}

fn interrupted(id: MigrationId) -> anyhow::Error {
    exit_with(
        INTERRUPTED,
        format!(
            "stopped watching migration {id}; it goes on. Watch again: livemig migration watch {id}; cancel it: livemig migration cancel {id}"
        ),
    )
}

fn timed_out(id: MigrationId, seen: &Seen, after: Duration) -> anyhow::Error {
    let state = seen.state.map_or("not seen yet", ops_view::state);
    exit_with(
        TIMED_OUT,
        format!(
            "stopped watching migration {id} after {} (--watch-timeout); it is {state} and goes on. Watch again: livemig migration watch {id}",
            livemig_workload::units::fmt_duration(after.as_secs_f64())
        ),
    )
}

/// Prints what is new in `answer` since `seen`.
fn show(answer: &Answer<MigrationView>, seen: &mut Seen, json: bool) -> Result<()> {
    let m = &answer.value;
    let emit = |line: String| out::emit_line(&line);
    if seen.state.is_none() && !json {
        emit(format!(
            "migration {}: vm {} from {}, policy {}",
            m.id, m.vm, m.source, m.policy
        ))?;
    }
    // A new state first, but an ending one last: its rounds come before `completed`.
    let changed = seen.state != Some(m.state);
    seen.state = Some(m.state);
    let state_line = || {
        if json {
            json!({
                "event": "state",
                "id": m.id,
                "state": ops_view::state(m.state),
                "source": m.source,
                "target": m.target,
            })
            .to_string()
        } else {
            match &m.target {
                Some(t) => format!("{} ({} -> {t})", ops_view::state(m.state), m.source),
                None => ops_view::state(m.state).to_string(),
            }
        }
    };
    if changed && !ends_watch(m.state) {
        emit(state_line())?;
    }
    for (i, a) in m.attempts.iter().enumerate().skip(seen.attempts) {
        emit(if json {
            event(m, "attempt", "attempt", &answer.json["attempts"][i])
        } else {
            format!("asked {}", ops_view::attempt(a))
        })?;
    }
    seen.attempts = seen.attempts.max(m.attempts.len());
    for (i, r) in m.rounds.iter().enumerate().skip(seen.rounds) {
        emit(if json {
            event(m, "round", "round", &answer.json["rounds"][i])
        } else {
            ops_view::round_line(r)
        })?;
    }
    seen.rounds = seen.rounds.max(m.rounds.len());
    if changed && ends_watch(m.state) {
        emit(state_line())?;
    }
    if ends_watch(m.state) {
        if json {
            emit(answer.json.to_string())?;
        } else {
            if let Some(e) = &m.error {
                emit(format!("error: {e}"))?;
            }
            if let Some(r) = &m.report {
                emit(crate::table::summary(r))?;
            }
        }
    }
    Ok(())
}

/// One NDJSON event line: `{"event": kind, "id": .., key: value}`.
fn event(m: &MigrationView, kind: &str, key: &str, value: &Value) -> String {
    let mut e = serde_json::Map::new();
    e.insert("event".into(), Value::from(kind));
    e.insert("id".into(), json!(m.id));
    e.insert(key.into(), value.clone());
    Value::Object(e).to_string()
}
