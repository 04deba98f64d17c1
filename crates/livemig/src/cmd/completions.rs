//! `livemig completions SHELL`: a shell completion script, generated from the argument
//! definitions.

use anyhow::Result;

use crate::out;

/// `livemig completions` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig completions bash > /etc/bash_completion.d/livemig
  livemig completions zsh > \"${fpath[1]}/_livemig\"
  livemig completions fish > ~/.config/fish/completions/livemig.fish")]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Runs `livemig completions`; `cli` is the whole command line's definition.
pub fn run(args: Args, mut cli: clap::Command) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cli, "livemig", &mut script);
    out::emit(&String::from_utf8_lossy(&script))?;
    Ok(())
}
