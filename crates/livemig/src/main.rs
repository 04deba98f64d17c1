//! `livemig`: the one binary. Thin: parses arguments and calls the crates.
//!
//! - [`cmd::simulate`]: `livemig simulate`, one simulated migration.
//! - [`cmd::bench`]: `livemig bench`, every policy over a scenario suite.
//! - [`cmd::receive`], [`cmd::migrate`]: the two ends of a real migration over TCP.
//! - [`cmd::demo`]: both ends on loopback with live progress.
//! - [`cmd::bench_engine`]: `livemig bench-engine`, the data path's throughput and cap accuracy.
//! - [`cmd::qemu`]: `livemig qemu migrate | restore | dirty-trace`, real QEMU migrations;
//!   [`cmd::qemu_bench`]: `livemig qemu bench`.
//! - [`table`]: human tables; [`plot`]: SVG/PNG plots; [`progress`]: live round progress.
//! - [`out`]: fallible output; a closed pipe or a full disk is an error, never a panic.
//! - [`outcome`]: where the guest is after a real migration, exit codes 0/1/2/3, JSON results.
//! - [`signals`]: SIGINT and SIGTERM as a clean stop.

mod cmd;
mod out;
mod outcome;
mod plot;
mod progress;
mod signals;
mod table;

use clap::{Parser, Subcommand};

/// Network-aware live migration of virtual machines: adaptive pre-copy bandwidth by average
/// dirty-page factor (CN103365704A), its simulator and its benchmarks.
///
/// Sizes and rates take units: 4GiB, 512MiB, 100Mbit/s, 125MB/s, 300MiB/s.
#[derive(Debug, Parser)]
#[command(name = "livemig", version, propagate_version = true)]
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
    Receive(cmd::receive::Args),
    /// Migrate a simulated guest to a `livemig receive` over TCP (the source).
    Migrate(Box<cmd::migrate::Args>),
    /// Settle a hand-over whose outcome was unknown (exit 3), from its hold file.
    Resolve(cmd::resolve::Args),
    /// Both ends on loopback with a generated key: live progress, the round table, the summary.
    Demo(Box<cmd::demo::Args>),
    /// Benchmark the data path: throughput against a plain loopback copy, cap accuracy.
    BenchEngine(cmd::bench_engine::Args),
    /// Drive real QEMU live migrations with a policy (QMP), record dirty traces, benchmark.
    #[command(subcommand)]
    Qemu(cmd::qemu::Command),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Simulate(a) => cmd::simulate::run(*a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Receive(a) => cmd::receive::run(a),
        Command::Migrate(a) => cmd::migrate::run(*a),
        Command::Demo(a) => cmd::demo::run(*a),
        Command::Resolve(a) => cmd::resolve::run(a),
        Command::BenchEngine(a) => cmd::bench_engine::run(a),
        Command::Qemu(c) => cmd::qemu::run(c),
    };
    if let Err(e) = result {
        // The reader of our output went away (`livemig bench | head`): nothing to report.
        if out::reader_went_away(&e) {
            return;
        }
        // Exit codes: 0 migrated / done, 1 failed with the guest on the source, 2 usage or
        // any other error before a migration started, 3 outcome unknown (`outcome.rs`).
        let chain: Vec<String> = e
            .chain()
            .filter(|c| c.downcast_ref::<outcome::Ended>().is_none())
            .map(|c| c.to_string())
            .collect();
        out::note(&format!("livemig: error: {}", chain.join(": ")));
        std::process::exit(outcome::exit_code(&e));
    }
}
