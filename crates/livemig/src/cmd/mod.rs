//! One module per subcommand.

pub mod bench;
pub mod policy_args;
pub mod qemu;
pub mod simulate;
