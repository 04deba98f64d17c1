//! The sans-IO orchestrator: [`Input`]s in, [`Effect`]s out. It owns the RMS's picture (hosts,
//! the VM location table, migrations) and never does I/O or reads a clock: time arrives with
//! [`Input::Tick`].
//!
//! The shell carries the effects out **in order**. Every state change comes as an
//! [`Effect::Persist`] placed before any effect that acts on it, so a crash between the two
//! leaves a store that recovery ([`crate::recovery`]) can read: the RMS never acts on a
//! state it has not written down.

mod drain;
mod hosts;
mod placing;
mod rule;
mod running;
mod sharing;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use livemig_policy::event::Event;
use livemig_policy::report::MigrationReport;
use livemig_policy::stats::DirtySample;
use livemig_policy::PolicySpec;
use serde::{Deserialize, Serialize};

use crate::api::{HostView, MigrationRequest, VmKind};
use crate::budget;
use crate::inventory::{Host, Vm};
use crate::migration::{Migration, MigrationId, MigrationState, Reservation};
use crate::recovery::AgentReport;

pub use drain::DrainProgress;
pub use rule::check_persist_before_act;
pub use running::OUTCOME_SOURCE_RUNNING;
pub use sharing::{
    estimate_from, policy_bounds, scheme_name, BudgetConfig, BudgetView, GrantView,
    MAX_SAMPLE_POINTS,
};

/// The orchestrator's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Migrations placing or running at once; more wait `queued`.
    pub max_active: usize,
    /// How long a host may take to answer "can you take this VM?" (seconds).
    pub answer_timeout_s: f64,
    /// How long a host may stay silent before it is lost, unless it registered its own.
    pub host_timeout_s: f64,
    /// The policy of a migration request that names none.
    pub default_policy: String,
    /// The shared migration budget; `None`: `max_active` slots alone decide.
    pub budget: Option<BudgetConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_active: 4,
            answer_timeout_s: 5.0,
            host_timeout_s: 10.0,
            default_policy: "dirty-factor".to_string(),
            budget: None,
        }
    }
}

/// A host's answer to "can you take this VM?".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// It holds room for the VM until the reservation expires.
    Accepted {
        reservation: Reservation,
    },
    Refused {
        reason: String,
    },
}

/// What the orchestrator is told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Input {
    /// An agent registered (or registered again): its host is alive.
    AddHost {
        name: String,
        address: String,
        memory_total_bytes: u64,
        /// Its own liveness timeout; [`Config::host_timeout_s`] when absent.
        timeout_s: Option<f64>,
    },
    /// A VM an agent runs on `host`.
    AddVm {
        name: String,
        memory_bytes: u64,
        workload: String,
        kind: VmKind,
        host: String,
    },
    /// An operator deleted a VM (its agent stopped it): it leaves the location table.
    RemoveVm { name: String },
    /// An agent's heartbeat, with its free memory (reservations deducted).
    Heartbeat {
        host: String,
        memory_free_bytes: u64,
    },
    /// `POST /api/v1/migrations`.
    Submit(MigrationRequest),
    /// A host answered the capacity question of a migration.
    Answer {
        migration: MigrationId,
        host: String,
        answer: Answer,
    },
    /// An event from the event stream of `host`'s agent about `migration`.
    AgentEvent {
        migration: MigrationId,
        host: String,
        event: Event,
    },
    /// The source's agent posted the migration's result.
    Report {
        migration: MigrationId,
        report: Box<MigrationReport>,
    },
    /// `DELETE /api/v1/migrations/{id}`.
    Cancel { migration: MigrationId },
    /// Time passed: `now` in seconds on the RMS's clock (monotonic; an earlier value is
    /// ignored).
    Tick { now: f64 },
    /// The shell lost a host (its connection broke for good, or an operator said so).
    HostLost { host: String },
    /// After an RMS restart: what every agent that answered reports it runs.
    Restarted { reports: Vec<AgentReport> },
    /// An operator settled a migration in `unknown`: the guest runs on `host`.
    Resolve {
        migration: MigrationId,
        host: String,
    },
    /// The source's dirty sample of a queued migration's VM, or why there is none.
    Sampled {
        migration: MigrationId,
        host: String,
        sample: Option<DirtySample>,
        error: Option<String>,
    },
    /// An operator drains `host`: it takes no new VMs, and each of its VMs is migrated.
    Drain { host: String },
    /// `host` takes VMs again (its drain's migrations go on).
    Undrain { host: String },
    /// The source's agent did not take `migration`'s grant of `bytes_per_s` (the shell gave
    /// up sending it): it is sent again at the next plan.
    GrantUnapplied {
        migration: MigrationId,
        bytes_per_s: Option<f64>,
    },
}

/// A state change the shell writes to the store before it carries out any later effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    Host(Box<Host>),
    /// A VM record; its `host` is the location table's entry.
    Vm(Box<Vm>),
    /// The VM named here no longer exists (deleted by an operator).
    VmRemoved {
        name: String,
    },
    Migration(Box<Migration>),
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Write the change to the store (and wait until it is durable).
    Persist(Change),
    /// Ask `host`'s agent whether it can take `vm` (`memory_bytes`) for `migration`.
    AskCapacity {
        migration: MigrationId,
        host: String,
        vm: String,
        memory_bytes: u64,
    },
    /// Tell `host`'s agent to drop a reservation nobody will use.
    Release { host: String, reservation: String },
    /// Tell the source's agent to migrate `vm` to `target`, presenting `reservation` there;
    /// `key_id` names the pre-shared key the shell issues to both ends.
    StartMigration {
        migration: MigrationId,
        vm: String,
        source: String,
        target: String,
        reservation: String,
        key_id: String,
        policy: String,
        settings: Option<Box<PolicySpec>>,
        /// The budget's grant at the start (bytes/s; `None`: no cap).
        grant_bytes_per_s: Option<f64>,
    },
    /// Ask the source's agent for a dirty sample of `vm` over `seconds`.
    Sample {
        migration: MigrationId,
        host: String,
        vm: String,
        seconds: f64,
    },
    /// Tell the source's agent the rate `migration` may use from now on.
    Grant {
        migration: MigrationId,
        host: String,
        bytes_per_s: Option<f64>,
    },
    /// Tell `host`'s agent (the source) to cancel `migration` (ignored after its commit).
    Cancel {
        migration: MigrationId,
        host: String,
    },
    /// `vm` now runs on `host`: tell whoever routes to it (agents, the dashboard).
    SetLocation { vm: String, host: String },
    /// A migration needs an operator: where its guest runs is not known.
    Flag {
        migration: MigrationId,
        reason: String,
    },
}

impl Effect {
    /// Whether the effect acts on the world (everything but `Persist`).
    pub fn is_action(&self) -> bool {
        !matches!(self, Effect::Persist(_))
    }
}

/// What one input produced: the effects, and the id of a migration it created.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Step {
    pub effects: Vec<Effect>,
    pub created: Option<MigrationId>,
    /// The migrations a drain submitted.
    pub drained: Vec<MigrationId>,
}

/// Why an input was refused; the orchestrator's state is unchanged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OrchestratorError {
    #[error("no host is named `{0}`")]
    UnknownHost(String),
    #[error("no VM is named `{0}`")]
    UnknownVm(String),
    #[error("no migration has id {0}")]
    UnknownMigration(MigrationId),
    #[error("a VM named `{0}` exists already")]
    VmExists(String),
    #[error("host `{host}` is lost: it gets no new VMs")]
    HostLost { host: String },
    #[error("`{target}` already runs `{vm}`")]
    TargetIsSource { vm: String, target: String },
    #[error("`{vm}` is being migrated (migration {migration})")]
    VmBusy { vm: String, migration: MigrationId },
    #[error(
        "where `{vm}` runs is unknown since migration {migration}: an operator must settle it first"
    )]
    VmBlocked { vm: String, migration: MigrationId },
    #[error("`{vm}` runs on `{host}`, which is lost")]
    SourceLost { vm: String, host: String },
    #[error("unknown policy `{0}`")]
    UnknownPolicy(String),
    #[error("`{host}` takes no part in migration {migration}")]
    NotAParty {
        migration: MigrationId,
        host: String,
    },
    #[error("migration {migration} is {state}: no agent migrates it yet")]
    NotStarted {
        migration: MigrationId,
        state: &'static str,
    },
    #[error("`{host}` reports `{event}` for migration {migration}, which is already {state}")]
    Contradicts {
        migration: MigrationId,
        host: String,
        event: String,
        state: &'static str,
    },
    #[error("migration {0} passed its commit point: it is too late to cancel it")]
    TooLate(MigrationId),
    #[error("migration {0} is already over")]
    Finished(MigrationId),
    #[error("where migration {0}'s guest runs is unknown: resolve it, do not cancel it")]
    CancelUnknown(MigrationId),
    #[error("migration {0} is not in `unknown`: there is nothing to resolve")]
    NotUnknown(MigrationId),
    #[error("host `{0}` is being drained: it takes no new VMs")]
    Draining(String),
}

/// The RMS's orchestration core.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    config: Config,
    now: f64,
    next_id: u64,
    hosts: BTreeMap<String, Host>,
    vms: BTreeMap<String, Vm>,
    migrations: BTreeMap<MigrationId, Migration>,
    /// The budget's last plan (for its view) and why the last one failed, if it did.
    last_plan: Option<budget::Plan>,
    plan_error: Option<String>,
}

impl Orchestrator {
    /// An empty RMS at time `now`.
    pub fn new(config: Config, now: f64) -> Orchestrator {
        Orchestrator::restore(config, now, [], [], [])
    }

    /// The RMS as its store holds it (after a restart, follow with [`Input::Restarted`]).
    /// Every restored host counts as heard from at `now`.
    pub fn restore(
        config: Config,
        now: f64,
        hosts: impl IntoIterator<Item = Host>,
        vms: impl IntoIterator<Item = Vm>,
        migrations: impl IntoIterator<Item = Migration>,
    ) -> Orchestrator {
        let migrations: BTreeMap<MigrationId, Migration> =
            migrations.into_iter().map(|m| (m.id, m)).collect();
        let next_id = migrations.keys().next_back().map_or(1, |id| id.0 + 1);
        Orchestrator {
            config,
            now,
            next_id,
            hosts: hosts
                .into_iter()
                .map(|mut h| {
                    h.last_heard = now;
                    (h.name.clone(), h)
                })
                .collect(),
            vms: vms.into_iter().map(|v| (v.name.clone(), v)).collect(),
            migrations,
            last_plan: None,
            plan_error: None,
        }
    }

    /// Handles one input. On an error nothing changed and there is nothing to do.
    pub fn handle(&mut self, input: Input) -> Result<Step, OrchestratorError> {
        let mut step = Step::default();
        match input {
            Input::AddHost {
                name,
                address,
                memory_total_bytes,
                timeout_s,
            } => self.add_host(
                &name,
                &address,
                memory_total_bytes,
                timeout_s,
                &mut step.effects,
            ),
            Input::AddVm {
                name,
                memory_bytes,
                workload,
                kind,
                host,
            } => {
                let vm = Vm {
                    name,
                    memory_bytes,
                    workload,
                    kind,
                    host,
                };
                self.add_vm(vm, &mut step.effects)?
            }
            Input::RemoveVm { name } => self.remove_vm(&name, &mut step.effects)?,
            Input::Heartbeat {
                host,
                memory_free_bytes,
            } => self.heartbeat(&host, memory_free_bytes, &mut step.effects)?,
            Input::Submit(req) => {
                let id = self.submit(req, &mut step.effects)?;
                self.ask_sample(id, &mut step.effects);
                step.created = Some(id);
            }
            Input::Answer {
                migration,
                host,
                answer,
            } => self.answer(migration, &host, answer, &mut step.effects)?,
            Input::AgentEvent {
                migration,
                host,
                event,
            } => self.agent_event(migration, &host, &event, &mut step.effects)?,
            Input::Report { migration, report } => {
                let m = self.migration_mut(migration)?;
                m.report = Some(report);
                self.save(migration, &mut step.effects);
            }
            Input::Cancel { migration } => self.cancel(migration, &mut step.effects)?,
            Input::Tick { now } => self.tick(now, &mut step.effects),
            Input::HostLost { host } => {
                if !self.hosts.contains_key(&host) {
                    return Err(OrchestratorError::UnknownHost(host));
                }
                self.hosts_lost(&[host], &mut step.effects);
            }
            Input::Restarted { reports } => self.restarted(&reports, &mut step.effects),
            Input::Resolve { migration, host } => {
                self.resolve(migration, &host, &mut step.effects)?
            }
            Input::Sampled {
                migration,
                host,
                sample,
                error,
            } => self.sampled(migration, &host, sample, error, &mut step.effects)?,
            Input::Drain { host } => step.drained = self.drain(&host, &mut step.effects)?,
            Input::Undrain { host } => self.undrain(&host, &mut step.effects)?,
            Input::GrantUnapplied {
                migration,
                bytes_per_s,
            } => self.grant_unapplied(migration, bytes_per_s),
        }
        self.schedule(&mut step.effects);
        self.grants_travel_with_starts(&mut step.effects);
        Ok(step)
    }

    /// The RMS's clock: the latest `Tick`.
    pub fn now(&self) -> f64 {
        self.now
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.get(name)
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    pub fn vm(&self, name: &str) -> Option<&Vm> {
        self.vms.get(name)
    }

    pub fn vms(&self) -> impl Iterator<Item = &Vm> {
        self.vms.values()
    }

    pub fn migration(&self, id: MigrationId) -> Option<&Migration> {
        self.migrations.get(&id)
    }

    pub fn migrations(&self) -> impl Iterator<Item = &Migration> {
        self.migrations.values()
    }

    /// `GET /api/v1/hosts`.
    pub fn host_views(&self) -> Vec<HostView> {
        self.hosts
            .values()
            .map(|h| {
                let vms = self
                    .vms
                    .values()
                    .filter(|v| v.host == h.name)
                    .map(|v| v.name.clone())
                    .collect();
                h.view(vms)
            })
            .collect()
    }

    /// The migration that holds `vm` (not finished), if any.
    pub fn holding(&self, vm: &str) -> Option<&Migration> {
        self.migrations
            .values()
            .find(|m| m.vm == vm && m.state.holds_vm())
    }

    fn migration_mut(&mut self, id: MigrationId) -> Result<&mut Migration, OrchestratorError> {
        self.migrations
            .get_mut(&id)
            .ok_or(OrchestratorError::UnknownMigration(id))
    }

    /// Pushes the migration's record as it stands.
    fn save(&self, id: MigrationId, effects: &mut Vec<Effect>) {
        if let Some(m) = self.migrations.get(&id) {
            effects.push(Effect::Persist(Change::Migration(Box::new(m.clone()))));
        }
    }

    fn save_host(&self, name: &str, effects: &mut Vec<Effect>) {
        if let Some(h) = self.hosts.get(name) {
            effects.push(Effect::Persist(Change::Host(Box::new(h.clone()))));
        }
    }

    fn save_vm(&self, name: &str, effects: &mut Vec<Effect>) {
        if let Some(v) = self.vms.get(name) {
            effects.push(Effect::Persist(Change::Vm(Box::new(v.clone()))));
        }
    }

    /// Moves a migration to `to`; the caller saves it. An illegal move is a bug in this crate.
    fn set_state(&mut self, id: MigrationId, to: MigrationState) {
        if let Some(m) = self.migrations.get_mut(&id) {
            debug_assert!(m.state.can_go(to), "{:?} -> {:?}", m.state, to);
            m.state = to;
            if to != MigrationState::Placing {
                m.pending = None;
            }
        }
    }
}
