//! One module per subcommand; none imports another (shared flags live in `args.rs`).

pub mod agent;
pub mod bench;
pub mod bench_drain;
pub mod bench_engine;
pub mod bench_oracle;
pub mod bench_pause;
pub mod bench_rescue;
pub mod bench_rms;
pub mod completions;
pub mod demo;
pub mod host;
pub mod man;
pub mod migrate;
pub mod migration;
pub mod plan;
pub mod qemu;
pub mod qemu_bench;
pub mod qemu_oracle;
pub mod qemu_trace_check;
pub mod receive;
pub mod resolve;
pub mod rms;
pub mod simulate;
pub mod vm;
pub mod vm_migrate;
