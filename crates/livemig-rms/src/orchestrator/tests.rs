//! Unit tests of the orchestrator: every transition and every refusal.

use livemig_policy::decision::{Action, Audit, Branch, Decision};
use livemig_policy::event::Event;
use livemig_policy::report::RoundRecord;

use super::*;
use crate::api::HostState;
use crate::migration::AnswerKind;

const GIB: u64 = 1 << 30;

/// Hosts a (the source, 8 GiB free), b (4 GiB free) and c (6 GiB free); vm1 (1 GiB) on a.
fn cluster(max_active: usize) -> Orchestrator {
    let mut o = Orchestrator::new(
        Config {
            max_active,
            ..Config::default()
        },
        0.0,
    );
    for (name, free) in [("a", 8), ("b", 4), ("c", 6)] {
        run(
            &mut o,
            Input::AddHost {
                name: name.into(),
                address: format!("198.18.0.{}:7000", name.len()),
                memory_total_bytes: 16 * GIB,
                timeout_s: None,
            },
        );
        run(
            &mut o,
            Input::Heartbeat {
                host: name.into(),
                memory_free_bytes: free * GIB,
            },
        );
    }
    for vm in ["vm1", "vm2"] {
        run(
            &mut o,
            Input::AddVm {
                name: vm.into(),
                memory_bytes: GIB,
                workload: "uniform:rate=1000".into(),
                kind: VmKind::Sim,
                host: "a".into(),
            },
        );
    }
    o
}

/// Handles an input that must be accepted; checks persist-before-act on its effects.
fn run(o: &mut Orchestrator, input: Input) -> Vec<Effect> {
    let step = o
        .handle(input.clone())
        .unwrap_or_else(|e| panic!("{input:?}: {e}"));
    if let Err(e) = check_persist_before_act(&step.effects) {
        panic!("{input:?}: {e}\n{:#?}", step.effects);
    }
    step.effects
}

fn submit(o: &mut Orchestrator, vm: &str, target: Option<&str>) -> MigrationId {
    let step = o
        .handle(Input::Submit(MigrationRequest {
            vm: vm.into(),
            target: target.map(String::from),
            policy: None,
            settings: None,
        }))
        .unwrap_or_else(|e| panic!("submit: {e}"));
    check_persist_before_act(&step.effects).unwrap_or_else(|e| panic!("{e}"));
    step.created.unwrap_or_else(|| panic!("no id"))
}

fn accept(id: MigrationId, host: &str, expires_at: f64) -> Input {
    Input::Answer {
        migration: id,
        host: host.into(),
        answer: Answer::Accepted {
            reservation: Reservation {
                id: format!("r-{host}"),
                expires_at,
            },
        },
    }
}

fn refuse(id: MigrationId, host: &str, reason: &str) -> Input {
    Input::Answer {
        migration: id,
        host: host.into(),
        answer: Answer::Refused {
            reason: reason.into(),
        },
    }
}

fn event(id: MigrationId, host: &str, event: Event) -> Input {
    Input::AgentEvent {
        migration: id,
        host: host.into(),
        event,
    }
}

fn handed_over() -> Event {
    Event::HandedOver { downtime_s: 0.05 }
}

fn failed(outcome: &str) -> Event {
    Event::Failed {
        error: "the destination closed the connection".into(),
        outcome: outcome.into(),
    }
}

fn state(o: &Orchestrator, id: MigrationId) -> MigrationState {
    o.migration(id)
        .map_or_else(|| panic!("no migration {id}"), |m| m.state)
}

fn location(o: &Orchestrator, vm: &str) -> String {
    o.vm(vm)
        .map_or_else(|| panic!("no vm {vm}"), |v| v.host.clone())
}

fn asks(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::AskCapacity { host, .. } => Some(host.clone()),
            _ => None,
        })
        .collect()
}

/// vm1 running from a to c; c's reservation expires at 8 s (hosts lapse after 10 s).
fn running(o: &mut Orchestrator) -> MigrationId {
    let id = submit(o, "vm1", None);
    run(o, accept(id, "c", 8.0));
    assert_eq!(state(o, id), MigrationState::Running);
    id
}

#[test]
fn placement_asks_the_most_free_memory_first_and_starts_on_acceptance() {
    let mut o = cluster(4);
    let step = o
        .handle(Input::Submit(MigrationRequest {
            vm: "vm1".into(),
            target: None,
            policy: Some("xen".into()),
            settings: None,
        }))
        .expect("admitted");
    let id = step.created.expect("an id");
    // Persist(queued), Persist(placing, asking c), AskCapacity(c).
    assert_eq!(step.effects.len(), 3, "{:#?}", step.effects);
    assert!(
        matches!(&step.effects[0], Effect::Persist(Change::Migration(m)) if m.state == MigrationState::Queued)
    );
    assert_eq!(asks(&step.effects), ["c"]);
    assert_eq!(state(&o, id), MigrationState::Placing);

    let fx = run(&mut o, accept(id, "c", 100.0));
    assert_eq!(fx.len(), 2);
    match &fx[1] {
        Effect::StartMigration {
            source,
            target,
            key_id,
            reservation,
            policy,
            ..
        } => {
            assert_eq!((source.as_str(), target.as_str()), ("a", "c"));
            assert_eq!(key_id, "migration-1");
            assert_eq!(reservation, "r-c");
            assert_eq!(policy, "xen");
        }
        other => panic!("{other:?}"),
    }
    let m = o.migration(id).expect("exists");
    assert_eq!(m.target.as_deref(), Some("c"));
    assert_eq!(m.attempts.len(), 1);
    assert_eq!(m.attempts[0].answer, AnswerKind::Accepted);
    assert_eq!(location(&o, "vm1"), "a", "accepting moves nothing");
}

#[test]
fn refusals_ask_the_next_host_and_all_refusals_fail_with_every_reason() {
    let mut o = cluster(4);
    let id = submit(&mut o, "vm1", None);
    let fx = run(&mut o, refuse(id, "c", "not enough memory"));
    assert_eq!(asks(&fx), ["b"]);
    let fx = run(&mut o, refuse(id, "b", "too many migrations"));
    assert!(asks(&fx).is_empty());
    let m = o.migration(id).expect("exists");
    assert_eq!(m.state, MigrationState::Failed);
    assert_eq!(m.attempts.len(), 2);
    assert!(m.attempts.iter().all(|a| a.answer == AnswerKind::Refused));
    assert_eq!(
        m.error.as_deref(),
        Some("no host took `vm1` (c: not enough memory; b: too many migrations)")
    );
    assert_eq!(location(&o, "vm1"), "a");
}

#[test]
fn a_requested_target_is_asked_alone() {
    let mut o = cluster(4);
    let id = submit(&mut o, "vm1", Some("b"));
    let m = o.migration(id).expect("exists");
    assert_eq!(m.pending.as_ref().map(|p| p.host.as_str()), Some("b"));
    run(&mut o, refuse(id, "b", "full"));
    assert_eq!(state(&o, id), MigrationState::Failed);
    assert_eq!(
        o.migration(id).expect("exists").view().target.as_deref(),
        Some("b")
    );
}

#[test]
fn no_alive_host_fails_at_once() {
    let mut o = cluster(4);
    run(&mut o, Input::HostLost { host: "b".into() });
    run(&mut o, Input::HostLost { host: "c".into() });
    let id = submit(&mut o, "vm1", None);
    assert_eq!(state(&o, id), MigrationState::Failed);
    assert_eq!(
        o.migration(id).and_then(|m| m.error.clone()).as_deref(),
        Some("no alive host to ask")
    );
    let id = submit(&mut o, "vm1", Some("b"));
    assert_eq!(state(&o, id), MigrationState::Failed);
}

#[test]
fn submissions_that_are_refused() {
    let mut o = cluster(4);
    let req = |vm: &str, target: Option<&str>, policy: Option<&str>| {
        Input::Submit(MigrationRequest {
            vm: vm.into(),
            target: target.map(String::from),
            policy: policy.map(String::from),
            settings: None,
        })
    };
    let err = |o: &mut Orchestrator, i| o.handle(i).err().expect("refused");
    assert_eq!(
        err(&mut o, req("nope", None, None)),
        OrchestratorError::UnknownVm("nope".into())
    );
    assert_eq!(
        err(&mut o, req("vm1", Some("zz"), None)),
        OrchestratorError::UnknownHost("zz".into())
    );
    assert!(matches!(
        err(&mut o, req("vm1", Some("a"), None)),
        OrchestratorError::TargetIsSource { .. }
    ));
    assert_eq!(
        err(&mut o, req("vm1", None, Some("warp"))),
        OrchestratorError::UnknownPolicy("warp".into())
    );
    let id = submit(&mut o, "vm1", None);
    assert_eq!(
        err(&mut o, req("vm1", None, None)),
        OrchestratorError::VmBusy {
            vm: "vm1".into(),
            migration: id
        }
    );
    run(&mut o, Input::HostLost { host: "a".into() });
    assert!(matches!(
        err(&mut o, req("vm2", None, None)),
        OrchestratorError::SourceLost { .. }
    ));
    assert_eq!(o.migrations().count(), 1, "refusals leave no record");
}

#[test]
fn the_queue_waits_for_a_free_slot() {
    let mut o = cluster(1);
    let first = submit(&mut o, "vm1", None);
    let second = submit(&mut o, "vm2", None);
    assert_eq!(state(&o, second), MigrationState::Queued);
    let fx = run(&mut o, refuse(first, "c", "full"));
    assert_eq!(asks(&fx), ["b"], "the first still places");
    let fx = run(&mut o, refuse(first, "b", "full"));
    assert_eq!(state(&o, first), MigrationState::Failed);
    assert_eq!(asks(&fx), ["c"], "the slot went to the queued one");
    assert_eq!(state(&o, second), MigrationState::Placing);
}

#[test]
fn an_unanswered_ask_times_out_and_a_late_acceptance_is_released() {
    let mut o = cluster(4);
    let id = submit(&mut o, "vm1", None);
    let fx = run(&mut o, Input::Tick { now: 5.0 });
    assert!(asks(&fx).is_empty(), "exactly at the limit is in time");
    let fx = run(&mut o, Input::Tick { now: 5.5 });
    assert_eq!(asks(&fx), ["b"]);
    let m = o.migration(id).expect("exists");
    assert_eq!(m.attempts[0].reason, "no answer within 5 s");
    // c answers after all: recorded, released, and b is still the one asked.
    let fx = run(&mut o, accept(id, "c", 100.0));
    assert!(
        matches!(fx.last(), Some(Effect::Release { host, reservation }) if host == "c" && reservation == "r-c")
    );
    let m = o.migration(id).expect("exists");
    assert_eq!(m.attempts.len(), 2);
    assert!(m.attempts[1].reason.starts_with("late"));
    assert_eq!(m.pending.as_ref().map(|p| p.host.as_str()), Some("b"));
    // A late refusal is recorded too.
    run(&mut o, accept(id, "b", 100.0));
    run(&mut o, refuse(id, "c", "changed its mind"));
    let m = o.migration(id).expect("exists");
    assert_eq!(m.attempts.len(), 4);
    assert_eq!(m.attempts[3].reason, "late: changed its mind");
    assert_eq!(m.state, MigrationState::Running);
}

#[test]
fn a_reservation_expired_on_arrival_is_released_and_the_next_host_asked() {
    let mut o = cluster(4);
    run(&mut o, Input::Tick { now: 3.0 });
    let id = submit(&mut o, "vm1", None);
    let fx = run(&mut o, accept(id, "c", 2.0));
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Release { host, .. } if host == "c")));
    assert_eq!(asks(&fx), ["b"]);
    assert_eq!(state(&o, id), MigrationState::Placing);
}

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
    });
    let err = o.handle(again).err().expect("blocked");
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
    assert_eq!(view.rounds, vec![record]);
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

#[test]
fn a_silent_host_is_lost_and_gets_nothing_until_it_is_heard_again() {
    let mut o = cluster(4);
    run(&mut o, Input::Tick { now: 9.0 });
    for h in ["a", "b"] {
        run(
            &mut o,
            Input::Heartbeat {
                host: h.into(),
                memory_free_bytes: 4 * GIB,
            },
        );
    }
    let fx = run(&mut o, Input::Tick { now: 10.5 });
    assert!(fx.iter().any(|e| matches!(e, Effect::Persist(Change::Host(h)) if h.name == "c" && h.state == HostState::Lost)));
    assert_eq!(o.host("c").map(|h| h.state), Some(HostState::Lost));
    assert_eq!(o.host("b").map(|h| h.state), Some(HostState::Alive));
    let id = submit(&mut o, "vm1", None);
    assert_eq!(
        o.migration(id)
            .and_then(|m| m.pending.clone())
            .map(|p| p.host)
            .as_deref(),
        Some("b")
    );
    assert!(o.migration(id).is_some_and(|m| m.candidates.is_empty()));
    // c comes back: alive again (persisted), and placeable.
    let fx = run(
        &mut o,
        Input::Heartbeat {
            host: "c".into(),
            memory_free_bytes: 6 * GIB,
        },
    );
    assert_eq!(fx.len(), 1);
    assert_eq!(o.host("c").map(|h| h.state), Some(HostState::Alive));
    assert_eq!(
        o.handle(Input::Heartbeat {
            host: "zz".into(),
            memory_free_bytes: 0
        })
        .err(),
        Some(OrchestratorError::UnknownHost("zz".into()))
    );
}

#[test]
fn losing_the_asked_host_counts_as_a_refusal() {
    let mut o = cluster(4);
    let id = submit(&mut o, "vm1", None);
    let fx = run(&mut o, Input::HostLost { host: "c".into() });
    assert_eq!(asks(&fx), ["b"]);
    let m = o.migration(id).expect("exists");
    assert_eq!(m.attempts[0].reason, "host lost before it answered");
    // Its acceptance, if it still comes, is not used.
    let fx = run(&mut o, accept(id, "c", 100.0));
    assert!(matches!(fx.last(), Some(Effect::Release { .. })));
    assert_eq!(state(&o, id), MigrationState::Placing);
}

#[test]
fn losing_a_party_of_a_running_migration_makes_it_unknown() {
    let mut o = cluster(4);
    let id = running(&mut o);
    let fx = run(&mut o, Input::HostLost { host: "c".into() });
    assert_eq!(state(&o, id), MigrationState::Unknown);
    assert!(fx.iter().any(|e| matches!(e, Effect::Flag { .. })));
    assert!(matches!(fx.last(), Some(Effect::Cancel { host, .. }) if host == "a"));
    // The source stops: failed, the guest stays.
    run(
        &mut o,
        event(
            id,
            "a",
            Event::Cancelled {
                phase: "round 1".into(),
            },
        ),
    );
    assert_eq!(state(&o, id), MigrationState::Failed);
    assert_eq!(location(&o, "vm1"), "a");

    let mut o = cluster(4);
    let id = running(&mut o);
    let fx = run(&mut o, Input::HostLost { host: "a".into() });
    assert_eq!(state(&o, id), MigrationState::Unknown);
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Cancel { .. })),
        "nobody to tell"
    );
    assert!(
        run(&mut o, Input::HostLost { host: "a".into() }).is_empty(),
        "lost once"
    );
}

#[test]
fn recovery_after_a_restart() {
    use crate::recovery::{AgentReport, LocalState};
    let mut o = cluster(4);
    let done = running(&mut o);
    let source_runs = submit(&mut o, "vm2", None);
    run(&mut o, accept(source_runs, "c", 100.0));
    // A third VM placing when the RMS stops.
    run(
        &mut o,
        Input::AddVm {
            name: "vm3".into(),
            memory_bytes: GIB,
            workload: "idle".into(),
            kind: VmKind::Qemu,
            host: "b".into(),
        },
    );
    let placing = submit(&mut o, "vm3", None);
    assert_eq!(state(&o, placing), MigrationState::Placing);

    // The restart: the store's records, then the agents' reports.
    let mut r = Orchestrator::restore(
        o.config().clone(),
        50.0,
        o.hosts().cloned(),
        o.vms().cloned(),
        o.migrations().cloned(),
    );
    let reports = vec![
        AgentReport {
            host: "a".into(),
            vms: vec!["vm2".into()],
            migrations: [(source_runs, LocalState::Failed)].into(),
        },
        AgentReport {
            host: "b".into(),
            vms: vec!["vm3".into()],
            migrations: Default::default(),
        },
        AgentReport {
            host: "c".into(),
            vms: vec!["vm1".into()],
            migrations: Default::default(),
        },
    ];
    let fx = run(&mut r, Input::Restarted { reports });
    assert_eq!(state(&r, done), MigrationState::Completed);
    assert_eq!(location(&r, "vm1"), "c");
    assert_eq!(state(&r, source_runs), MigrationState::Failed);
    assert_eq!(location(&r, "vm2"), "a");
    assert_eq!(
        state(&r, placing),
        MigrationState::Placing,
        "requeued and placed again"
    );
    assert_eq!(asks(&fx), ["a"], "vm3 is on b; a has the most free memory");
    let next = submit(&mut r, "vm1", None);
    assert!(next > placing, "ids continue after the restored ones");
}

/// Regression: when several hosts lapsed on one tick, the ask that replaced a pending one
/// could go to a host lapsing on the same tick.
#[test]
fn hosts_lapsing_together_are_all_lost_before_the_next_ask() {
    let mut o = cluster(4);
    // b is asked first and c is next in line; both lapse on the same tick.
    run(
        &mut o,
        Input::Heartbeat {
            host: "b".into(),
            memory_free_bytes: 7 * GIB,
        },
    );
    run(&mut o, Input::Tick { now: 9.0 });
    run(
        &mut o,
        Input::Heartbeat {
            host: "a".into(),
            memory_free_bytes: GIB,
        },
    );
    let id = submit(&mut o, "vm1", None);
    assert_eq!(
        o.migration(id)
            .and_then(|m| m.pending.clone())
            .map(|p| p.host)
            .as_deref(),
        Some("b")
    );
    let fx = run(&mut o, Input::Tick { now: 10.5 });
    assert!(asks(&fx).is_empty(), "{fx:#?}");
    let m = o.migration(id).expect("exists");
    assert_eq!(m.state, MigrationState::Failed);
    assert_eq!(
        m.attempts.len(),
        1,
        "b's loss is its refusal; c was never asked"
    );
}
