//! `livemig`: the one binary. Thin: parses arguments and calls the crates.
//!
//! - [`args`]: the flag groups several commands share (policy name and settings, the simulated
//!   guest, `--progress`, timeouts) and duration flags; no command imports another.
//! - [`cmd::simulate`]: `livemig simulate`, one simulated migration.
//! - [`cmd::bench`]: `livemig bench`, every policy over a scenario suite.
//! - [`cmd::plan`]: `livemig plan drain`, draining hosts simulated under the budget and the
//!   baselines (`livemig-fleet`).
//! - [`cmd::receive`], [`cmd::migrate`]: the two ends of a real migration over TCP.
//! - [`cmd::demo`]: both ends on loopback with live progress.
//! - [`cmd::bench_engine`]: `livemig bench-engine`, the data path's throughput and cap accuracy.
//! - [`cmd::bench_pause`]: `livemig bench-pause`, where the engine's pause goes, per guest size.
//! - [`cmd::bench_rescue`]: `livemig bench-rescue`, the rescue against QEMU's auto-converge rule
//!   on the engine, at the same bandwidth.
//! - [`cmd::qemu`]: `livemig qemu migrate | restore | dirty-trace`, real QEMU migrations;
//!   [`cmd::qemu_bench`]: `livemig qemu bench`; [`cmd::qemu_trace_check`]: `livemig qemu
//!   trace-check`, the simulator's replay of a working-set trace against the real run;
//!   [`rt`]: their async runtime.
//! - [`cmd::agent`]: `livemig agent`, the per-host migration monitor's HTTP API.
//! - [`cmd::rms`]: `livemig rms`, the Resource Management System.
//! - [`cmd::host`], [`cmd::vm`], [`cmd::vm_migrate`], [`cmd::migration`]: the operator
//!   commands, clients of the RMS's HTTP API; [`rms_client`]: their connection flags, token
//!   and requests; [`ops_view`]: their tables; [`watch`]: following a migration, exit codes.
//! - [`cmd::completions`], [`cmd::man`]: shell completions and manual pages, generated from
//!   these definitions.
//! - [`table`]: human tables; [`plot`]: SVG/PNG plots; [`progress`]: live round progress.
//! - [`out`]: fallible output; a closed pipe or a full disk is an error, never a panic.
//! - [`outcome`]: where the guest is after a real migration, exit codes 0/1/2/3, JSON results.
//! - [`signals`]: SIGINT and SIGTERM as a clean stop.
//!
//! Diagnostics go through `tracing` to stderr, at `warn` unless `RUST_LOG` says otherwise
//! (`RUST_LOG=livemig=debug`); the user-facing output does not depend on it.

mod args;
mod cluster;
mod cmd;
mod loopback;
mod ops_view;
mod oracle;
mod out;
mod outcome;
mod plot;
mod progress;
mod qemu_runs;
mod rms_client;
mod rt;
mod signals;
mod table;
mod watch;

use clap::{CommandFactory, Parser, Subcommand};

/// Network-aware live migration of virtual machines: adaptive pre-copy bandwidth by average
/// dirty-page factor (CN103365704A), its simulator and its benchmarks.
///
/// Sizes and rates take units: 4GiB, 512MiB, 100Mbit/s, 125MB/s, 300MiB/s.
#[derive(Debug, Parser)]
#[command(
    name = "livemig",
    version,
    propagate_version = true,
    after_long_help = "Examples:
  livemig demo                                   # both ends on loopback, in seconds
  livemig simulate --memory 4GiB --policy predictive
  livemig receive --listen 0.0.0.0:7700 --key mig.key
  livemig migrate --to 198.18.0.2:7700 --key mig.key --memory 1GiB

Logging: RUST_LOG=livemig=debug livemig ... (diagnostics on stderr; default level warn)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate one migration under a policy and print the per-round table.
    Simulate(Box<cmd::simulate::Args>),
    /// Run every policy over a suite of scenarios, side by side with the oracle.
    Bench(cmd::bench::Args),
    /// Receive one migration over TCP (the destination), verify it and resume the guest.
    Receive(Box<cmd::receive::Args>),
    /// Migrate a simulated guest to a `livemig receive` over TCP (the source).
    Migrate(Box<cmd::migrate::Args>),
    /// Settle a hand-over whose outcome was unknown (exit 3), from its hold file.
    Resolve(cmd::resolve::Args),
    /// Plan at datacenter scale without running anything: simulate draining hosts under
    /// livemig's budget and the baselines.
    #[command(
        subcommand,
        after_long_help = "Examples:
  livemig plan drain
  livemig plan drain --hosts 10 --drain 2 --vms-per-host 20 --json"
    )]
    Plan(cmd::plan::Command),
    /// Both ends on loopback with a generated key: live progress, the round table, the summary.
    Demo(Box<cmd::demo::Args>),
    /// Benchmark the data path: throughput against a plain loopback copy, cap accuracy.
    BenchEngine(cmd::bench_engine::Args),
    /// Benchmark the engine's pause per guest size: stop-and-copy transfer, state,
    /// verification, resume, and the audit after it, beside protocol 3's whole-memory digests.
    BenchPause(cmd::bench_pause::Args),
    /// A guest faster than B_max on loopback: `predictive`'s rescue against QEMU's
    /// auto-converge rule and a plain constant cap, at the same bandwidth (guest slowdown,
    /// downtime).
    BenchRescue(cmd::bench_rescue::Args),
    /// The engine's oracle: the lowest constant cap that converges for a guest, by bisection
    /// over real loopback migrations, and the policies' peak cap and total time against it.
    BenchOracle(cmd::bench_oracle::Args),
    /// Benchmark the system on loopback: migrations per minute through the RMS with many small
    /// VMs, recovery time after an RMS crash.
    BenchRms(cmd::bench_rms::Args),
    /// Benchmark the shared budget on the namespace testbed (root): drain a host of six guests
    /// under each sharing scheme, measured on the switch.
    BenchDrain(cmd::bench_drain::Args),
    /// Drive real QEMU live migrations with a policy (QMP), record dirty traces, benchmark.
    #[command(
        subcommand,
        after_long_help = "Examples:
  livemig qemu migrate --qmp /run/src.qmp --dest-qmp /run/dst.qmp --uri tcp:127.0.0.1:4444
  livemig qemu restore --qmp /run/src.qmp
  livemig qemu dirty-trace --qmp /run/src.qmp --duration 30s > trace.csv
  livemig qemu bench --policies predictive,dirty-factor,qemu-native"
    )]
    Qemu(Qemu),
    /// Run the per-host migration monitor: HTTP API for capacity, VMs, migrations and metrics;
    /// registers with an RMS when given one.
    Agent(Box<cmd::agent::Args>),
    /// Run the Resource Management System: the API operators and agents use, the orchestrator,
    /// its store.
    Rms(Box<cmd::rms::Args>),
    /// The RMS's hosts (operator command; --rms, --token-file).
    #[command(
        subcommand,
        after_long_help = "Examples:
  livemig host list
  livemig host list --json"
    )]
    Host(cmd::host::Command),
    /// Create, list, show, delete and migrate the RMS's VMs (operator commands).
    #[command(
        subcommand,
        after_long_help = "Examples:
  livemig vm create web-1 --memory 1GiB --workload idle
  livemig vm list
  livemig vm migrate web-1 --to host-b --watch

Every operator command takes --rms URL (or LIVEMIG_RMS; default http://127.0.0.1:7700),
--token-file FILE (or LIVEMIG_TOKEN_FILE; the RMS's bearer token on its first line, mode 600)
and --timeout (per request, default 10s)."
    )]
    Vm(Vm),
    /// List, show, watch, cancel and resolve the RMS's migrations (operator commands).
    #[command(
        subcommand,
        after_long_help = "Examples:
  livemig migration list
  livemig migration watch 7
  livemig migration cancel 7"
    )]
    Migration(cmd::migration::Command),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(cmd::completions::Args),
    /// Print the manual page, or write one page per command into a directory.
    Man(cmd::man::Args),
}

/// `livemig qemu` subcommands: `migrate`, `restore` and `dirty-trace` from `cmd::qemu`, `bench`
/// from `cmd::qemu_bench`, `oracle` and `trace-check` from theirs (joined here, so that none
/// imports another).
#[derive(Debug, Subcommand)]
enum Qemu {
    #[command(flatten)]
    Run(cmd::qemu::Command),
    /// Boot the test guest and migrate it under every policy and QEMU's defaults, side by side.
    Bench(Box<cmd::qemu_bench::BenchArgs>),
    /// The lowest constant cap that converges for a guest, by bisection over real migrations,
    /// and the policies' peak cap and total time against it.
    Oracle(Box<cmd::qemu_oracle::OracleArgs>),
    /// Record a guest's working-set trace, migrate it for real, and compare with the
    /// simulator's replay of the trace under the same policy (bytes and time).
    TraceCheck(Box<cmd::qemu_trace_check::TraceCheckArgs>),
}

/// `livemig vm` subcommands: `create`, `list`, `show` and `delete` from `cmd::vm`, `migrate`
/// from `cmd::vm_migrate` (joined here, so that neither module imports the other).
#[derive(Debug, Subcommand)]
enum Vm {
    #[command(flatten)]
    Run(cmd::vm::Command),
    /// Ask the RMS to migrate a VM; --watch follows it to its end.
    Migrate(Box<cmd::vm_migrate::Args>),
}

/// Diagnostics to stderr: `RUST_LOG` filters (default `warn`); colour only on a terminal.
fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Parses the command line. A value clap refuses (`--policy nope`) is one line with the
/// values it takes, exit 2; help, version and other usage errors are clap's own.
fn parse() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.kind() == clap::error::ErrorKind::InvalidValue => {
            let text = e.render().to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
                .collect();
            // "livemig: error: invalid value 'nope' for '--policy <POLICY>' [possible values: ...]"
            out::note(&format!("livemig: {}", line.join(" ")));
            std::process::exit(2);
        }
        Err(e) => e.exit(),
    }
}

fn main() {
    let cli = parse();
    init_tracing();
    tracing::debug!(command = ?cli.command, "parsed arguments");
    let result = match cli.command {
        Command::Simulate(a) => cmd::simulate::run(*a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Receive(a) => cmd::receive::run(*a),
        Command::Migrate(a) => cmd::migrate::run(*a),
        Command::Demo(a) => cmd::demo::run(*a),
        Command::Plan(c) => cmd::plan::run(c),
        Command::Resolve(a) => cmd::resolve::run(a),
        Command::BenchEngine(a) => cmd::bench_engine::run(a),
        Command::BenchPause(a) => cmd::bench_pause::run(a),
        Command::BenchRescue(a) => cmd::bench_rescue::run(a),
        Command::BenchOracle(a) => cmd::bench_oracle::run(a),
        Command::BenchRms(a) => cmd::bench_rms::run(a),
        Command::BenchDrain(a) => cmd::bench_drain::run(a),
        Command::Qemu(Qemu::Run(c)) => cmd::qemu::run(c),
        Command::Qemu(Qemu::Bench(a)) => cmd::qemu_bench::run(*a),
        Command::Qemu(Qemu::Oracle(a)) => cmd::qemu_oracle::run(*a),
        Command::Qemu(Qemu::TraceCheck(a)) => cmd::qemu_trace_check::run(*a),
        Command::Agent(a) => cmd::agent::run(*a),
        Command::Rms(a) => cmd::rms::run(*a),
        Command::Host(c) => cmd::host::run(c),
        Command::Vm(Vm::Run(c)) => cmd::vm::run(c),
        Command::Vm(Vm::Migrate(a)) => cmd::vm_migrate::run(*a),
        Command::Migration(c) => cmd::migration::run(c),
        Command::Completions(a) => cmd::completions::run(a, Cli::command()),
        Command::Man(a) => cmd::man::run(a, Cli::command()),
    };
    if let Err(e) = result {
        // The reader of our output went away (`livemig bench | head`): nothing to report.
        if out::reader_went_away(&e) {
            return;
        }
        // Exit codes: 0 migrated / done, 1 failed with the guest on the source, 2 usage or
        // any other error before a migration started, 3 outcome unknown (`outcome.rs`).
        let code = outcome::exit_code(&e);
        tracing::debug!(code, error = %format!("{e:#}"), "command failed");
        let chain: Vec<String> = e
            .chain()
            .filter(|c| !outcome::is_exit_marker(*c))
            .map(|c| c.to_string())
            .collect();
        out::note(&format!("livemig: error: {}", chain.join(": ")));
        std::process::exit(code);
    }
    tracing::debug!("command done");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and subcommand shows examples, and every example parses.
    #[test]
    fn every_command_has_examples_that_parse() {
        fn walk(cmd: &clap::Command, path: &str, seen: &mut usize) {
            if cmd.get_name() == "help" {
                return;
            }
            let path = format!("{path} {}", cmd.get_name());
            let examples = cmd
                .get_after_long_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            let lines: Vec<&str> = examples
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("livemig "))
                .collect();
            assert!((2..=4).contains(&lines.len()), "{path}: {examples}");
            for line in lines {
                // The command itself: without a comment, a redirection or a pipe.
                let cut = ["#", ">", "|", "&&"]
                    .iter()
                    .filter_map(|m| line.find(m))
                    .min()
                    .unwrap_or(line.len());
                let words: Vec<&str> = line[..cut].split_whitespace().collect();
                if let Err(e) = Cli::try_parse_from(&words) {
                    panic!("{path}: `{line}` does not parse: {e}");
                }
                *seen += 1;
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, seen);
            }
        }
        let mut seen = 0;
        let mut cli = Cli::command();
        cli.build();
        walk(&cli, "", &mut seen);
        assert!(seen > 30, "{seen}");
    }
}
