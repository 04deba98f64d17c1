//! One module per subcommand.

pub mod bench;
pub mod bench_engine;
pub mod demo;
pub mod migrate;
pub mod qemu;
pub mod qemu_bench;
pub mod qemu_common;
pub mod receive;
pub mod resolve;
pub mod simulate;
