//! The test guest's workload program: what to dirty, how fast, and the heartbeat.
//!
//! Map of the crate:
//! - [`spec`]: [`LoadSpec`], parsed from `PATTERN:rate=R,buffer=B,...` or from the kernel
//!   command line (`livemig.load=SPEC`).
//! - [`picker`]: [`PagePicker`], which page each write hits (uniform, hot/cold, scan).
//! - [`run`]: the loop that writes pages at the rate and prints `livemig-hb N` lines.
//!
//! The binary (`src/main.rs`) runs as the guest's init payload, statically linked.

pub mod picker;
pub mod run;
pub mod spec;

pub use picker::PagePicker;
pub use spec::{LoadSpec, Pattern, SpecError};

/// Guest page size the writes are counted in.
pub const PAGE: usize = 4096;
/// Prefix of every heartbeat line on the console.
pub const HEARTBEAT_PREFIX: &str = "livemig-hb ";
