//! One module per subcommand.

pub mod bench;
pub mod policy_args;
pub mod qemu;
pub mod qemu_bench;
pub mod simulate;
