//! Admission, the queue and placement: asks, answers, timeouts, reservations.

use super::*;
use crate::migration::AnswerKind;

#[test]
fn placement_asks_the_most_free_memory_first_and_starts_on_acceptance() {
    let mut o = cluster(4);
    let step = o
        .handle(Input::Submit(MigrationRequest {
            vm: "vm1".into(),
            target: None,
            policy: Some("xen".into()),
            settings: None,
            priority: None,
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
            priority: None,
        })
    };
    let err = |o: &mut Orchestrator, i| o.handle(i).expect_err("refused");
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
    // An expiry that is not a time is no reservation either.
    let fx = run(&mut o, accept(id, "b", f64::NAN));
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Release { host, .. } if host == "b")));
    assert_eq!(state(&o, id), MigrationState::Failed);
}
