//! A started migration: the agents' events, cancellation, reservation expiry, and the ends
//! (completed, failed, cancelled, unknown). The VM's location changes here only, on a
//! confirmed hand-over: `handed_over` from the source or `resumed` from the destination.

use livemig_policy::event::Event;

use super::{Effect, Orchestrator, OrchestratorError};
use crate::migration::{CancelCause, MigrationId, MigrationState, MAX_ROUNDS_KEPT};

/// The `outcome` of a `failed` event that says the guest runs on the source.
pub const OUTCOME_SOURCE_RUNNING: &str = "failed_source_running";

/// An event's tag, for messages.
fn tag(event: &Event) -> String {
    match event {
        Event::HandedOver { .. } => "handed_over".into(),
        Event::Resumed { .. } => "resumed".into(),
        Event::Failed { .. } => "failed".into(),
        Event::Cancelled { .. } => "cancelled".into(),
        other => format!("{other:?}"),
    }
}

impl Orchestrator {
    pub(super) fn agent_event(
        &mut self,
        id: MigrationId,
        host: &str,
        event: &Event,
        effects: &mut Vec<Effect>,
    ) -> Result<(), OrchestratorError> {
        let m = self
            .migrations
            .get(&id)
            .ok_or(OrchestratorError::UnknownMigration(id))?;
        let from_source = host == m.source;
        let from_target = m.target.as_deref() == Some(host);
        if m.state == MigrationState::Queued || m.state == MigrationState::Placing {
            return Err(OrchestratorError::NotStarted {
                migration: id,
                state: m.state.name(),
            });
        }
        if !from_source && !from_target {
            return Err(OrchestratorError::NotAParty {
                migration: id,
                host: host.to_string(),
            });
        }
        if m.state.is_terminal() {
            // Events that would move the guest contradict a finished record: the shell must
            // raise them, never apply them.
            let contradicts = match (m.state, event) {
                (MigrationState::Completed, Event::Failed { .. } | Event::Cancelled { .. }) => {
                    from_source
                }
                (MigrationState::Completed, _) => false,
                (_, Event::HandedOver { .. }) => from_source,
                (_, Event::Resumed { .. }) => from_target,
                _ => false,
            };
            if contradicts {
                return Err(OrchestratorError::Contradicts {
                    migration: id,
                    host: host.to_string(),
                    event: tag(event),
                    state: m.state.name(),
                });
            }
            return Ok(());
        }
        let state = m.state;
        let unknown = state == MigrationState::Unknown;
        match event {
            Event::HandedOver { .. } if from_source => self.complete(id, effects),
            Event::Resumed { .. } if from_target => self.complete(id, effects),
            Event::Connected { .. } if from_source => self.mark_reservation_used(id, effects),
            Event::Accepted { .. } if from_target => self.mark_reservation_used(id, effects),
            Event::RoundStarted { round, bytes, .. } if from_source => {
                self.round_started(id, *round, *bytes);
            }
            Event::RoundEnded { record } if from_source => {
                self.round_ended(id, record);
                let kept = match self.migrations.get_mut(&id) {
                    Some(m) if m.rounds.len() < MAX_ROUNDS_KEPT => {
                        m.rounds.push((**record).clone());
                        true
                    }
                    _ => false,
                };
                // A round past the cap changes nothing on record: nothing to persist.
                if kept {
                    self.save(id, effects);
                }
            }
            Event::StopAndCopy { .. } if from_source && !unknown => {
                self.set_state(id, MigrationState::SwitchingOver);
                self.save(id, effects);
            }
            Event::Committed if from_source => {
                if !unknown {
                    self.set_state(id, MigrationState::SwitchingOver);
                }
                if let Some(m) = self.migrations.get_mut(&id) {
                    m.committed = true;
                }
                self.save(id, effects);
            }
            Event::Failed { error, outcome } if from_source => {
                if outcome == OUTCOME_SOURCE_RUNNING {
                    self.fail(id, error.clone(), effects);
                } else if !unknown {
                    let reason = format!(
                        "the source reports `{error}`; where the guest runs is unknown ({outcome})"
                    );
                    self.mark_unknown(id, reason, effects);
                }
            }
            Event::Cancelled { phase } if from_source => {
                let cause = self.migrations.get(&id).and_then(|m| m.cancel.clone());
                match cause {
                    Some(CancelCause::Abandoned { reason }) => self.fail(id, reason, effects),
                    _ => {
                        self.set_state(id, MigrationState::Cancelled);
                        if let Some(m) = self.migrations.get_mut(&id) {
                            m.error = Some(format!("cancelled during {phase}"));
                        }
                        self.save(id, effects);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn mark_reservation_used(&mut self, id: MigrationId, effects: &mut Vec<Effect>) {
        if let Some(m) = self.migrations.get_mut(&id) {
            if !m.reservation_used {
                m.reservation_used = true;
                self.save(id, effects);
            }
        }
    }

    /// The confirmed hand-over: the migration completes, then the location moves.
    pub(super) fn complete(&mut self, id: MigrationId, effects: &mut Vec<Effect>) {
        let Some(m) = self.migrations.get(&id) else {
            return;
        };
        let Some(target) = m.target.clone() else {
            return;
        };
        let vm = m.vm.clone();
        self.set_state(id, MigrationState::Completed);
        if let Some(m) = self.migrations.get_mut(&id) {
            m.error = None;
        }
        self.save(id, effects);
        if let Some(v) = self.vms.get_mut(&vm) {
            v.host = target.clone();
        }
        self.save_vm(&vm, effects);
        effects.push(Effect::SetLocation {
            vm: vm.clone(),
            host: target.clone(),
        });
        // It arrived on a host drained while it was on its way: it leaves again.
        self.evacuate_if_drained(&vm, &target, effects);
    }

    /// The guest runs on the source: the migration failed for `reason`.
    pub(super) fn fail(&mut self, id: MigrationId, reason: String, effects: &mut Vec<Effect>) {
        self.set_state(id, MigrationState::Failed);
        if let Some(m) = self.migrations.get_mut(&id) {
            m.error = Some(reason);
            m.candidates.clear();
        }
        self.save(id, effects);
    }

    /// Where the guest runs is not known: block the VM and flag an operator.
    pub(super) fn mark_unknown(
        &mut self,
        id: MigrationId,
        reason: String,
        effects: &mut Vec<Effect>,
    ) {
        self.set_state(id, MigrationState::Unknown);
        if let Some(m) = self.migrations.get_mut(&id) {
            m.error = Some(reason.clone());
        }
        self.save(id, effects);
        effects.push(Effect::Flag {
            migration: id,
            reason,
        });
    }

    /// Asks the source to stop; the migration ends when its agent says how it stopped.
    pub(super) fn request_cancel(
        &mut self,
        id: MigrationId,
        cause: CancelCause,
        effects: &mut Vec<Effect>,
    ) {
        let Some(m) = self.migrations.get_mut(&id) else {
            return;
        };
        if m.cancel.is_some() || m.committed {
            return;
        }
        m.cancel = Some(cause);
        let host = m.source.clone();
        self.save(id, effects);
        effects.push(Effect::Cancel {
            migration: id,
            host,
        });
    }

    pub(super) fn cancel(
        &mut self,
        id: MigrationId,
        effects: &mut Vec<Effect>,
    ) -> Result<(), OrchestratorError> {
        let m = self
            .migrations
            .get(&id)
            .ok_or(OrchestratorError::UnknownMigration(id))?;
        match m.state {
            MigrationState::Queued | MigrationState::Placing => {
                // No agent migrates yet; a pending answer arrives late and is released.
                self.set_state(id, MigrationState::Cancelled);
                if let Some(m) = self.migrations.get_mut(&id) {
                    m.candidates.clear();
                    m.error = Some("cancelled before it started".into());
                }
                self.save(id, effects);
                Ok(())
            }
            MigrationState::Running | MigrationState::SwitchingOver => {
                if m.committed {
                    return Err(OrchestratorError::TooLate(id));
                }
                self.request_cancel(id, CancelCause::Requested, effects);
                Ok(())
            }
            MigrationState::Unknown => Err(OrchestratorError::CancelUnknown(id)),
            MigrationState::Completed | MigrationState::Failed | MigrationState::Cancelled => {
                Err(OrchestratorError::Finished(id))
            }
        }
    }

    /// A running migration whose reservation expired before the destination took it up
    /// cannot reach the destination any more: ask the source to stop, and wait for its word.
    pub(super) fn reservation_expiries(&mut self, effects: &mut Vec<Effect>) {
        let now = self.now;
        let expired: Vec<(MigrationId, String)> = self
            .migrations
            .values()
            .filter(|m| m.state == MigrationState::Running && !m.reservation_used)
            .filter_map(|m| {
                let r = m.reservation.as_ref()?;
                (r.expires_at <= now).then(|| (m.id, m.target.clone().unwrap_or_default()))
            })
            .collect();
        for (id, target) in expired {
            let reason =
                format!("the reservation on `{target}` expired before the source connected");
            self.request_cancel(id, CancelCause::Abandoned { reason }, effects);
        }
    }

    /// An operator says where the guest of a migration in `unknown` runs.
    pub(super) fn resolve(
        &mut self,
        id: MigrationId,
        host: &str,
        effects: &mut Vec<Effect>,
    ) -> Result<(), OrchestratorError> {
        let m = self
            .migrations
            .get(&id)
            .ok_or(OrchestratorError::UnknownMigration(id))?;
        if m.state != MigrationState::Unknown {
            return Err(OrchestratorError::NotUnknown(id));
        }
        if host == m.source {
            self.fail(
                id,
                format!("an operator found the guest on the source `{host}`"),
                effects,
            );
        } else if m.target.as_deref() == Some(host) {
            self.complete(id, effects);
        } else {
            return Err(OrchestratorError::NotAParty {
                migration: id,
                host: host.to_string(),
            });
        }
        Ok(())
    }
}
