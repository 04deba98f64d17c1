//! Hosts and VMs: registration, heartbeats, liveness on `Tick`, a lost host's migrations,
//! and reconciliation after an RMS restart.

use super::{Change, Effect, Orchestrator, OrchestratorError};
use crate::api::HostState;
use crate::inventory::{self, Host, Vm};
use crate::migration::{CancelCause, MigrationState};
use crate::recovery::{self, AgentReport, Verdict};

impl Orchestrator {
    pub(super) fn add_host(
        &mut self,
        name: &str,
        address: &str,
        memory_total_bytes: u64,
        timeout_s: Option<f64>,
        effects: &mut Vec<Effect>,
    ) {
        let timeout_s = timeout_s
            .filter(|t| t.is_finite() && *t > 0.0)
            .unwrap_or(self.config.host_timeout_s);
        let host = match self.hosts.get(name) {
            Some(old) => Host {
                address: address.to_string(),
                memory_total_bytes,
                state: HostState::Alive,
                last_heard: self.now,
                timeout_s,
                ..old.clone()
            },
            None => Host::new(name, address, memory_total_bytes, self.now, timeout_s),
        };
        self.hosts.insert(name.to_string(), host);
        self.save_host(name, effects);
    }

    pub(super) fn add_vm(
        &mut self,
        vm: Vm,
        effects: &mut Vec<Effect>,
    ) -> Result<(), OrchestratorError> {
        if self.vms.contains_key(&vm.name) {
            return Err(OrchestratorError::VmExists(vm.name));
        }
        match self.hosts.get(&vm.host) {
            None => return Err(OrchestratorError::UnknownHost(vm.host)),
            Some(h) if !h.is_alive() => return Err(OrchestratorError::HostLost { host: vm.host }),
            Some(_) => {}
        }
        let name = vm.name.clone();
        let host = vm.host.clone();
        self.vms.insert(name.clone(), vm);
        self.save_vm(&name, effects);
        // A VM that appears on a drained host (started just as the drain came, or known to
        // an agent that registers again) leaves it too.
        self.evacuate_if_drained(&name, &host, effects);
        Ok(())
    }

    /// A VM leaves the location table, unless a migration holds it (queued, placing,
    /// running, switching over or unknown): those must end or be settled first.
    pub(super) fn remove_vm(
        &mut self,
        name: &str,
        effects: &mut Vec<Effect>,
    ) -> Result<(), OrchestratorError> {
        if !self.vms.contains_key(name) {
            return Err(OrchestratorError::UnknownVm(name.to_string()));
        }
        if let Some(m) = self.holding(name) {
            return Err(if m.state == MigrationState::Unknown {
                OrchestratorError::VmBlocked {
                    vm: name.to_string(),
                    migration: m.id,
                }
            } else {
                OrchestratorError::VmBusy {
                    vm: name.to_string(),
                    migration: m.id,
                }
            });
        }
        self.vms.remove(name);
        effects.push(Effect::Persist(Change::VmRemoved {
            name: name.to_string(),
        }));
        Ok(())
    }

    /// Heartbeats are soft state (not persisted) unless they bring a lost host back.
    pub(super) fn heartbeat(
        &mut self,
        name: &str,
        memory_free_bytes: u64,
        effects: &mut Vec<Effect>,
    ) -> Result<(), OrchestratorError> {
        let now = self.now;
        let host = self
            .hosts
            .get_mut(name)
            .ok_or_else(|| OrchestratorError::UnknownHost(name.to_string()))?;
        host.last_heard = now;
        host.memory_free_bytes = memory_free_bytes.min(host.memory_total_bytes);
        if host.state == HostState::Lost {
            host.state = HostState::Alive;
            self.save_host(name, effects);
        }
        Ok(())
    }

    pub(super) fn tick(&mut self, now: f64, effects: &mut Vec<Effect>) {
        if now.is_finite() && now > self.now {
            self.now = now;
        }
        let lapsed = inventory::lapsed(self.hosts.values(), self.now);
        self.hosts_lost(&lapsed, effects);
        self.answer_timeouts(effects);
        self.sample_timeouts(effects);
        self.reservation_expiries(effects);
    }

    /// Marks the hosts lost (all of them before anything else, so that no next ask goes to
    /// one of them). A pending ask to one counts as a refusal; a started migration one takes
    /// part in becomes `unknown` (its source, if alive, is asked to stop).
    pub(super) fn hosts_lost(&mut self, names: &[String], effects: &mut Vec<Effect>) {
        let mut newly = Vec::new();
        for name in names {
            if let Some(host) = self.hosts.get_mut(name) {
                if host.state == HostState::Alive {
                    host.state = HostState::Lost;
                    self.save_host(name, effects);
                    newly.push(name.clone());
                }
            }
        }
        for name in &newly {
            self.after_host_lost(name, effects);
        }
    }

    fn after_host_lost(&mut self, name: &str, effects: &mut Vec<Effect>) {
        let ids: Vec<_> = self.migrations.keys().copied().collect();
        for id in ids {
            let Some(m) = self.migrations.get(&id) else {
                continue;
            };
            let party = m.source == name || m.target.as_deref() == Some(name);
            match m.state {
                MigrationState::Placing if m.pending.as_ref().is_some_and(|p| p.host == name) => {
                    self.refuse_pending(id, name, "host lost before it answered".into(), effects);
                }
                MigrationState::Running | MigrationState::SwitchingOver if party => {
                    let source_alive = self.hosts.get(&m.source).is_some_and(|h| h.is_alive());
                    let reason = format!("host `{name}` was lost during the migration");
                    self.mark_unknown(id, reason.clone(), effects);
                    if source_alive {
                        self.request_cancel(id, CancelCause::Abandoned { reason }, effects);
                    }
                }
                _ => {}
            }
        }
    }

    /// Applies the verdicts of [`recovery::reconcile`] to every unfinished migration.
    pub(super) fn restarted(&mut self, reports: &[AgentReport], effects: &mut Vec<Effect>) {
        // A sample asked before the restart will not be answered: ask again (the budget's
        // schedule asks every queued migration that has neither an estimate nor an ask).
        for m in self.migrations.values_mut() {
            if m.state == MigrationState::Queued && m.budget.estimate.is_none() {
                m.budget.sample_asked_at = None;
            }
        }
        for r in reports {
            if let Some(h) = self.hosts.get_mut(&r.host) {
                h.last_heard = self.now;
                if h.state == HostState::Lost {
                    h.state = HostState::Alive;
                    self.save_host(&r.host, effects);
                }
            }
        }
        for (id, verdict) in recovery::reconcile(self.migrations.values(), reports) {
            match verdict {
                Verdict::Continue => {}
                Verdict::Requeue => {
                    if self
                        .migrations
                        .get(&id)
                        .is_some_and(|m| m.state == MigrationState::Placing)
                    {
                        self.set_state(id, MigrationState::Queued);
                        if let Some(m) = self.migrations.get_mut(&id) {
                            m.candidates.clear();
                        }
                        self.save(id, effects);
                    }
                }
                Verdict::Completed => self.complete(id, effects),
                Verdict::Failed { reason } => self.fail(id, reason, effects),
                Verdict::Unknown { reason } => self.mark_unknown(id, reason, effects),
            }
        }
    }
}
