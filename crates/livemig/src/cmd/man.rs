//! `livemig man`: manual pages generated from the argument definitions (roff).

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::out;

/// `livemig man` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig man | man -l -
  livemig man --out /usr/local/share/man/man1   # livemig.1, livemig-migrate.1, ...
  livemig man --out target/man && man -l target/man/livemig-qemu-migrate.1")]
pub struct Args {
    /// Write one page per command and subcommand into this directory (`livemig.1`,
    /// `livemig-migrate.1`, `livemig-qemu-migrate.1`, ...) instead of printing the main page.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Runs `livemig man`; `cli` is the whole command line's definition.
pub fn run(args: Args, cli: clap::Command) -> Result<()> {
    let Some(dir) = &args.out else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cli)
            .render(&mut page)
            .context("cannot render the manual page")?;
        out::emit(&String::from_utf8_lossy(&page))?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(cli, dir)
        .with_context(|| format!("cannot write manual pages to {}", dir.display()))?;
    let pages = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "1"))
        .count();
    out::emit_line(&format!("{pages} manual pages in {}", dir.display()))?;
    Ok(())
}
