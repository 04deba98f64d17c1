//! From a request to a running migration: admission, the queue, and placement (ask the ranked
//! hosts one at a time until one accepts; every answer is recorded as an attempt).

use std::str::FromStr;

use livemig_policy::PolicyKind;

use super::{Answer, Effect, Orchestrator, OrchestratorError};
use crate::api::MigrationRequest;
use crate::migration::{AnswerKind, Attempt, Migration, MigrationId, MigrationState, PendingAsk};
use crate::placement;

impl Orchestrator {
    /// Admits a request: the VM must exist on an alive host and be free, the target (if any)
    /// known and not the source. The migration is queued; `schedule` starts it.
    pub(super) fn submit(
        &mut self,
        req: MigrationRequest,
        effects: &mut Vec<Effect>,
    ) -> Result<MigrationId, OrchestratorError> {
        let vm = self
            .vms
            .get(&req.vm)
            .ok_or_else(|| OrchestratorError::UnknownVm(req.vm.clone()))?;
        if let Some(t) = &req.target {
            match self.hosts.get(t) {
                None => return Err(OrchestratorError::UnknownHost(t.clone())),
                Some(h) if h.draining => return Err(OrchestratorError::Draining(t.clone())),
                Some(_) => {}
            }
            if *t == vm.host {
                return Err(OrchestratorError::TargetIsSource {
                    vm: vm.name.clone(),
                    target: t.clone(),
                });
            }
        }
        if let Some(m) = self.holding(&vm.name) {
            return Err(if m.state == MigrationState::Unknown {
                OrchestratorError::VmBlocked {
                    vm: vm.name.clone(),
                    migration: m.id,
                }
            } else {
                OrchestratorError::VmBusy {
                    vm: vm.name.clone(),
                    migration: m.id,
                }
            });
        }
        if !self.hosts.get(&vm.host).is_some_and(|h| h.is_alive()) {
            return Err(OrchestratorError::SourceLost {
                vm: vm.name.clone(),
                host: vm.host.clone(),
            });
        }
        let policy = req
            .policy
            .clone()
            .unwrap_or_else(|| self.config.default_policy.clone());
        if PolicyKind::from_str(&policy).is_err() {
            return Err(OrchestratorError::UnknownPolicy(policy));
        }
        let id = MigrationId(self.next_id);
        self.next_id += 1;
        let mut m = Migration::new(id, &vm.name, &vm.host, req.target, &policy);
        m.settings = req.settings;
        m.budget.priority = req.priority.unwrap_or(0);
        m.budget.submitted_at = self.now;
        self.migrations.insert(id, m);
        self.save(id, effects);
        Ok(id)
    }

    /// Without a budget: starts queued migrations, oldest first, while slots are free.
    pub(super) fn schedule_slots(&mut self, effects: &mut Vec<Effect>) {
        loop {
            let active = self
                .migrations
                .values()
                .filter(|m| m.state.is_active())
                .count();
            if active >= self.config.max_active {
                return;
            }
            let Some(id) = self
                .migrations
                .values()
                .find(|m| m.state == MigrationState::Queued)
                .map(|m| m.id)
            else {
                return;
            };
            self.start_placing(id, effects);
        }
    }

    pub(super) fn start_placing(&mut self, id: MigrationId, effects: &mut Vec<Effect>) {
        let Some(m) = self.migrations.get(&id) else {
            return;
        };
        if !self.hosts.get(&m.source).is_some_and(|h| h.is_alive()) {
            let reason = format!("the source `{}` is lost", m.source);
            self.fail(id, reason, effects);
            return;
        }
        let candidates = placement::candidates(
            self.hosts.values(),
            &m.source,
            m.requested_target.as_deref(),
        );
        self.set_state(id, MigrationState::Placing);
        if let Some(m) = self.migrations.get_mut(&id) {
            m.candidates = candidates;
        }
        self.ask_next(id, effects);
    }

    /// Asks the next alive candidate, or fails the migration with every attempt's reason.
    pub(super) fn ask_next(&mut self, id: MigrationId, effects: &mut Vec<Effect>) {
        let now = self.now;
        let Some(m) = self.migrations.get_mut(&id) else {
            return;
        };
        m.pending = None;
        while !m.candidates.is_empty() {
            let host = m.candidates.remove(0);
            if self.hosts.get(&host).is_some_and(|h| h.takes_vms()) {
                m.pending = Some(PendingAsk {
                    host: host.clone(),
                    asked_at: now,
                });
                let (vm, memory_bytes) = (
                    m.vm.clone(),
                    self.vms.get(&m.vm).map_or(0, |v| v.memory_bytes),
                );
                self.save(id, effects);
                effects.push(Effect::AskCapacity {
                    migration: id,
                    host,
                    vm,
                    memory_bytes,
                });
                return;
            }
        }
        let reason = if m.attempts.is_empty() {
            match &m.requested_target {
                Some(t) => format!("the target `{t}` is lost or is the source"),
                None => "no alive host to ask".to_string(),
            }
        } else {
            let why: Vec<String> = m
                .attempts
                .iter()
                .map(|a| {
                    format!(
                        "{}: {}",
                        a.host,
                        if a.reason.is_empty() {
                            "accepted"
                        } else {
                            &a.reason
                        }
                    )
                })
                .collect();
            format!("no host took `{}` ({})", m.vm, why.join("; "))
        };
        self.fail(id, reason, effects);
    }

    /// Records a host's answer; an acceptance of the pending ask starts the migration.
    pub(super) fn answer(
        &mut self,
        id: MigrationId,
        host: &str,
        answer: Answer,
        effects: &mut Vec<Effect>,
    ) -> Result<(), OrchestratorError> {
        let now = self.now;
        let alive = self.hosts.get(host).is_some_and(|h| h.takes_vms());
        let m = self.migration_mut(id)?;
        let pending = m.state == MigrationState::Placing
            && m.pending.as_ref().is_some_and(|p| p.host == host);
        let (kind, reservation, reason) = match answer {
            Answer::Accepted { reservation } => (AnswerKind::Accepted, Some(reservation), None),
            Answer::Refused { reason } => (AnswerKind::Refused, None, Some(reason)),
        };
        // Why an acceptance goes unused (the reservation is released), if it does.
        let unused = match (&reservation, pending) {
            (None, _) => None,
            (Some(_), false) => Some("late: no longer asked; reservation released".to_string()),
            (Some(_), true) if !alive => {
                Some("host lost or drained; reservation released".to_string())
            }
            (Some(r), true) if !r.expires_at.is_finite() || r.expires_at <= now => {
                Some("the reservation expired on arrival; released".to_string())
            }
            (Some(_), true) => None,
        };
        let reason = match (reason, &unused, pending) {
            (Some(r), _, true) => r,
            (Some(r), _, false) => format!("late: {r}"),
            (None, Some(u), _) => u.clone(),
            (None, None, _) => String::new(),
        };
        m.attempts.push(Attempt {
            host: host.to_string(),
            answer: kind,
            reason,
        });
        match (reservation, unused, pending) {
            (Some(r), None, true) => {
                m.target = Some(host.to_string());
                m.reservation = Some(r.clone());
                m.candidates.clear();
                self.set_state(id, MigrationState::Running);
                self.save(id, effects);
                if let Some(m) = self.migrations.get(&id) {
                    effects.push(Effect::StartMigration {
                        migration: id,
                        vm: m.vm.clone(),
                        source: m.source.clone(),
                        target: host.to_string(),
                        reservation: r.id,
                        key_id: format!("migration-{id}"),
                        policy: m.policy.clone(),
                        settings: m.settings.clone().map(Box::new),
                        grant_bytes_per_s: m.budget.grant_bytes_per_s,
                    });
                }
            }
            (Some(r), Some(_), _) => {
                self.save(id, effects);
                effects.push(Effect::Release {
                    host: host.to_string(),
                    reservation: r.id,
                });
                if pending {
                    self.ask_next(id, effects);
                }
            }
            (_, _, true) => self.ask_next(id, effects),
            (_, _, false) => self.save(id, effects),
        }
        Ok(())
    }

    /// Hosts that did not answer in time count as refusals.
    pub(super) fn answer_timeouts(&mut self, effects: &mut Vec<Effect>) {
        let limit = self.config.answer_timeout_s;
        let now = self.now;
        let overdue: Vec<(MigrationId, String)> = self
            .migrations
            .values()
            .filter(|m| m.state == MigrationState::Placing)
            .filter_map(|m| {
                let p = m.pending.as_ref()?;
                (now - p.asked_at > limit).then(|| (m.id, p.host.clone()))
            })
            .collect();
        for (id, host) in overdue {
            self.refuse_pending(id, &host, format!("no answer within {limit} s"), effects);
        }
    }

    /// Records the pending ask to `host` as refused for `reason` and asks the next host.
    pub(super) fn refuse_pending(
        &mut self,
        id: MigrationId,
        host: &str,
        reason: String,
        effects: &mut Vec<Effect>,
    ) {
        if let Some(m) = self.migrations.get_mut(&id) {
            m.attempts.push(Attempt {
                host: host.to_string(),
                answer: AnswerKind::Refused,
                reason,
            });
        }
        self.ask_next(id, effects);
    }
}
