//! livemig-qemu: drives a real QEMU live migration pass by pass under a livemig policy.
//!
//! Map of the crate:
//! - [`qmp`]: [`QmpClient`], async QMP over a unix socket (greeting, capabilities, commands
//!   with ids and timeouts, queued events).
//! - [`types`]: lenient shapes of the QMP answers (`query-migrate`, parameters, status,
//!   dirty rate); unknown fields and enum values do not break them.
//! - [`dirty`]: `calc-dirty-rate` samples before a migration and dirty-rate traces in the
//!   simulator's CSV format.
//! - [`features`]: what the running QEMU offers beyond 7.2 (how `calc-dirty-rate` measures
//!   best, `avail-switchover-bandwidth`, `switchover-ack`, `dirty-limit`), probed before a
//!   migration.
//! - [`governor`]: [`governor::Governor`], which drives the policy's round sequencer
//!   (`livemig_policy::Pilot`) through a QEMU migration: at every `MIGRATION_PASS` it measures
//!   the round and applies the next cap; it honours the steering (grant, cancel) and the
//!   timeouts, and emits `livemig_policy::Event`s.
//! - [`result`]: [`QemuReport`], the shared report plus QEMU's figures, per-pass and
//!   per-grant records.
//! - [`saved`]: the source's own settings that the governor changes, saved before (also to
//!   a state file) and put back after every migration.
//! - [`vm`]: starting QEMU processes of the test guest (source and `-incoming` destination),
//!   reading their serial consoles.
//! - [`heartbeat`]: the guest's `livemig-hb N` lines and the continuity check across a
//!   migration.
//!
//! How each quantity of the method is obtained from QEMU is in `docs/qemu.md`.

pub mod dirty;
pub mod features;
pub mod governor;
pub mod heartbeat;
pub mod qmp;
pub mod result;
pub mod saved;
pub mod types;
pub mod vm;

pub use governor::{Control, Governor, GovernorConfig, GovernorError, QemuReport};
pub use qmp::{Event, QmpClient, QmpError};
