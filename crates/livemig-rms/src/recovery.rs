//! After an RMS restart: what became of each unfinished migration, decided from what the
//! agents report they run. Pure; it never guesses: when the reports do not settle where the
//! guest runs, the verdict is `Unknown` and an operator is asked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::migration::{Migration, MigrationId, MigrationState};

/// What an agent's executor says about one migration it took part in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalState {
    /// Its executor still runs the migration (rounds, stop-and-copy, or settling a commit).
    Migrating,
    /// The source saw the hand-over complete.
    HandedOver,
    /// The executor ended without a hand-over.
    Failed,
    /// The executor was cancelled before the commit point.
    Cancelled,
    /// A destination holds a verified copy, paused, until its source settles it.
    Held,
}

/// What one agent reports when the RMS asks after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentReport {
    pub host: String,
    /// The VMs running on the host.
    pub vms: Vec<String>,
    /// The migrations its executors know of, as source or destination.
    #[serde(default)]
    pub migrations: BTreeMap<MigrationId, LocalState>,
}

/// What to do with an unfinished migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// No agent was ever told to migrate (it was queued or placing): place it again.
    Requeue,
    /// The source's agent still migrates and runs the guest: keep waiting for its events.
    Continue,
    /// The destination runs the guest: the hand-over happened.
    Completed,
    /// The source runs the guest and no longer migrates it.
    Failed { reason: String },
    /// The reports do not say where the guest runs: an operator decides.
    Unknown { reason: String },
}

/// Decides one migration from the agents' reports (by host name).
pub fn decide(m: &Migration, reports: &BTreeMap<String, AgentReport>) -> Verdict {
    match m.state {
        MigrationState::Queued | MigrationState::Placing => return Verdict::Requeue,
        MigrationState::Completed | MigrationState::Failed | MigrationState::Cancelled => {
            return Verdict::Continue
        }
        MigrationState::Running | MigrationState::SwitchingOver | MigrationState::Unknown => {}
    }
    let Some(target) = m.target.as_deref() else {
        return Verdict::Unknown {
            reason: format!("migration {} has no recorded destination", m.id),
        };
    };
    let (Some(src), Some(dst)) = (reports.get(&m.source), reports.get(target)) else {
        let missing: Vec<&str> = [m.source.as_str(), target]
            .into_iter()
            .filter(|h| !reports.contains_key(*h))
            .collect();
        return Verdict::Unknown {
            reason: format!("{} has not reported", missing.join(" and ")),
        };
    };
    let on_source = src.vms.contains(&m.vm);
    let on_target = dst.vms.contains(&m.vm);
    let local = src.migrations.get(&m.id).copied();
    match (on_source, on_target) {
        (true, true) => Verdict::Unknown {
            reason: format!("both {} and {target} report running {}", m.source, m.vm),
        },
        (false, true) => Verdict::Completed,
        (true, false) => match local {
            Some(LocalState::Migrating) => Verdict::Continue,
            Some(LocalState::HandedOver) => Verdict::Unknown {
                reason: format!(
                    "{} runs {} yet says it handed it over to {target}",
                    m.source, m.vm
                ),
            },
            // The source keeps its copy paused while the hand-over is in doubt: the
            // destination may have resumed it too; only the two sides' settlement can say.
            Some(LocalState::Held) => Verdict::Unknown {
                reason: format!(
                    "{} holds {} paused: whether {target} committed it is in doubt",
                    m.source, m.vm
                ),
            },
            Some(LocalState::Failed | LocalState::Cancelled) | None => Verdict::Failed {
                reason: format!(
                    "after the restart {} runs {} and no longer migrates it",
                    m.source, m.vm
                ),
            },
        },
        (false, false) => {
            let held = dst.migrations.get(&m.id) == Some(&LocalState::Held);
            Verdict::Unknown {
                reason: format!(
                    "neither {} nor {target} runs {}{}",
                    m.source,
                    m.vm,
                    if held {
                        format!("; {target} holds a paused copy")
                    } else {
                        String::new()
                    }
                ),
            }
        }
    }
}

/// Decides every migration that holds its VM (`queued` to `unknown`).
pub fn reconcile<'a>(
    migrations: impl IntoIterator<Item = &'a Migration>,
    reports: &[AgentReport],
) -> Vec<(MigrationId, Verdict)> {
    let by_host: BTreeMap<String, AgentReport> = reports
        .iter()
        .map(|r| (r.host.clone(), r.clone()))
        .collect();
    migrations
        .into_iter()
        .filter(|m| m.state.holds_vm())
        .map(|m| (m.id, decide(m, &by_host)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy)]
    enum Seen {
        Missing,
        Runs,
        Not,
    }

    fn report(host: &str, seen: Seen, local: Option<LocalState>) -> Option<AgentReport> {
        let vms = match seen {
            Seen::Missing => return None,
            Seen::Runs => vec!["vm1".to_string()],
            Seen::Not => vec!["other".to_string()],
        };
        Some(AgentReport {
            host: host.into(),
            vms,
            migrations: local.map(|l| (MigrationId(7), l)).into_iter().collect(),
        })
    }

    fn migration(state: MigrationState) -> Migration {
        let mut m = Migration::new(MigrationId(7), "vm1", "a", None, "dirty-factor");
        m.state = state;
        m.target = Some("b".into());
        m
    }

    fn verdict(
        src: Seen,
        src_local: Option<LocalState>,
        dst: Seen,
        dst_local: Option<LocalState>,
    ) -> Verdict {
        let reports: Vec<AgentReport> = [report("a", src, src_local), report("b", dst, dst_local)]
            .into_iter()
            .flatten()
            .collect();
        let m = migration(MigrationState::Running);
        let out = reconcile([&m], &reports);
        assert_eq!(out.len(), 1);
        out.into_iter()
            .map(|(_, v)| v)
            .next()
            .unwrap_or(Verdict::Continue)
    }

    fn kind(v: &Verdict) -> &'static str {
        match v {
            Verdict::Requeue => "requeue",
            Verdict::Continue => "continue",
            Verdict::Completed => "completed",
            Verdict::Failed { .. } => "failed",
            Verdict::Unknown { .. } => "unknown",
        }
    }

    /// Every combination of (source sees the VM, its executor's state) × (destination sees
    /// the VM, its executor's state).
    #[test]
    fn every_combination() {
        use LocalState::*;
        use Seen::*;
        let locals = [
            None,
            Some(Migrating),
            Some(HandedOver),
            Some(Failed),
            Some(Cancelled),
            Some(Held),
        ];
        for src in [Missing, Runs, Not] {
            for dst in [Missing, Runs, Not] {
                for sl in locals {
                    for dl in locals {
                        let v = verdict(src, sl, dst, dl);
                        let expected = match (src, dst) {
                            (Missing, _) | (_, Missing) => "unknown",
                            (Runs, Runs) => "unknown",
                            (Not, Runs) => "completed",
                            (Not, Not) => "unknown",
                            (Runs, Not) => match sl {
                                Some(Migrating) => "continue",
                                Some(HandedOver | Held) => "unknown",
                                _ => "failed",
                            },
                        };
                        assert_eq!(kind(&v), expected, "{src:?}/{sl:?} {dst:?}/{dl:?}: {v:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn reasons_say_why() {
        let v = verdict(Seen::Missing, None, Seen::Runs, None);
        assert_eq!(
            v,
            Verdict::Unknown {
                reason: "a has not reported".into()
            }
        );
        let v = verdict(Seen::Not, None, Seen::Not, Some(LocalState::Held));
        assert_eq!(
            v,
            Verdict::Unknown {
                reason: "neither a nor b runs vm1; b holds a paused copy".into()
            }
        );
    }

    #[test]
    fn unstarted_and_finished_migrations() {
        let reports = [];
        for (state, expected) in [
            (MigrationState::Queued, Some(Verdict::Requeue)),
            (MigrationState::Placing, Some(Verdict::Requeue)),
            (MigrationState::Completed, None),
            (MigrationState::Failed, None),
            (MigrationState::Cancelled, None),
        ] {
            let m = migration(state);
            let out = reconcile([&m], &reports);
            assert_eq!(
                out.into_iter().map(|(_, v)| v).next(),
                expected,
                "{state:?}"
            );
        }
        let mut m = migration(MigrationState::Unknown);
        m.target = None;
        assert!(matches!(
            decide(&m, &BTreeMap::new()),
            Verdict::Unknown { .. }
        ));
    }
}
