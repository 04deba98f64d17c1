//! The Resource Management System's orchestration core: what the RMS decides, without the
//! HTTP, the store or the clock around it (those wrap it as shells).
//!
//! Map of the crate:
//! - [`api`]: the JSON shapes of the planned `/api/v1` (hosts, VMs, migrations).
//! - [`budget`]: the shared migration-bandwidth budget: admission by prediction, grants,
//!   the baselines (`sequential`, `fixed-slots`, `unlimited`).
//! - [`migration`]: one migration's record and its state machine ([`MigrationState`]).
//! - [`inventory`]: host and VM records, the location table, host liveness.
//! - [`placement`]: which hosts to ask, best first.
//! - [`recovery`]: after an RMS restart, what became of each unfinished migration.
//! - [`orchestrator`]: [`Orchestrator`], the sans-IO state machine: [`Input`]s in, ordered
//!   [`Effect`]s out, every state change persisted before it is acted on.
//!
//! Pure code: no I/O and no clock. Time arrives as `Input::Tick { now }` (seconds).

pub mod api;
pub mod budget;
pub mod inventory;
pub mod migration;
pub mod orchestrator;
pub mod placement;
pub mod recovery;

pub use api::{HostState, HostView, MigrationRequest, MigrationView, VmKind, VmRequest};
pub use inventory::{Host, Vm};
pub use migration::{AnswerKind, Attempt, Migration, MigrationId, MigrationState, Reservation};
pub use orchestrator::{
    check_persist_before_act, Answer, Change, Config, Effect, Input, Orchestrator,
    OrchestratorError, Step,
};
pub use recovery::{AgentReport, LocalState, Verdict};
