//! `livemig host`: the hosts the RMS knows (`list`), and evacuating one (`drain`,
//! `undrain`).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use livemig_rms::orchestrator::DrainProgress;
use livemig_rms::HostView;
use livemig_rms_server::routes::fleet::DrainStarted;
use livemig_workload::units::{fmt_bytes, fmt_rate};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use crate::ops_view;
use crate::outcome::exit_with;
use crate::rms_client::{print, with_rms, Rms, RmsArgs};

/// `livemig host` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the hosts: address, alive or lost, drained or not, memory total and free, VMs.
    #[command(after_long_help = "Examples:
  livemig host list
  livemig host list --rms http://rms.example:7700 --token-file rms.token --json

--json prints the RMS's answer to GET /api/v1/hosts unchanged (a list).")]
    List(ListArgs),
    /// Evacuate a host: it takes no new VMs, and every VM it runs is migrated to other hosts
    /// (each placed by free memory, admitted and granted by the RMS's budget).
    #[command(after_long_help = "Examples:
  livemig host drain host-3
  livemig host drain host-3 --watch
  livemig host drain host-3 --watch --json     # one JSON progress line per poll

Progress (--watch): VMs left, bytes left and the estimated time to empty (bytes left over the
migrations' grants: a lower bound, since pre-copy re-sends what guests dirty). A VM whose
migration failed stays on the host (listed as stuck); drain again to retry it. `livemig host
undrain HOST` lets the host take VMs again.

Exit codes with --watch: 0 the host is empty; 1 some VMs are stuck (their migration failed or
was cancelled: they run on the host); 2 the RMS could not be asked; 5 --watch-timeout passed
(the drain goes on); 130 Ctrl-C (stops watching, not the drain).")]
    Drain(DrainArgs),
    /// Let a drained host take VMs again (migrations its drain started go on).
    #[command(after_long_help = "Examples:
  livemig host undrain host-3
  livemig host undrain host-3 --json")]
    Undrain(UndrainArgs),
}

/// `livemig host list` flags.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub rms: RmsArgs,
    /// Print the RMS's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `livemig host drain` flags.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// The host to empty.
    pub host: String,
    /// Follow the drain until the host is empty.
    #[arg(long)]
    pub watch: bool,
    /// Stop watching after this long (the drain goes on; exit 5).
    #[arg(long, value_name = "TIME", default_value = "1h")]
    pub watch_timeout: String,
    /// Time between two polls (at least 100ms).
    #[arg(long, value_name = "TIME", default_value = "1s")]
    pub watch_interval: String,
    #[command(flatten)]
    pub rms: RmsArgs,
    /// Print JSON: the RMS's answer, and with --watch one progress object a line.
    #[arg(long)]
    pub json: bool,
}

/// `livemig host undrain` flags.
#[derive(Debug, clap::Args)]
pub struct UndrainArgs {
    pub host: String,
    #[command(flatten)]
    pub rms: RmsArgs,
    #[arg(long)]
    pub json: bool,
}

/// Exit code: the drain ended with VMs stuck on the host.
const STUCK: i32 = 1;
/// Exit code: the watch timed out.
const TIMED_OUT: i32 = 5;
/// Exit code: Ctrl-C stopped the watch.
const INTERRUPTED: i32 = 130;

/// Runs a `livemig host` subcommand.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::List(a) => with_rms(Rms::new(&a.rms)?, |rms| async move {
            let hosts = rms.get::<Vec<HostView>>(&["api", "v1", "hosts"]).await?;
            print(&hosts, a.json, |h| ops_view::hosts(h).to_string())
        }),
        Command::Drain(a) => drain(a),
        Command::Undrain(a) => {
            check_name(&a.host)?;
            with_rms(Rms::new(&a.rms)?, |rms| async move {
                let p = rms
                    .delete::<DrainProgress>(&["api", "v1", "hosts", &a.host, "drain"])
                    .await?;
                print(&p, a.json, |p| {
                    format!("{} takes VMs again ({} VMs on it)", p.host, p.vms_left)
                })
            })
        }
    }
}

fn check_name(host: &str) -> Result<()> {
    if !livemig_api::is_valid_name(host) {
        bail!("`{host}` is not a host name (1 to 64 characters of A-Z a-z 0-9 . _ -)");
    }
    Ok(())
}

fn drain(a: DrainArgs) -> Result<()> {
    check_name(&a.host)?;
    let interval = crate::args::positive_duration("watch-interval", &a.watch_interval)?;
    if interval < Duration::from_millis(100) {
        bail!("--watch-interval must be at least 100ms");
    }
    let timeout = crate::args::positive_duration("watch-timeout", &a.watch_timeout)?;
    with_rms(Rms::new(&a.rms)?, |rms| async move {
        let path = ["api", "v1", "hosts", a.host.as_str(), "drain"];
        let started = rms
            .post::<_, DrainStarted>(&path, &serde_json::json!({}))
            .await?;
        if !a.watch {
            return print(&started, a.json, |s| {
                format!(
                    "{} is drained: {} migrations submitted\n{}",
                    s.host,
                    s.migrations.len(),
                    line(&s.progress)
                )
            });
        }
        if !a.json {
            crate::out::emit_line(&format!(
                "{} is drained: {} migrations submitted",
                started.value.host,
                started.value.migrations.len()
            ))?;
        }
        let end = watch(&rms, &path, &a, interval, timeout).await?;
        if end.stuck.is_empty() {
            Ok(())
        } else {
            Err(exit_with(
                STUCK,
                format!(
                    "{} VMs stay on {}: {} (their migration failed or was cancelled; `livemig migration list --vm NAME` says why)",
                    end.stuck.len(),
                    end.host,
                    end.stuck.join(", ")
                ),
            ))
        }
    })
}

/// One progress line.
fn line(p: &DrainProgress) -> String {
    let eta = p
        .eta_s
        .map_or("-".to_string(), |s| format!("{:.0} s", s.ceil()));
    format!(
        "{}: {} VMs left ({} migrating, {} queued, {} stuck), {} left, {} granted, empty in ≥ {}",
        p.host,
        p.vms_left,
        p.migrating,
        p.queued,
        p.stuck.len(),
        fmt_bytes(p.bytes_left),
        fmt_rate(p.granted_bytes_per_s),
        eta
    )
}

/// Polls the drain until the host is empty, or only stuck VMs are left.
async fn watch(
    rms: &Rms,
    path: &[&str],
    a: &DrainArgs,
    interval: Duration,
    timeout: Duration,
) -> Result<DrainProgress> {
    let deadline = Instant::now() + timeout;
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install the Ctrl-C handler")?;
    let mut last = String::new();
    loop {
        let polled = tokio::select! {
            r = rms.get::<DrainProgress>(path) => r,
            _ = interrupt.recv() => return Err(exit_with(INTERRUPTED, "stopped watching; the drain goes on".into())),
            _ = tokio::time::sleep_until(deadline) => return Err(exit_with(TIMED_OUT, "--watch-timeout passed; the drain goes on".into())),
        };
        match polled {
            Ok(p) => {
                let text = if a.json {
                    serde_json::to_string(&p.json)?
                } else {
                    line(&p.value)
                };
                if text != last {
                    crate::out::emit_line(&text)?;
                    last = text;
                }
                let v = p.value;
                if v.vms_left == 0 || v.vms_left == v.stuck.len() {
                    return Ok(v);
                }
            }
            Err(e) if e.is_transient() => {
                crate::out::note(&format!("livemig: {e}; still watching"));
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = interrupt.recv() => return Err(exit_with(INTERRUPTED, "stopped watching; the drain goes on".into())),
            _ = tokio::time::sleep_until(deadline) => return Err(exit_with(TIMED_OUT, "--watch-timeout passed; the drain goes on".into())),
        }
    }
}
