//! Host liveness, lost hosts and recovery after a restart.

use super::*;
use crate::api::HostState;

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

#[test]
fn a_vm_is_removed_only_when_no_migration_holds_it() {
    let mut o = cluster(4);
    let id = submit(&mut o, "vm1", None);
    assert_eq!(
        o.handle(Input::RemoveVm { name: "vm1".into() }),
        Err(OrchestratorError::VmBusy {
            vm: "vm1".into(),
            migration: id
        })
    );
    assert!(o.vm("vm1").is_some());
    let fx = run(&mut o, Input::RemoveVm { name: "vm2".into() });
    assert_eq!(
        fx,
        vec![Effect::Persist(Change::VmRemoved { name: "vm2".into() })]
    );
    assert!(o.vm("vm2").is_none());
    assert_eq!(
        o.handle(Input::RemoveVm { name: "vm2".into() }),
        Err(OrchestratorError::UnknownVm("vm2".into()))
    );
}
