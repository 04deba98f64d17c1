//! Started migrations: hand-over, failure, unknown outcomes, cancellation, rounds.

use livemig_policy::decision::{Action, Audit, Branch, Decision};
use livemig_policy::report::RoundRecord;

use super::*;

#[test]
fn an_unused_reservation_expiring_stops_the_source_and_fails_the_migration() {
    let mut o = cluster(4);
    let id = running(&mut o);
    assert!(run(&mut o, Input::Tick { now: 7.9 }).is_empty());
    let fx = run(&mut o, Input::Tick { now: 8.0 });
    assert!(matches!(fx.last(), Some(Effect::Cancel { host, .. }) if host == "a"));
    assert_eq!(
        state(&o, id),
        MigrationState::Running,
        "the source has the last word"
    );
    assert!(
        run(&mut o, Input::Tick { now: 9.0 }).is_empty(),
        "asked once"
    );
    run(
        &mut o,
        event(
            id,
            "a",
            Event::Cancelled {
                phase: "connect".into(),
            },
        ),
    );
    let m = o.migration(id).expect("exists");
    assert_eq!(m.state, MigrationState::Failed);
    assert_eq!(
        m.error.as_deref(),
        Some("the reservation on `c` expired before the source connected")
    );
}

#[test]
fn a_used_reservation_does_not_expire() {
    let mut o = cluster(4);
    let id = running(&mut o);
    run(&mut o, event(id, "a", Event::Connected { peer: None }));
    assert!(run(&mut o, Input::Tick { now: 9.0 })
        .iter()
        .all(|e| !matches!(e, Effect::Cancel { .. })));
    let mut o = cluster(4);
    let id = running(&mut o);
    run(&mut o, event(id, "c", Event::Accepted { peer: "a".into() }));
    assert!(run(&mut o, Input::Tick { now: 9.0 })
        .iter()
        .all(|e| !matches!(e, Effect::Cancel { .. })));
}

#[test]
fn the_location_moves_once_on_handed_over() {
    let mut o = cluster(4);
    let id = running(&mut o);
    run(
        &mut o,
        event(
            id,
            "a",
            Event::StopAndCopy {
                reason: livemig_policy::StopReason::RemainingBelowStopLevel,
                bytes: 1.0,
                cap_bytes_per_s: 1.0,
            },
        ),
    );
    assert_eq!(state(&o, id), MigrationState::SwitchingOver);
    run(&mut o, event(id, "a", Event::Committed));
    assert_eq!(location(&o, "vm1"), "a", "a commit is not the hand-over");
    // A hand-over told by the wrong party moves nothing.
    assert!(run(&mut o, event(id, "c", handed_over())).is_empty());
    let fx = run(&mut o, event(id, "a", handed_over()));
    assert_eq!(state(&o, id), MigrationState::Completed);
    assert_eq!(location(&o, "vm1"), "c");
    assert!(
        matches!(fx.last(), Some(Effect::SetLocation { vm, host }) if vm == "vm1" && host == "c")
    );
    // The destination's confirmation afterwards changes nothing.
    assert!(run(
        &mut o,
        event(
            id,
            "c",
            Event::Resumed {
                session: "ab".into()
            }
        )
    )
    .is_empty());
    assert_eq!(
        o.host_views()
            .iter()
            .find(|h| h.name == "c")
            .map(|h| h.vms.clone()),
        Some(vec!["vm1".to_string()])
    );
}

#[test]
fn the_destinations_resumed_completes_too() {
    let mut o = cluster(4);
    let id = running(&mut o);
    run(
        &mut o,
        event(
            id,
            "c",
            Event::Resumed {
                session: "ab".into(),
            },
        ),
    );
    assert_eq!(state(&o, id), MigrationState::Completed);
    assert_eq!(location(&o, "vm1"), "c");
    assert!(run(&mut o, event(id, "a", handed_over())).is_empty());
}

#[test]
fn a_failure_with_the_source_running_keeps_the_location() {
    let mut o = cluster(4);
    let id = running(&mut o);
    run(&mut o, event(id, "a", failed("failed_source_running")));
    let m = o.migration(id).expect("exists");
    assert_eq!(m.state, MigrationState::Failed);
    assert_eq!(
        m.error.as_deref(),
        Some("the destination closed the connection")
    );
    assert_eq!(location(&o, "vm1"), "a");
    // A later hand-over contradicts the record: refused, never applied.
    let err = o
        .handle(event(
            id,
            "c",
            Event::Resumed {
                session: "ab".into(),
            },
        ))
        .err();
    assert!(
        matches!(err, Some(OrchestratorError::Contradicts { .. })),
        "{err:?}"
    );
    assert_eq!(location(&o, "vm1"), "a");
    // The VM is free again.
    submit(&mut o, "vm1", None);
}

#[test]
fn an_unknown_outcome_blocks_the_vm_until_settled() {
    let mut o = cluster(4);
    let id = running(&mut o);
    let fx = run(
        &mut o,
        event(
            id,
            "a",
            failed("unknown: the source is paused after completion"),
        ),
    );
    assert_eq!(state(&o, id), MigrationState::Unknown);
    assert!(matches!(fx.last(), Some(Effect::Flag { .. })));
    assert_eq!(location(&o, "vm1"), "a", "no guess");
    let again = Input::Submit(MigrationRequest {
        vm: "vm1".into(),
        target: None,
        policy: None,
        settings: None,
        priority: None,
    });
    let err = o.handle(again).expect_err("blocked");
    assert_eq!(
        err,
        OrchestratorError::VmBlocked {
            vm: "vm1".into(),
            migration: id
        }
    );
    assert!(err.to_string().contains("an operator must settle it"));
    assert_eq!(
        o.handle(Input::Cancel { migration: id }).err(),
        Some(OrchestratorError::CancelUnknown(id))
    );
    assert_eq!(
        o.handle(Input::Resolve {
            migration: id,
            host: "b".into()
        })
        .err(),
        Some(OrchestratorError::NotAParty {
            migration: id,
            host: "b".into()
        })
    );
    run(
        &mut o,
        Input::Resolve {
            migration: id,
            host: "c".into(),
        },
    );
    assert_eq!(state(&o, id), MigrationState::Completed);
    assert_eq!(location(&o, "vm1"), "c");
    assert_eq!(
        o.handle(Input::Resolve {
            migration: id,
            host: "c".into()
        })
        .err(),
        Some(OrchestratorError::NotUnknown(id))
    );
}

#[test]
fn an_unknown_outcome_is_settled_by_the_agents_later_word() {
    for (ev, host, end, loc) in [
        (handed_over(), "a", MigrationState::Completed, "c"),
        (
            Event::Resumed {
                session: "ab".into(),
            },
            "c",
            MigrationState::Completed,
            "c",
        ),
        (
            failed("failed_source_running"),
            "a",
            MigrationState::Failed,
            "a",
        ),
    ] {
        let mut o = cluster(4);
        let id = running(&mut o);
        run(&mut o, event(id, "a", failed("unknown")));
        run(&mut o, event(id, host, ev));
        assert_eq!(state(&o, id), end);
        assert_eq!(location(&o, "vm1"), loc);
    }
    let mut o = cluster(4);
    let id = running(&mut o);
    run(&mut o, event(id, "a", failed("unknown")));
    run(
        &mut o,
        Input::Resolve {
            migration: id,
            host: "a".into(),
        },
    );
    assert_eq!(state(&o, id), MigrationState::Failed);
    assert_eq!(location(&o, "vm1"), "a");
}

#[test]
fn cancelling_in_every_state() {
    // Queued and placing end at once.
    let mut o = cluster(1);
    let placing = submit(&mut o, "vm1", None);
    let queued = submit(&mut o, "vm2", None);
    run(&mut o, Input::Cancel { migration: queued });
    assert_eq!(state(&o, queued), MigrationState::Cancelled);
    run(&mut o, Input::Cancel { migration: placing });
    assert_eq!(state(&o, placing), MigrationState::Cancelled);
    let fx = run(&mut o, accept(placing, "c", 100.0));
    assert!(
        matches!(fx.last(), Some(Effect::Release { .. })),
        "the late acceptance is released"
    );
    assert_eq!(
        o.handle(Input::Cancel { migration: placing }).err(),
        Some(OrchestratorError::Finished(placing))
    );

    // Running: the source is asked and has the last word.
    let mut o = cluster(4);
    let id = running(&mut o);
    let fx = run(&mut o, Input::Cancel { migration: id });
    assert!(matches!(fx.last(), Some(Effect::Cancel { host, .. }) if host == "a"));
    assert!(
        run(&mut o, Input::Cancel { migration: id }).is_empty(),
        "asked once"
    );
    run(
        &mut o,
        event(
            id,
            "a",
            Event::Cancelled {
                phase: "round 2".into(),
            },
        ),
    );
    assert_eq!(state(&o, id), MigrationState::Cancelled);
    assert_eq!(location(&o, "vm1"), "a");

    // Too late after the commit; the hand-over completes as usual.
    let mut o = cluster(4);
    let id = running(&mut o);
    run(&mut o, Input::Cancel { migration: id });
    run(&mut o, event(id, "a", Event::Committed));
    assert_eq!(
        o.handle(Input::Cancel { migration: id }).err(),
        Some(OrchestratorError::TooLate(id))
    );
    run(&mut o, event(id, "a", handed_over()));
    assert_eq!(state(&o, id), MigrationState::Completed);
    assert_eq!(
        o.handle(Input::Cancel {
            migration: MigrationId(99)
        })
        .err(),
        Some(OrchestratorError::UnknownMigration(MigrationId(99)))
    );
}

#[test]
fn events_from_strangers_or_before_the_start_are_refused() {
    let mut o = cluster(4);
    let id = submit(&mut o, "vm1", None);
    assert!(matches!(
        o.handle(event(id, "a", handed_over())),
        Err(OrchestratorError::NotStarted { .. })
    ));
    run(&mut o, accept(id, "c", 100.0));
    assert!(matches!(
        o.handle(event(id, "b", handed_over())),
        Err(OrchestratorError::NotAParty { .. })
    ));
    assert_eq!(location(&o, "vm1"), "a");
}

#[test]
fn rounds_and_the_report_are_recorded() {
    let mut o = cluster(4);
    let id = running(&mut o);
    let audit = Audit {
        round: 1,
        cap_bytes_per_s: 1e6,
        effective_bytes_per_s: 1e6,
        dirty_rate_bytes_per_s: 1e5,
        factor: 0.1,
        avg_factor: 0.1,
        threshold: Some(0.5),
        mean_dirty_rate_bytes_per_s: 1e5,
        estimate_bytes_per_s: None,
        remaining_bytes: 1e5,
        branch: Branch::KeepOrLower,
        clamped: false,
        infeasible: false,
        throttle: None,
        predicted_remaining_bytes: None,
        note: None,
    };
    let record = RoundRecord {
        round: 1,
        cap_bytes_per_s: 1e6,
        wish_bytes_per_s: 1e6,
        bytes_sent: 1e6,
        duration_s: 1.0,
        effective_bytes_per_s: 1e6,
        dirty_bytes: 1e5,
        dirty_rate_bytes_per_s: 1e5,
        factor: 0.1,
        avg_factor: 0.1,
        decision: Decision {
            action: Action::Continue {
                next_cap_bytes_per_s: 1e6,
            },
            audit,
        },
        raises: Vec::new(),
        probes: Vec::new(),
        throttle_applied: None,
    };
    let fx = run(
        &mut o,
        event(
            id,
            "a",
            Event::RoundEnded {
                record: Box::new(record.clone()),
            },
        ),
    );
    assert_eq!(fx.len(), 1);
    assert!(
        run(
            &mut o,
            event(
                id,
                "a",
                Event::Progress {
                    round: 2,
                    bytes_sent: 1.0,
                    bytes_remaining: 1.0
                }
            )
        )
        .is_empty(),
        "progress is not persisted"
    );
    let view = o.migration(id).expect("exists").view();
    assert_eq!(view.rounds, vec![record.clone()]);
    // The record keeps at most MAX_ROUNDS_KEPT rounds; later ones are not persisted.
    let more = crate::migration::MAX_ROUNDS_KEPT + 5;
    let mut saves = 0;
    for round in 2..=more {
        let mut r = record.clone();
        r.round = round as u32;
        saves += run(
            &mut o,
            event(
                id,
                "a",
                Event::RoundEnded {
                    record: Box::new(r),
                },
            ),
        )
        .len();
    }
    let kept = &o.migration(id).expect("exists").rounds;
    assert_eq!(kept.len(), crate::migration::MAX_ROUNDS_KEPT);
    assert_eq!(saves, crate::migration::MAX_ROUNDS_KEPT - 1);
    let view = o.migration(id).expect("exists").view();
    let view = crate::api::MigrationView {
        rounds: vec![view.rounds[0].clone()],
        ..view
    };
    let json = serde_json::to_value(&view).expect("serialises");
    for key in [
        "id", "vm", "source", "target", "state", "attempts", "rounds",
    ] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
    assert_eq!(json["state"], "running");
    assert_eq!(
        json["attempts"][0],
        serde_json::json!({"host": "c", "answer": "accepted"})
    );
    assert!(json.get("error").is_none() && json.get("report").is_none());
}
