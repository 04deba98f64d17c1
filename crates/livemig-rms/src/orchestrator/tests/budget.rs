//! The shared budget in the orchestrator: the sample before admission, admission by
//! prediction, the queue's place and reason, grants that never add up past the budget and
//! travel with the start, a re-grant when a migration ends, and drains.

use livemig_policy::decision::{Action, Audit, Branch, Decision};
use livemig_policy::report::RoundRecord;
use livemig_policy::stats::DirtySample;

use super::*;
use crate::budget::{Budget, Scheme};
use crate::migration::QueueSpot;

const MIB: f64 = 1024.0 * 1024.0;
const UPLINK: f64 = 100.0 * MIB;

/// [`cluster`] (a, b, c; vm1 and vm2 on a) plus vm3, under a 100 MiB/s budget of `scheme`.
fn shared(scheme: Scheme) -> Orchestrator {
    let mut o = cluster_with(
        Config::default().with_budget(BudgetConfig::new(Budget::uplink(UPLINK), scheme)),
    );
    run(
        &mut o,
        Input::AddVm {
            name: "vm3".into(),
            memory_bytes: GIB,
            workload: "uniform:rate=1000".into(),
            kind: VmKind::Sim,
            host: "a".into(),
        },
    );
    o
}

/// A sample of a guest dirtying `rate` bytes/s, five points over a second.
fn sample(rate: f64) -> DirtySample {
    DirtySample {
        points: (1..=5)
            .map(|i| (0.2 * i as f64, 0.2 * i as f64 * rate))
            .collect(),
        ..DirtySample::default()
    }
}

fn sampled(id: MigrationId, rate: f64) -> Input {
    Input::Sampled {
        migration: id,
        host: "a".into(),
        sample: Some(sample(rate)),
        error: None,
    }
}

fn spot(o: &Orchestrator, id: MigrationId) -> QueueSpot {
    o.migration(id)
        .and_then(|m| m.budget.waiting.clone())
        .unwrap_or_else(|| panic!("migration {id} has no place in the queue"))
}

fn grant_of(o: &Orchestrator, id: MigrationId) -> Option<f64> {
    o.migration(id).and_then(|m| m.budget.grant_bytes_per_s)
}

/// The grants of every placing or running migration never add up past the budget.
fn within_budget(o: &Orchestrator) {
    let sum: f64 = o
        .migrations()
        .filter(|m| m.state.is_active())
        .filter_map(|m| m.budget.grant_bytes_per_s)
        .sum();
    assert!(sum <= UPLINK * (1.0 + 1e-9), "grants {sum} > {UPLINK}");
}

/// Submits `vm`, answers its sample with `rate`, and returns its id.
fn queue(o: &mut Orchestrator, vm: &str, rate: f64) -> (MigrationId, Vec<Effect>) {
    let id = submit(o, vm, None);
    let effects = run(o, sampled(id, rate));
    within_budget(o);
    (id, effects)
}

/// Starts a placing migration on its pending host; returns the start's grant.
fn start(o: &mut Orchestrator, id: MigrationId) -> Option<f64> {
    let host = o
        .migration(id)
        .and_then(|m| m.pending.clone())
        .map(|p| p.host)
        .unwrap_or_else(|| panic!("migration {id} asks no host"));
    let effects = run(o, accept(id, &host, 1e9));
    within_budget(o);
    let grants: Vec<Option<f64>> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::StartMigration {
                migration,
                grant_bytes_per_s,
                ..
            } if *migration == id => Some(*grant_bytes_per_s),
            _ => None,
        })
        .collect();
    assert_eq!(grants.len(), 1, "{effects:#?}");
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::Grant { migration, .. } if *migration == id)),
        "a grant of a migration started in the same step travels with its start"
    );
    assert_eq!(grants[0], grant_of(o, id));
    grants[0]
}

#[test]
fn a_queued_migration_is_sampled_on_its_source_before_it_is_admitted() {
    let mut o = shared(Scheme::BUDGET);
    let step = o
        .handle(Input::Submit(MigrationRequest {
            vm: "vm1".into(),
            target: None,
            policy: None,
            settings: None,
            priority: Some(7),
        }))
        .expect("submitted");
    check_persist_before_act(&step.effects).expect("persisted first");
    let id = step.created.expect("an id");
    let asked: Vec<_> = step
        .effects
        .iter()
        .filter(|e| matches!(e, Effect::Sample { host, vm, .. } if host == "a" && vm == "vm1"))
        .collect();
    assert_eq!(asked.len(), 1, "{:#?}", step.effects);
    assert_eq!(state(&o, id), MigrationState::Queued);
    assert_eq!(spot(&o, id).code, "sampling");
    assert_eq!(o.migration(id).map(|m| m.budget.priority), Some(7));
    // Only its source may answer.
    let wrong = Input::Sampled {
        migration: id,
        host: "b".into(),
        sample: Some(sample(MIB)),
        error: None,
    };
    assert!(matches!(
        o.handle(wrong),
        Err(OrchestratorError::NotAParty { .. })
    ));
    let effects = run(&mut o, sampled(id, 10.0 * MIB));
    assert_eq!(state(&o, id), MigrationState::Placing);
    assert_eq!(asks(&effects), ["c"], "the most free memory first");
}

#[test]
fn a_migration_that_does_not_fit_waits_with_its_reason_and_starts_when_room_is_made() {
    let mut o = shared(Scheme::BUDGET);
    let (m1, _) = queue(&mut o, "vm1", 40.0 * MIB);
    let g1 = start(&mut o, m1).expect("a grant under a budget");
    assert!(g1 <= UPLINK && g1 > 40.0 * MIB, "{g1}");
    let (m2, _) = queue(&mut o, "vm2", 40.0 * MIB);
    let (m3, _) = queue(&mut o, "vm3", 5.0 * MIB);
    assert_eq!(state(&o, m2), MigrationState::Queued);
    assert_eq!(state(&o, m3), MigrationState::Queued);
    let (s2, s3) = (spot(&o, m2), spot(&o, m3));
    assert_eq!((s2.position, s2.code.as_str()), (1, "no_room"), "{s2:?}");
    assert!(s2.reason.contains("the uplink"), "{}", s2.reason);
    // vm3 would fit beside vm1, but only in what vm2, the head, is promised.
    assert_eq!((s3.position, s3.code.as_str()), (2, "reserved"), "{s3:?}");
    // The view shows them.
    let v = o.migration(m2).map(|m| m.view()).expect("a view");
    assert_eq!(v.queue.as_ref().map(|q| q.position), Some(1));
    assert!(v.dirty_estimate_bytes_per_s.is_some());
    // vm1 ends: both start, and the grants still fit.
    run(&mut o, event(m1, "a", handed_over()));
    assert_eq!(state(&o, m2), MigrationState::Placing);
    assert_eq!(state(&o, m3), MigrationState::Placing);
    within_budget(&o);
    assert!(o.migration(m2).is_some_and(|m| m.budget.waiting.is_none()));
}

#[test]
fn an_ended_migration_s_share_is_granted_to_the_others_in_the_same_step() {
    let mut o = shared(Scheme::BUDGET);
    let (m1, _) = queue(&mut o, "vm1", 10.0 * MIB);
    let (m2, _) = queue(&mut o, "vm2", 10.0 * MIB);
    start(&mut o, m1);
    start(&mut o, m2);
    let before = grant_of(&o, m2).expect("granted");
    assert!(before < UPLINK, "two share the uplink: {before}");
    run(&mut o, Input::Cancel { migration: m1 });
    let effects = run(
        &mut o,
        event(
            m1,
            "a",
            Event::Cancelled {
                phase: "round 1".into(),
            },
        ),
    );
    let regrant: Vec<f64> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Grant {
                migration,
                host,
                bytes_per_s,
            } if *migration == m2 && host == "a" => *bytes_per_s,
            _ => None,
        })
        .collect();
    assert_eq!(regrant.len(), 1, "{effects:#?}");
    assert!(regrant[0] > before, "{} <= {before}", regrant[0]);
    assert!(regrant[0] <= UPLINK * (1.0 + 1e-9));
    within_budget(&o);
}

#[test]
fn rounds_refine_the_estimate_and_update_what_is_left() {
    let mut o = shared(Scheme::BUDGET);
    let (m1, _) = queue(&mut o, "vm1", 5.0 * MIB);
    start(&mut o, m1);
    run(
        &mut o,
        event(
            m1,
            "a",
            Event::RoundStarted {
                round: 1,
                wish_bytes_per_s: 50.0 * MIB,
                cap_bytes_per_s: 50.0 * MIB,
                bytes: GIB as f64,
            },
        ),
    );
    let record = RoundRecord {
        round: 1,
        cap_bytes_per_s: 50.0 * MIB,
        wish_bytes_per_s: 50.0 * MIB,
        bytes_sent: GIB as f64,
        duration_s: 20.0,
        effective_bytes_per_s: 50.0 * MIB,
        dirty_bytes: 400.0 * MIB,
        dirty_rate_bytes_per_s: 20.0 * MIB,
        factor: 0.4,
        avg_factor: 0.4,
        decision: Decision {
            action: Action::Continue {
                next_cap_bytes_per_s: 50.0 * MIB,
            },
            audit: Audit {
                round: 1,
                cap_bytes_per_s: 50.0 * MIB,
                effective_bytes_per_s: 50.0 * MIB,
                dirty_rate_bytes_per_s: 20.0 * MIB,
                factor: 0.4,
                avg_factor: 0.4,
                threshold: None,
                mean_dirty_rate_bytes_per_s: 20.0 * MIB,
                estimate_bytes_per_s: None,
                remaining_bytes: 400.0 * MIB,
                branch: Branch::KeepOrLower,
                clamped: false,
                infeasible: false,
                throttle: None,
                predicted_remaining_bytes: None,
                note: None,
            },
        },
        raises: Vec::new(),
        probes: Vec::new(),
        throttle_applied: None,
    };
    run(
        &mut o,
        event(
            m1,
            "a",
            Event::RoundEnded {
                record: Box::new(record),
            },
        ),
    );
    let m = o.migration(m1).expect("there");
    let e = m.budget.estimate.as_ref().expect("an estimate");
    assert!((e.dirty_rate_bytes_per_s - 20.0 * MIB).abs() < 1.0, "{e:?}");
    assert_eq!(e.source, "rounds");
    assert_eq!(m.budget.remaining_bytes, Some(GIB as f64));
    // The minimum follows the faster estimate.
    assert!(m.budget.minimum_bytes_per_s.is_some_and(|b| b > 20.0 * MIB));
}

#[test]
fn a_sample_that_does_not_come_leaves_the_migration_planned_at_its_floor() {
    let mut o = shared(Scheme::BUDGET);
    let id = submit(&mut o, "vm1", None);
    run(&mut o, Input::Tick { now: 3.0 });
    assert_eq!(state(&o, id), MigrationState::Queued, "still in time");
    run(&mut o, Input::Tick { now: 10.0 });
    let m = o.migration(id).expect("there");
    let e = m.budget.estimate.as_ref().expect("given up waiting");
    assert!(e.source.starts_with("no_sample"), "{e:?}");
    assert_eq!(m.state, MigrationState::Placing);
    // A late answer changes nothing.
    run(&mut o, sampled(id, 500.0 * MIB));
    assert_eq!(
        o.migration(id)
            .and_then(|m| m.budget.estimate.as_ref())
            .map(|e| e.dirty_rate_bytes_per_s),
        Some(0.0)
    );
}

#[test]
fn the_baselines_do_not_sample_and_keep_their_counts() {
    let mut o = shared(Scheme::Sequential);
    let m1 = submit(&mut o, "vm1", None);
    let m2 = submit(&mut o, "vm2", None);
    assert_eq!(state(&o, m1), MigrationState::Placing, "no sample first");
    assert_eq!(state(&o, m2), MigrationState::Queued, "one per source");
    assert_eq!(spot(&o, m2).code, "source_busy");
    assert_eq!(start(&mut o, m1), None, "sequential does not cap");

    let mut o = shared(Scheme::FIXED_SLOTS);
    let m1 = submit(&mut o, "vm1", None);
    let m2 = submit(&mut o, "vm2", None);
    let m3 = submit(&mut o, "vm3", None);
    assert_eq!(state(&o, m1), MigrationState::Placing);
    assert_eq!(state(&o, m2), MigrationState::Placing);
    assert_eq!(spot(&o, m3).code, "host_slots", "2 outbound per host");
    assert_eq!(start(&mut o, m1), Some(UPLINK / 5.0), "budget / slots");
}

#[test]
fn a_drain_submits_every_vm_and_sends_none_to_the_drained_host() {
    let mut o = shared(Scheme::Unlimited);
    // vm4 runs on b; c is drained first, so everything of a must go to b.
    run(
        &mut o,
        Input::AddVm {
            name: "vm4".into(),
            memory_bytes: GIB,
            workload: "idle".into(),
            kind: VmKind::Sim,
            host: "b".into(),
        },
    );
    let busy = submit(&mut o, "vm4", Some("a"));
    run(&mut o, Input::Cancel { migration: busy });
    let step = o
        .handle(Input::Drain { host: "c".into() })
        .expect("c drains");
    assert!(step.drained.is_empty(), "c runs nothing");
    let step = o
        .handle(Input::Drain { host: "a".into() })
        .expect("a drains");
    check_persist_before_act(&step.effects).expect("persisted first");
    assert_eq!(step.drained.len(), 3);
    for e in &step.effects {
        if let Effect::AskCapacity { host, .. } = e {
            assert_eq!(host, "b", "a drained host is not asked");
        }
    }
    assert!(o.host("a").is_some_and(|h| h.draining));
    let p = o.drain_progress("a").expect("a is known");
    assert_eq!((p.vms_left, p.migrating, p.done), (3, 3, false));
    assert!(p.bytes_left >= 3.0 * GIB as f64);
    // A drained host gets no VM of a new request either, and draining again adds nothing.
    let again = o.handle(Input::Drain { host: "a".into() }).expect("again");
    assert!(again.drained.is_empty());
    for id in step.drained {
        let host = o
            .migration(id)
            .and_then(|m| m.pending.clone())
            .map(|p| p.host)
            .expect("asking");
        run(&mut o, accept(id, &host, 1e9));
        run(&mut o, event(id, "a", handed_over()));
    }
    let p = o.drain_progress("a").expect("a is known");
    assert!(p.done && p.vms_left == 0, "{p:?}");
    // Undrained, it is a candidate again.
    run(&mut o, Input::Undrain { host: "a".into() });
    assert!(o.host("a").is_some_and(|h| !h.draining));
    // Refusals change nothing.
    assert!(matches!(
        o.handle(Input::Drain { host: "zz".into() }),
        Err(OrchestratorError::UnknownHost(_))
    ));
}

#[test]
fn a_hostile_number_from_an_agent_does_not_stop_the_others_plan() {
    let mut o = shared(Scheme::BUDGET);
    let (m1, _) = queue(&mut o, "vm1", 5.0 * MIB);
    start(&mut o, m1);
    // More left than the guest's memory: clamped, the plan goes on.
    run(
        &mut o,
        event(
            m1,
            "a",
            Event::RoundStarted {
                round: 1,
                wish_bytes_per_s: 1e300,
                cap_bytes_per_s: 1e300,
                bytes: 1e300,
            },
        ),
    );
    assert_eq!(
        o.migration(m1).and_then(|m| m.budget.remaining_bytes),
        Some(GIB as f64)
    );
    let (m2, _) = queue(&mut o, "vm2", 5.0 * MIB);
    assert_eq!(state(&o, m2), MigrationState::Placing, "admitted");
    assert_eq!(o.budget_view().error, None);
    within_budget(&o);
}

#[test]
fn a_migration_queued_without_an_ask_is_sampled_and_a_restart_asks_again() {
    // Queued under slots (no budget, no room), then the RMS restarts with a budget.
    let mut o = cluster(1);
    let m1 = submit(&mut o, "vm1", None);
    let m2 = submit(&mut o, "vm2", None);
    assert_eq!(state(&o, m2), MigrationState::Queued);
    let mut restored = Orchestrator::restore(
        Config::default().with_budget(BudgetConfig::new(Budget::uplink(UPLINK), Scheme::BUDGET)),
        0.0,
        o.hosts().cloned(),
        o.vms().cloned(),
        o.migrations().cloned(),
    );
    let effects = run(&mut restored, Input::Restarted { reports: vec![] });
    let asked: Vec<MigrationId> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Sample { migration, .. } => Some(*migration),
            _ => None,
        })
        .collect();
    assert!(asked.contains(&m2), "{effects:#?}");
    // m1 was placing: a restart puts it back in the queue, where it is sampled too.
    assert_eq!(state(&restored, m1), MigrationState::Queued);
    assert!(asked.contains(&m1), "{effects:#?}");
}

#[test]
fn a_grant_the_source_did_not_take_is_sent_again() {
    let mut o = shared(Scheme::BUDGET);
    let (m1, _) = queue(&mut o, "vm1", 10.0 * MIB);
    let g = start(&mut o, m1);
    // Nothing changed: the next plan sends nothing.
    let quiet = run(&mut o, Input::Tick { now: 1.0 });
    assert!(!quiet.iter().any(|e| matches!(e, Effect::Grant { .. })));
    // The plan that follows (this very input's) sends it again.
    let again = run(
        &mut o,
        Input::GrantUnapplied {
            migration: m1,
            bytes_per_s: g,
        },
    );
    let sent: Vec<Option<f64>> = again
        .iter()
        .filter_map(|e| match e {
            Effect::Grant {
                migration,
                bytes_per_s,
                ..
            } if *migration == m1 => Some(*bytes_per_s),
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![g], "{again:#?}");
    // An old grant's failure after a newer one changes nothing.
    run(
        &mut o,
        Input::GrantUnapplied {
            migration: m1,
            bytes_per_s: Some(1.0),
        },
    );
    let quiet = run(&mut o, Input::Tick { now: 3.0 });
    assert!(!quiet.iter().any(|e| matches!(e, Effect::Grant { .. })));
}

#[test]
fn a_hostile_sample_gives_a_finite_estimate_the_store_can_keep() {
    let mut o = shared(Scheme::BUDGET);
    let id = submit(&mut o, "vm1", None);
    let hostile = DirtySample {
        points: vec![(1e-300, 1e300), (f64::NAN, 1.0), (0.5, 1e30), (1e9, 1.0)],
        ..DirtySample::default()
    };
    run(
        &mut o,
        Input::Sampled {
            migration: id,
            host: "a".into(),
            sample: Some(hostile),
            error: None,
        },
    );
    let m = o.migration(id).expect("there");
    let e = m.budget.estimate.as_ref().expect("an estimate");
    assert!(e.dirty_rate_bytes_per_s.is_finite());
    // It round-trips through JSON (the store's form) unchanged.
    let json = serde_json::to_string(&m.budget).expect("serialises");
    let back: crate::migration::Share = serde_json::from_str(&json).expect("reads back");
    assert_eq!(back.estimate, m.budget.estimate);
    assert_eq!(o.budget_view().error, None);
}

#[test]
fn a_stop_level_of_zero_does_not_stop_the_plan() {
    let mut o = shared(Scheme::BUDGET);
    let step = o
        .handle(Input::Submit(MigrationRequest {
            vm: "vm1".into(),
            target: None,
            policy: Some("dirty-factor".into()),
            settings: Some(livemig_policy::PolicySpec {
                stop_remaining: Some("0".into()),
                ..Default::default()
            }),
            priority: None,
        }))
        .expect("submitted");
    let bad = step.created.expect("an id");
    run(&mut o, sampled(bad, 10.0 * MIB));
    let (m2, _) = queue(&mut o, "vm2", 5.0 * MIB);
    assert_eq!(state(&o, m2), MigrationState::Placing, "the others go on");
    assert_eq!(o.budget_view().error, None);
}

#[test]
fn a_vm_that_lands_on_a_drained_host_leaves_it_again() {
    let mut o = shared(Scheme::Unlimited);
    let m1 = submit(&mut o, "vm1", Some("b"));
    run(&mut o, accept(m1, "b", 1e9));
    run(&mut o, Input::Drain { host: "b".into() });
    // Asking for a drained host by name is refused.
    assert!(matches!(
        o.handle(Input::Submit(MigrationRequest {
            vm: "vm2".into(),
            target: Some("b".into()),
            policy: None,
            settings: None,
            priority: None,
        })),
        Err(OrchestratorError::Draining(_))
    ));
    // vm1 arrives on b after the drain: it is submitted again.
    let effects = run(&mut o, event(m1, "a", handed_over()));
    assert_eq!(location(&o, "vm1"), "b");
    let again = o.holding("vm1").map(|m| m.id).expect("a new migration");
    assert_ne!(again, m1);
    assert!(asks(&effects).iter().all(|h| h != "b"), "{effects:#?}");
    // A VM an agent of the drained host reports is submitted too.
    run(
        &mut o,
        Input::AddVm {
            name: "late".into(),
            memory_bytes: GIB,
            workload: "idle".into(),
            kind: VmKind::Sim,
            host: "b".into(),
        },
    );
    assert!(o.holding("late").is_some());
    let p = o.drain_progress("b").expect("known");
    assert_eq!((p.vms_left, p.migrating, p.stuck.len()), (2, 2, 0), "{p:?}");
}
