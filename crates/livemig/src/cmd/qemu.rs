//! `livemig qemu`: govern a real QEMU migration (`migrate`), put a source's settings back
//! after a governing process died (`restore`) and record a guest's dirty-rate trace
//! (`dirty-trace`); `bench` lives in `qemu_bench.rs` (`main.rs` joins the two under `qemu`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use livemig_policy::Event;
use livemig_qemu::dirty;
use livemig_qemu::governor::{
    Governor, GovernorConfig, GovernorError, QemuReport, Steering, CANCEL_WAIT,
};
use livemig_qemu::saved::{default_state_file, SavedSettings};
use livemig_qemu::types::{MemorySizeSummary, MigrationInfo, StatusInfo};
use livemig_qemu::QmpClient;
use livemig_workload::units::{fmt_bytes, fmt_duration, fmt_rate};

use crate::progress::Progress;
use tokio::sync::mpsc;

use crate::args::{duration, whole_seconds, PolicyArgs, ProgressArgs, Runner, TimeoutArgs};
use crate::outcome::{self, Outcome};
use crate::{out, table};

/// `livemig qemu` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Migrate a running QEMU to a destination started with `-incoming`, under a policy.
    Migrate(Box<MigrateArgs>),
    /// Put back the source's settings saved by a `livemig qemu migrate` that did not end by
    /// itself (killed), and cancel its migration if it still runs with the VM on the source.
    Restore(RestoreArgs),
    /// Record a guest's dirty-rate series (calc-dirty-rate) in the simulator's trace format;
    /// with several periods, its working-set curve (distinct dirty bytes over time).
    DirtyTrace(TraceArgs),
}

/// `livemig qemu migrate` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig qemu migrate --qmp /run/src.qmp --dest-qmp /run/dst.qmp --uri tcp:127.0.0.1:4444
  livemig qemu migrate --qmp /run/src.qmp --uri tcp:198.18.0.2:4444 --policy dirty-factor --rounds 8
  livemig qemu migrate --qmp /run/src.qmp --uri tcp:198.18.0.2:4444 --policy qemu-native --json")]
pub struct MigrateArgs {
    /// The source QEMU's QMP socket.
    #[arg(long)]
    pub qmp: PathBuf,
    /// The destination QEMU's QMP socket (checked before, and for `running` after).
    #[arg(long)]
    pub dest_qmp: Option<PathBuf>,
    /// Where the destination listens, e.g. tcp:127.0.0.1:4444.
    #[arg(long)]
    pub uri: String,
    /// The bandwidth policy, or qemu-native (QEMU decides).
    #[arg(long, value_enum, default_value_t = Runner::Policy(livemig_policy::PolicyKind::Predictive))]
    pub policy: Runner,
    #[command(flatten)]
    pub settings: PolicyArgs,
    /// Guest memory M (default: QEMU's base memory size).
    #[arg(long)]
    pub memory: Option<String>,
    /// calc-dirty-rate sample before migrating, whole seconds (0 = none).
    #[arg(long, default_value = "1s")]
    pub sample: String,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    /// Print the result as JSON (the shared report shape plus `qemu`, `outcome` and
    /// `handover`); live progress stays off unless `--progress` asks for it.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub progress: ProgressArgs,
    /// Where the source's own max-bandwidth, downtime-limit and capabilities are saved while
    /// they are changed (default: <qmp>.livemig-params.json); removed once they are back.
    #[arg(long)]
    pub state_file: Option<PathBuf>,
}

/// `livemig qemu restore` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig qemu restore --qmp /run/src.qmp
  livemig qemu restore --qmp /run/src.qmp --state-file /run/src.qmp.livemig-params.json")]
pub struct RestoreArgs {
    /// The source QEMU's QMP socket.
    #[arg(long)]
    pub qmp: PathBuf,
    /// The state file `livemig qemu migrate` wrote (default: <qmp>.livemig-params.json).
    #[arg(long)]
    pub state_file: Option<PathBuf>,
}

/// `livemig qemu dirty-trace` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig qemu dirty-trace --qmp /run/src.qmp --period 2s --duration 5m > trace.csv
  livemig qemu dirty-trace --qmp /run/src.qmp --periods 1s,2s,4s,8s,16s --duration 2m > ws.csv
  livemig simulate --memory 256MiB --workload trace:file=ws.csv   # replays the curve W(t)

With --periods the measurements cycle through the periods and the trace is a working-set
trace: rate x period is the distinct bytes the guest dirtied in that period, and `simulate`
replays that curve (the median of each period) instead of a rate with an access pattern
(`trace:file=ws.csv,replay=rate` replays it the old way). QEMU reports whole MiB/s, so each
point is good to one MiB per second of its period.")]
pub struct TraceArgs {
    /// The guest's QMP socket.
    #[arg(long)]
    pub qmp: PathBuf,
    /// Length of each measurement (whole seconds).
    #[arg(long, default_value = "1s")]
    pub period: String,
    /// Cycle through these measurement periods (comma-separated whole seconds, e.g.
    /// 1s,2s,4s,8s,16s) to record the working-set curve; replaces --period.
    #[arg(long, value_delimiter = ',', conflicts_with = "period")]
    pub periods: Vec<String>,
    /// How long to record.
    #[arg(long, default_value = "60s")]
    pub duration: String,
}

/// Runs `livemig qemu ...`.
pub fn run(cmd: Command) -> Result<()> {
    // Ctrl-C or SIGTERM cancels a migration: before the switch-over is forced the VM keeps
    // running on the source with its own settings back (exit 1); after it, the hand-over
    // completes. Installed first (outside the async runtime), before anything starts.
    let steering = Steering::new();
    if matches!(cmd, Command::Migrate(_)) {
        let on_signal = steering.clone();
        crate::signals::on_interrupt(move || on_signal.cancel())?;
    }
    crate::rt::runtime()?.block_on(async {
        match cmd {
            Command::Migrate(a) => migrate(*a, steering).await,
            Command::Restore(a) => restore(a).await,
            Command::DirtyTrace(a) => dirty_trace(a).await,
        }
    })
}

async fn migrate(args: MigrateArgs, steering: Steering) -> Result<()> {
    let wait = livemig_qemu::qmp::DEFAULT_TIMEOUT;
    let mut src = QmpClient::connect(&args.qmp, wait).await?;
    let mut dest = match &args.dest_qmp {
        Some(p) => Some(QmpClient::connect(p, wait).await?),
        None => None,
    };
    let memory = match &args.memory {
        Some(m) => livemig_workload::units::parse_size(m)?,
        None => {
            let m: MemorySizeSummary = src.execute_as("query-memory-size-summary", None).await?;
            m.base_memory
        }
    };
    let cfg = args.settings.resolve(memory)?;
    let mut gcfg = GovernorConfig::new(&args.uri, cfg.memory_bytes, cfg.stop_remaining);
    gcfg.sample = whole_seconds("sample", &args.sample)?;
    gcfg.timeouts = args.timeouts.timeouts()?;
    if cfg.max_throttle.is_some() && args.policy.auto_converge() {
        bail!(
            "--max-throttle is `predictive`'s rescue; `qemu-auto-converge` throttles by QEMU's \
             own steps: give one or the other"
        );
    }
    gcfg.rescue = cfg.max_throttle.is_some();
    gcfg.auto_converge = args.policy.auto_converge();
    let state_file = args
        .state_file
        .clone()
        .unwrap_or_else(|| default_state_file(&args.qmp));
    gcfg.state_file = Some(state_file.clone());
    let control = args.policy.control(&cfg)?;
    let (tx, rx) = mpsc::unbounded_channel();
    // The one renderer of events (stderr), drained to the end whatever happens to its output,
    // so the migration never notices its reader.
    let mut progress = Progress::new(args.progress.format(args.json));
    let printer = tokio::spawn(async move {
        let mut rx: mpsc::UnboundedReceiver<Event> = rx;
        while let Some(e) = rx.recv().await {
            progress.observe(&e);
        }
    });
    let result = Governor::new(gcfg)
        .with_events(tx)
        .with_steering(steering)
        .run(&mut src, dest.as_mut(), control)
        .await;
    // A printer that panicked has printed what it could; the migration's result counts.
    let _ = printer.await;
    // QEMU serves one QMP client at a time: let go of ours before anyone else asks.
    drop(src);
    drop(dest);
    let run = match result {
        Ok(run) => run,
        Err(e) => return Err(failed(e, &args, &state_file).await),
    };
    if run.qemu.settings_restored == Some(false) {
        outcome::note(&restore_hint(&args.qmp, &state_file));
    }
    let text = if args.json {
        let (outcome, handover) = outcome::Handover::qemu(run.qemu.destination_running);
        outcome::json_with(&run, outcome, &handover)
    } else {
        format!("{}\n{}", table::report(&run.report), qemu_lines(&run))
    };
    // Whether anyone reads the report changes neither where the VM is nor the exit code.
    outcome::say(&text);
    destination_check(&run)
}

fn restore_hint(qmp: &std::path::Path, state_file: &std::path::Path) -> String {
    format!(
        "livemig: the source's own settings could not all be put back; they are saved in {}: \
         run `livemig qemu restore --qmp {} --state-file {}`",
        state_file.display(),
        qmp.display(),
        state_file.display()
    )
}

/// A governed migration that did not complete: the message, and the exit code of where the
/// VM is (1 when it runs on the source, 3 when that cannot be told). Errors that stopped it
/// before anything was started or changed stay usage errors (2).
async fn failed(
    e: GovernorError,
    args: &MigrateArgs,
    state_file: &std::path::Path,
) -> anyhow::Error {
    let outcome = match &e {
        GovernorError::Busy(_) | GovernorError::NotIncoming(_) | GovernorError::StateFile(_) => {
            return anyhow::Error::new(e);
        }
        GovernorError::Cancelled { source_running }
        | GovernorError::TimedOut { source_running, .. }
        | GovernorError::Failed { source_running, .. } => where_is(*source_running),
        _ => where_is(source_state(&args.qmp).await),
    };
    let msg = format!("{:#}", anyhow::Error::new(e));
    if state_file.exists() {
        outcome::note(&restore_hint(&args.qmp, state_file));
    }
    if args.json {
        outcome::say(&outcome::json_failure(outcome, &msg, None));
    }
    let line = match outcome {
        Outcome::FailedSourceRunning => "migration stopped; the VM keeps running on the source",
        _ => "migration stopped; it is not known whether the VM runs on the source",
    };
    outcome::ended(outcome, format!("{line}: {msg}"))
}

/// The outcome of a source that runs (`Some(true)`) or not, or could not say.
fn where_is(source_running: Option<bool>) -> Outcome {
    match source_running {
        Some(true) => Outcome::FailedSourceRunning,
        _ => Outcome::Unknown,
    }
}

/// Asks the source on a fresh QMP session whether its VM runs with no migration under way;
/// `None` when it does not answer (within a few seconds).
async fn source_state(qmp: &std::path::Path) -> Option<bool> {
    let wait = Duration::from_secs(3);
    let mut c = QmpClient::connect(qmp, wait).await.ok()?;
    let info: MigrationInfo = c.execute_as("query-migrate", None).await.ok()?;
    let st: StatusInfo = c.execute_as("query-status", None).await.ok()?;
    Some(st.running && !info.status.is_running())
}

/// `livemig qemu restore`: puts back the settings a killed `livemig qemu migrate` saved, after
/// cancelling its migration if it still runs with the VM on the source.
async fn restore(args: RestoreArgs) -> Result<()> {
    let path = args
        .state_file
        .clone()
        .unwrap_or_else(|| default_state_file(&args.qmp));
    if !path.exists() {
        bail!(
            "no state file at {}: nothing to restore (livemig removes it once the source's \
             settings are back)",
            path.display()
        );
    }
    let (saved, _) = SavedSettings::load(&path)?;
    let mut qmp = QmpClient::connect(&args.qmp, livemig_qemu::qmp::DEFAULT_TIMEOUT).await?;
    let info: MigrationInfo = qmp.execute_as("query-migrate", None).await?;
    let mut cancelled = "";
    if info.status.is_running() {
        let st: StatusInfo = qmp.execute_as("query-status", None).await?;
        if !st.running {
            bail!(
                "a migration is under way (status {:?}) and the VM is paused on the source \
                 (status `{}`): it is switching over, so nothing was touched; run this again \
                 once it has ended",
                info.status,
                st.status
            );
        }
        qmp.execute("migrate_cancel", None).await?;
        let until = tokio::time::Instant::now() + CANCEL_WAIT;
        loop {
            let q: MigrationInfo = qmp.execute_as("query-migrate", None).await?;
            if !q.status.is_running() {
                break;
            }
            if tokio::time::Instant::now() >= until {
                bail!(
                    "sent migrate_cancel, but the migration is still {:?} after {CANCEL_WAIT:?}; \
                     the settings were not restored (run this again)",
                    q.status
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cancelled = "cancelled the migration still under way, ";
    }
    saved
        .apply(&mut qmp)
        .await
        .context("QEMU refused the saved settings; the state file is kept")?;
    let removed = match std::fs::remove_file(&path) {
        Ok(()) => format!("removed {}", path.display()),
        Err(e) => format!("could not remove {}: {e}", path.display()),
    };
    outcome::say(&format!(
        "{}: {cancelled}restored {}; {removed}",
        args.qmp.display(),
        saved.describe()
    ));
    Ok(())
}

/// A completed migration whose destination never reported `running` is a failure: the source
/// is paused after completion, so the VM may be running on neither host.
fn destination_check(run: &QemuReport) -> Result<()> {
    if run.qemu.destination_running == Some(false) {
        return Err(outcome::ended(
            Outcome::Unknown,
            "the migration completed but the destination VM did not report `running`; the \
             source is paused after completion, so the VM may be running on neither host"
                .into(),
        ));
    }
    Ok(())
}

fn qemu_lines(run: &QemuReport) -> String {
    let q = &run.qemu;
    let s = |v: Option<f64>| v.map_or("-".into(), fmt_duration);
    format!(
        "QEMU: total-time {}, downtime {}, setup {}; switch-over chosen by {}; governor reaction \
         mean {} max {}; destination running: {}",
        s(q.qemu_total_time_s),
        s(q.qemu_downtime_s),
        s(q.qemu_setup_time_s),
        q.switchover,
        s(q.reaction_mean_s),
        s(q.reaction_max_s),
        q.destination_running
            .map_or("not checked".into(), |r| r.to_string()),
    )
}

async fn dirty_trace(args: TraceArgs) -> Result<()> {
    let periods = crate::args::trace_periods(&args.period, &args.periods)?;
    let duration = duration("duration", &args.duration)?;
    let mut qmp = QmpClient::connect(&args.qmp, livemig_qemu::qmp::DEFAULT_TIMEOUT).await?;
    let rows = dirty::record(&mut qmp, &periods, duration, |r| {
        out::note(&format!(
            "{:>7.1} s  over {:>3} s  {:>12}  {}",
            r.time_s,
            r.period_s,
            fmt_rate(r.rate_bytes_per_s),
            fmt_bytes(r.rate_bytes_per_s * r.period_s)
        ));
    })
    .await?;
    out::emit(&dirty::to_csv(&rows))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_that_does_not_run_is_a_failure() {
        use livemig_policy::report::{ReportBuilder, StopCopy};
        let report = ReportBuilder::new("x", "qemu", 1.0, 0.0, None).finish(
            StopCopy {
                bytes: 0.0,
                state_bytes: 0.0,
                downtime_s: 0.0,
            },
            0.0,
        );
        let mut run = QemuReport {
            report,
            qemu: Default::default(),
        };
        assert!(destination_check(&run).is_ok(), "not checked");
        run.qemu.destination_running = Some(true);
        assert!(destination_check(&run).is_ok());
        run.qemu.destination_running = Some(false);
        let e = destination_check(&run).expect_err("not running");
        assert!(e.to_string().contains("neither host"), "{e}");
        assert_eq!(outcome::exit_code(&e), 3);
    }
}
