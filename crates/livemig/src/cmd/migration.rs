//! `livemig migration list | show | watch | cancel | resolve`: the migrations the RMS runs and
//! ran.

use anyhow::Result;
use livemig_rms::{MigrationId, MigrationView};

use crate::ops_view;
use crate::rms_client::{print, with_rms, Rms, RmsArgs};
use crate::watch::{self, WatchArgs};

/// `migration watch`'s examples and exit codes.
fn watch_help() -> String {
    format!(
        "Examples:
  livemig migration watch 7
  livemig migration watch 7 --json --watch-timeout 30m

Prints what is new as it arrives (state changes, hosts asked, rounds) until the migration
ends; --json prints one JSON object a line, then the final view. It ends at once, with the
same exit code, for a migration that has already ended.

{}",
        watch::EXIT_CODES
    )
}

/// `livemig migration` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the migrations: VM, source, target, state, policy.
    #[command(after_long_help = "Examples:
  livemig migration list
  livemig migration list --json

--json prints the RMS's answer to GET /api/v1/migrations unchanged (a list).")]
    List(ListArgs),
    /// Show one migration: hosts asked, rounds, summary, error.
    #[command(after_long_help = "Examples:
  livemig migration show 7
  livemig migration show 7 --json

--json prints the RMS's answer to GET /api/v1/migrations/ID unchanged.")]
    Show(IdArgs),
    /// Follow one migration until it ends; the exit code says how it ended.
    #[command(after_long_help = watch_help())]
    Watch(WatchIdArgs),
    /// Ask the RMS to cancel a migration (refused once the hand-over is committed).
    #[command(after_long_help = "Examples:
  livemig migration cancel 7
  livemig migration cancel 7 && livemig migration watch 7

The RMS answers at once; the migration ends `cancelled` (the guest on the source) shortly
after, or completes if it was already past its commit point. A refusal (409) prints the
RMS's reason and exits 2.")]
    Cancel(IdArgs),
    /// Settle a migration whose outcome is unknown: the operator found the guest on --host.
    #[command(after_long_help = "Examples:
  livemig migration resolve 7 --host host-b
  livemig migration resolve 7 --host host-a --json

Only for a migration in state `unknown`, after checking where the guest runs (the agents'
reports, or `livemig resolve` on the source for an engine hand-over). --host names the source
(the migration becomes failed) or the destination (completed; the VM's location moves).")]
    Resolve(ResolveArgs),
}

/// `livemig migration resolve` flags.
#[derive(Debug, clap::Args)]
pub struct ResolveArgs {
    /// The migration's id.
    pub id: u64,
    /// The host the guest runs on: the migration's source or its destination.
    #[arg(long, value_name = "HOST")]
    pub host: String,
    #[command(flatten)]
    pub rms: RmsArgs,
    /// Print the RMS's JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `livemig migration list` flags.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only migrations in this state (queued, placing, running, switching_over, completed,
    /// failed, cancelled, unknown).
    #[arg(long, value_name = "STATE")]
    pub state: Option<String>,
    /// Only migrations of this VM.
    #[arg(long, value_name = "VM")]
    pub vm: Option<String>,
    #[command(flatten)]
    pub rms: RmsArgs,
    /// Print the RMS's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `livemig migration show | cancel` flags.
#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// The migration's id (as `vm migrate` printed it).
    pub id: u64,
    #[command(flatten)]
    pub rms: RmsArgs,
    /// Print the RMS's JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `livemig migration watch` flags.
#[derive(Debug, clap::Args)]
pub struct WatchIdArgs {
    /// The migration's id (as `vm migrate` printed it).
    pub id: u64,
    #[command(flatten)]
    pub watching: WatchArgs,
    #[command(flatten)]
    pub rms: RmsArgs,
    /// One JSON object a line, then the final view.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `livemig migration` subcommand.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::List(a) => with_rms(Rms::new(&a.rms)?, |rms| async move {
            let mut query = Vec::new();
            if let Some(s) = &a.state {
                query.push(("state", s.clone()));
            }
            if let Some(v) = &a.vm {
                query.push(("vm", v.clone()));
            }
            let all = rms
                .get_all::<MigrationView>(&["api", "v1", "migrations"], &query)
                .await?;
            print(&all, a.json, |m| ops_view::migrations(m).to_string())
        }),
        Command::Show(a) => with_rms(Rms::new(&a.rms)?, |rms| async move {
            let id = a.id.to_string();
            let m = rms
                .get::<MigrationView>(&["api", "v1", "migrations", &id])
                .await?;
            print(&m, a.json, ops_view::migration)
        }),
        Command::Watch(a) => {
            let w = a.watching.watch(a.json)?;
            with_rms(Rms::new(&a.rms)?, |rms| async move {
                let view = watch::watch(&rms, MigrationId(a.id), w).await?;
                watch::finish(&view)
            })
        }
        Command::Resolve(a) => {
            if a.host.trim().is_empty() {
                anyhow::bail!("--host is empty");
            }
            with_rms(Rms::new(&a.rms)?, |rms| async move {
                let id = a.id.to_string();
                let body = serde_json::json!({"host": a.host});
                let m = rms
                    .post::<_, MigrationView>(&["api", "v1", "migrations", &id, "resolve"], &body)
                    .await?;
                print(&m, a.json, ops_view::migration)
            })
        }
        Command::Cancel(a) => with_rms(Rms::new(&a.rms)?, |rms| async move {
            let id = a.id.to_string();
            let answer = rms
                .delete::<serde_json::Value>(&["api", "v1", "migrations", &id])
                .await?;
            let text = if !a.json {
                format!(
                    "cancel of migration {id} asked; see how it ends: livemig migration watch {id}"
                )
            } else if answer.json.is_null() {
                // A bare 202: say what was asked, as JSON.
                serde_json::json!({"id": a.id, "cancel": "asked"}).to_string()
            } else {
                ops_view::json(&answer.json)
            };
            crate::out::emit_line(&text)?;
            Ok(())
        }),
    }
}
