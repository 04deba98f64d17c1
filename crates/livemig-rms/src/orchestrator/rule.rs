//! The rule every effect list keeps: each action comes after the `Persist` that records what
//! it does. Tests check it on every step; a shell may assert it in debug builds.

use super::{Change, Effect};
use crate::migration::{MigrationId, MigrationState};

/// Checks the rule "persisted before acted on" on one effect list: the latest `Persist` of
/// what each action relies on comes before it and says what the action does. Returns the
/// first violation. Tests use it; a shell may assert it in debug builds.
pub fn check_persist_before_act(effects: &[Effect]) -> Result<(), String> {
    for (i, e) in effects.iter().enumerate() {
        let before = &effects[..i];
        let last_of = |id: MigrationId| {
            before.iter().rev().find_map(|e| match e {
                Effect::Persist(Change::Migration(m)) if m.id == id => Some(&**m),
                _ => None,
            })
        };
        let ok = match e {
            Effect::Persist(_) => true,
            Effect::AskCapacity {
                migration, host, ..
            } => last_of(*migration).is_some_and(|m| {
                m.state == MigrationState::Placing
                    && m.pending.as_ref().is_some_and(|p| p.host == *host)
            }),
            Effect::StartMigration {
                migration, target, ..
            } => last_of(*migration).is_some_and(|m| {
                m.state == MigrationState::Running && m.target.as_deref() == Some(target)
            }),
            Effect::Cancel { migration, host } => {
                last_of(*migration).is_some_and(|m| m.cancel.is_some() && m.source == *host)
            }
            Effect::Sample {
                migration, host, ..
            } => last_of(*migration).is_some_and(|m| {
                m.state == MigrationState::Queued
                    && m.budget.sample_asked_at.is_some()
                    && m.source == *host
            }),
            Effect::Grant {
                migration,
                host,
                bytes_per_s,
            } => last_of(*migration)
                .is_some_and(|m| m.budget.grant_bytes_per_s == *bytes_per_s && m.source == *host),
            Effect::Flag { migration, .. } => {
                last_of(*migration).is_some_and(|m| m.state == MigrationState::Unknown)
            }
            Effect::Release { host, .. } => before.iter().any(|e| {
                matches!(e, Effect::Persist(Change::Migration(m))
                    if m.attempts.last().is_some_and(|a| a.host == *host))
            }),
            Effect::SetLocation { vm, host } => {
                let vm_saved = before.iter().rev().find_map(|e| match e {
                    Effect::Persist(Change::Vm(v)) if v.name == *vm => Some(v.host == *host),
                    _ => None,
                });
                let completed = before.iter().any(|e| {
                    matches!(e, Effect::Persist(Change::Migration(m))
                        if m.vm == *vm && m.state == MigrationState::Completed
                            && m.target.as_deref() == Some(host))
                });
                vm_saved == Some(true) && completed
            }
        };
        if !ok {
            return Err(format!("effect {i} ({e:?}) is not preceded by its Persist"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::{Migration, PendingAsk};

    fn ask() -> Effect {
        Effect::AskCapacity {
            migration: MigrationId(1),
            host: "b".into(),
            vm: "vm1".into(),
            memory_bytes: 1,
        }
    }

    fn persisted(state: MigrationState, asking: Option<&str>) -> Effect {
        let mut m = Migration::new(MigrationId(1), "vm1", "a", None, "xen");
        m.state = state;
        m.pending = asking.map(|h| PendingAsk {
            host: h.into(),
            asked_at: 0.0,
        });
        Effect::Persist(Change::Migration(Box::new(m)))
    }

    #[test]
    fn an_action_needs_its_own_persist_first() {
        assert!(check_persist_before_act(&[]).is_ok());
        assert!(
            check_persist_before_act(&[ask()]).is_err(),
            "nothing persisted"
        );
        assert!(
            check_persist_before_act(&[ask(), persisted(MigrationState::Placing, Some("b"))])
                .is_err(),
            "too late"
        );
        assert!(
            check_persist_before_act(&[persisted(MigrationState::Placing, Some("c")), ask()])
                .is_err(),
            "another host"
        );
        assert!(
            check_persist_before_act(&[persisted(MigrationState::Placing, Some("b")), ask()])
                .is_ok()
        );
        assert!(
            check_persist_before_act(&[
                persisted(MigrationState::Placing, Some("b")),
                persisted(MigrationState::Failed, None),
                ask()
            ])
            .is_err(),
            "the latest record counts"
        );
        let moved = Effect::SetLocation {
            vm: "vm1".into(),
            host: "b".into(),
        };
        assert!(
            check_persist_before_act(&[persisted(MigrationState::Running, None), moved]).is_err()
        );
    }
}
