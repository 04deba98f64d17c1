//! The test guest's workload program: what to dirty, how fast, and the heartbeat.
//!
//! Map of the crate:
//! - [`spec`]: [`LoadSpec`], parsed from `PATTERN:rate=R,buffer=B,...` or from the kernel
//!   command line (`livemig.load=SPEC`); the pattern is `livemig_workload`'s [`Pattern`].
//! - [`run`]: [`PageStream`], which page each write hits (`livemig_workload`'s page sampler,
//!   the one the simulator's model predicts), and the loop that writes pages at the rate and
//!   prints `livemig-hb N` lines, each followed by `livemig-writes K T` (writes so far, ms).
//!
//! The binary (`src/main.rs`) runs as the guest's init payload, statically linked.

pub mod run;
pub mod spec;

pub use livemig_workload::Pattern;
pub use run::PageStream;
pub use spec::{LoadSpec, SpecError};

/// Guest page size the writes are counted in.
pub const PAGE: usize = 4096;
/// Prefix of every heartbeat line on the console.
pub const HEARTBEAT_PREFIX: &str = "livemig-hb ";
/// Prefix of the line after every heartbeat: `livemig-writes K T`, the page writes done so far
/// and the milliseconds since the program started (the guest's own progress, for measuring how
/// much a migration slowed it).
pub const WRITES_PREFIX: &str = "livemig-writes ";
