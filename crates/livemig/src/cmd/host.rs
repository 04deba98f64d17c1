//! `livemig host list`: the hosts the RMS knows, their state, memory and VMs.

use anyhow::Result;
use livemig_rms::HostView;

use crate::ops_view;
use crate::rms_client::{print, with_rms, Rms, RmsArgs};

/// `livemig host` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the hosts: address, alive or lost, memory total and free, VMs.
    #[command(after_long_help = "Examples:
  livemig host list
  livemig host list --rms http://rms.example:7700 --token-file rms.token --json

--json prints the RMS's answer to GET /api/v1/hosts unchanged (a list).")]
    List(ListArgs),
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

/// Runs a `livemig host` subcommand.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::List(a) => with_rms(Rms::new(&a.rms)?, |rms| async move {
            let hosts = rms.get::<Vec<HostView>>(&["api", "v1", "hosts"]).await?;
            print(&hosts, a.json, |h| ops_view::hosts(h).to_string())
        }),
    }
}
