//! A migration persisted `running` survives closing and reopening the store, reloads
//! identically, and feeds `livemig_rms::recovery` and a restored orchestrator. On both
//! backends.

mod common;

use std::collections::BTreeMap;

use common::*;
use livemig_policy::Event;
use livemig_rms::recovery::{self, AgentReport, LocalState, Verdict};
use livemig_rms::{
    Answer, Config, Effect, Input, MigrationRequest, MigrationState, Orchestrator, Reservation,
    VmKind,
};

fn add_host(name: &str) -> Input {
    Input::AddHost {
        name: name.into(),
        address: format!("198.18.0.{}:7000", name.len()),
        memory_total_bytes: 8 << 30,
        timeout_s: None,
    }
}

fn report(host: &str, vms: &[&str], migrations: &[(u64, LocalState)]) -> AgentReport {
    AgentReport {
        host: host.into(),
        vms: vms.iter().map(|v| v.to_string()).collect(),
        migrations: migrations
            .iter()
            .map(|(id, l)| (livemig_rms::MigrationId(*id), *l))
            .collect::<BTreeMap<_, _>>(),
    }
}

both_backends!(a_running_migration_survives_a_restart_and_feeds_recovery);

fn a_running_migration_survives_a_restart_and_feeds_recovery(db: &TestDb) {
    let mut o = Orchestrator::new(Config::default(), 100.0);
    let id = {
        let mut store = db.open();
        for h in ["a", "b"] {
            drive(&mut o, store.as_mut(), add_host(h));
        }
        drive(
            &mut o,
            store.as_mut(),
            Input::AddVm {
                name: "vm1".into(),
                memory_bytes: 1 << 30,
                workload: "idle".into(),
                kind: VmKind::Sim,
                host: "a".into(),
            },
        );
        let step = drive(
            &mut o,
            store.as_mut(),
            Input::Submit(MigrationRequest {
                vm: "vm1".into(),
                target: None,
                policy: None,
                settings: None,
                priority: None,
            }),
        );
        let id = step.created.expect("a migration");
        let step = drive(
            &mut o,
            store.as_mut(),
            Input::Answer {
                migration: id,
                host: "b".into(),
                answer: Answer::Accepted {
                    reservation: Reservation {
                        id: "r1".into(),
                        expires_at: 130.0,
                    },
                },
            },
        );
        assert!(step
            .effects
            .iter()
            .any(|e| matches!(e, Effect::StartMigration { .. })));
        for event in [
            Event::Connected { peer: None },
            Event::RoundEnded {
                record: Box::new(round(1)),
            },
        ] {
            drive(
                &mut o,
                store.as_mut(),
                Input::AgentEvent {
                    migration: id,
                    host: "a".into(),
                    event,
                },
            );
        }
        id
        // The store closes here, as at a crash after the last commit.
    };
    let before = o.migration(id).expect("there").clone();
    assert_eq!(before.state, MigrationState::Running);
    assert_eq!(before.rounds.len(), 1);

    // The RMS restarts: a new process opens the same file.
    let mut store = db.open();
    let snapshot = store.load().expect("loads");
    assert_eq!(
        snapshot.migrations,
        vec![before.clone()],
        "reloads identically"
    );
    assert_eq!(snapshot.vms, o.vms().cloned().collect::<Vec<_>>());

    // Recovery reads the reloaded records: the source still migrates, so continue.
    let reports = [
        report("a", &["vm1"], &[(id.0, LocalState::Migrating)]),
        report("b", &[], &[]),
    ];
    assert_eq!(
        recovery::reconcile(&snapshot.migrations, &reports),
        vec![(id, Verdict::Continue)]
    );

    // Fed to a restored orchestrator: the destination runs the guest, so it completed.
    let mut restored = snapshot.restore(Config::default(), 200.0);
    let reports = vec![
        report("a", &[], &[(id.0, LocalState::HandedOver)]),
        report("b", &["vm1"], &[]),
    ];
    drive(&mut restored, store.as_mut(), Input::Restarted { reports });
    drop(store);

    let store = db.open();
    let after = store.migration(id).expect("reads").expect("there");
    assert_eq!(after.state, MigrationState::Completed);
    assert_eq!(Some(&after), restored.migration(id));
    assert_eq!(
        store.vm("vm1").expect("reads").map(|v| v.host),
        Some("b".into())
    );
}
