//! Property test: for random sequences of orchestrator inputs, the store that received every
//! `Persist` in order loads exactly the orchestrator's view: its migrations and VMs as they
//! stand, and each host's last persisted record (heartbeat times and free memory are soft
//! state, not persisted). A restart in the sequence restores the orchestrator from the store.
//! On both backends (SQLite in memory; PostgreSQL, fewer cases).

mod common;

use std::collections::BTreeMap;

use common::*;
use livemig_policy::{Event, StopReason};
use livemig_rms::{
    AgentReport, Answer, Change, Config, Effect, Host, Input, LocalState, MigrationId,
    MigrationRequest, Orchestrator, Reservation, VmKind,
};
use livemig_store::{Store, StoreUrl};
use proptest::prelude::*;

const HOSTS: [&str; 3] = ["a", "b", "c"];
const VMS: [&str; 3] = ["vm1", "vm2", "vm3"];

#[derive(Debug, Clone)]
enum Op {
    Submit {
        vm: usize,
        target: Option<usize>,
    },
    Accept {
        mig: usize,
        host: usize,
        ttl: f64,
    },
    Refuse {
        mig: usize,
        host: usize,
    },
    Event {
        mig: usize,
        to_target: bool,
        ev: u8,
        x: f64,
    },
    Report {
        mig: usize,
        x: f64,
    },
    Cancel {
        mig: usize,
    },
    Tick {
        dt: f64,
    },
    Lost {
        host: usize,
    },
    Heartbeat {
        host: usize,
        free: u64,
    },
    Restart {
        runs: Vec<(usize, usize)>,
        locals: Vec<(usize, usize, u8)>,
    },
    Resolve {
        mig: usize,
        host: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let host = 0..HOSTS.len();
    let mig = 0usize..6;
    // Any finite float a measurement could produce, tiny to huge.
    let x = prop_oneof![0.0f64..1e3, 1e3f64..1e12, Just(1.0 / 3.0)];
    prop_oneof![
        3 => (0..VMS.len(), prop::option::of(host.clone()))
            .prop_map(|(vm, target)| Op::Submit { vm, target }),
        3 => (mig.clone(), host.clone(), 0.5f64..20.0)
            .prop_map(|(mig, host, ttl)| Op::Accept { mig, host, ttl }),
        2 => (mig.clone(), host.clone()).prop_map(|(mig, host)| Op::Refuse { mig, host }),
        6 => (mig.clone(), any::<bool>(), 0u8..8, x.clone())
            .prop_map(|(mig, to_target, ev, x)| Op::Event { mig, to_target, ev, x }),
        1 => (mig.clone(), x).prop_map(|(mig, x)| Op::Report { mig, x }),
        1 => mig.clone().prop_map(|mig| Op::Cancel { mig }),
        2 => (0.0f64..8.0).prop_map(|dt| Op::Tick { dt }),
        1 => host.clone().prop_map(|host| Op::Lost { host }),
        2 => (host.clone(), 0u64..(8 << 30)).prop_map(|(host, free)| Op::Heartbeat { host, free }),
        1 => (
            prop::collection::vec((0..VMS.len(), host.clone()), 0..4),
            prop::collection::vec((host.clone(), mig.clone(), 0u8..5), 0..3),
        )
            .prop_map(|(runs, locals)| Op::Restart { runs, locals }),
        1 => (mig, host).prop_map(|(mig, host)| Op::Resolve { mig, host }),
    ]
}

fn event(ev: u8, x: f64) -> Event {
    match ev {
        0 => Event::Connected { peer: None },
        1 => Event::RoundEnded {
            record: Box::new({
                let mut r = round(1);
                r.bytes_sent = x;
                r.factor = x / 7.0;
                r
            }),
        },
        2 => Event::StopAndCopy {
            reason: StopReason::RemainingBelowStopLevel,
            bytes: x,
            cap_bytes_per_s: 1.0,
        },
        3 => Event::Committed,
        4 => Event::HandedOver { downtime_s: x },
        5 => Event::Resumed {
            session: "s".into(),
        },
        6 => Event::Failed {
            error: "broken".into(),
            outcome: if x > 1e3 {
                "failed_source_running".into()
            } else {
                "unknown".into()
            },
        },
        _ => Event::Cancelled {
            phase: "round 1".into(),
        },
    }
}

fn local(n: u8) -> LocalState {
    match n {
        0 => LocalState::Migrating,
        1 => LocalState::HandedOver,
        2 => LocalState::Failed,
        3 => LocalState::Cancelled,
        _ => LocalState::Held,
    }
}

/// The input an op stands for against the current state (`None`: nothing to name yet).
/// A restart first replaces the orchestrator with one restored from the store.
fn input(o: &mut Orchestrator, store: &dyn Store, op: &Op) -> Option<Input> {
    let ids: Vec<MigrationId> = o.migrations().map(|m| m.id).collect();
    let pick = |i: usize| (!ids.is_empty()).then(|| ids[i % ids.len()]);
    Some(match op {
        Op::Submit { vm, target } => Input::Submit(MigrationRequest {
            vm: VMS[*vm].into(),
            target: target.map(|t| HOSTS[t].to_string()),
            policy: None,
            settings: None,
            priority: None,
        }),
        Op::Accept { mig, host, ttl } => Input::Answer {
            migration: pick(*mig)?,
            host: HOSTS[*host].into(),
            answer: Answer::Accepted {
                reservation: Reservation {
                    id: format!("r{mig}{host}"),
                    expires_at: o.now() + ttl,
                },
            },
        },
        Op::Refuse { mig, host } => Input::Answer {
            migration: pick(*mig)?,
            host: HOSTS[*host].into(),
            answer: Answer::Refused {
                reason: "full".into(),
            },
        },
        Op::Event {
            mig,
            to_target,
            ev,
            x,
        } => {
            let id = pick(*mig)?;
            let m = o.migration(id)?;
            let host = match (*to_target, &m.target) {
                (true, Some(t)) => t.clone(),
                _ => m.source.clone(),
            };
            Input::AgentEvent {
                migration: id,
                host,
                event: event(*ev, *x),
            }
        }
        Op::Report { mig, x } => {
            let mut r = report();
            r.summary.total_bytes = *x;
            r.memory_bytes = x * 3.0;
            Input::Report {
                migration: pick(*mig)?,
                report: Box::new(r),
            }
        }
        Op::Cancel { mig } => Input::Cancel {
            migration: pick(*mig)?,
        },
        Op::Tick { dt } => Input::Tick { now: o.now() + dt },
        Op::Lost { host } => Input::HostLost {
            host: HOSTS[*host].into(),
        },
        Op::Heartbeat { host, free } => Input::Heartbeat {
            host: HOSTS[*host].into(),
            memory_free_bytes: *free,
        },
        Op::Restart { runs, locals } => {
            let snapshot = store.load().expect("the store loads");
            *o = snapshot.restore(o.config().clone(), o.now());
            let mut reports: BTreeMap<&str, AgentReport> = HOSTS
                .iter()
                .map(|h| {
                    let r = AgentReport {
                        host: h.to_string(),
                        ..AgentReport::default()
                    };
                    (*h, r)
                })
                .collect();
            for (vm, host) in runs {
                if let Some(r) = reports.get_mut(HOSTS[*host]) {
                    r.vms.push(VMS[*vm].to_string());
                }
            }
            for (host, mig, l) in locals {
                if let (Some(r), Some(id)) = (reports.get_mut(HOSTS[*host]), pick(*mig)) {
                    r.migrations.insert(id, local(*l));
                }
            }
            Input::Restarted {
                reports: reports.into_values().collect(),
            }
        }
        Op::Resolve { mig, host } => Input::Resolve {
            migration: pick(*mig)?,
            host: HOSTS[*host].into(),
        },
    })
}

/// A host's durable fields (what a restart keeps: `restore` stamps `last_heard`).
fn durable(h: &Host) -> (String, String, livemig_rms::HostState, u64, u64) {
    (
        h.name.clone(),
        h.address.clone(),
        h.state,
        h.memory_total_bytes,
        h.timeout_s.to_bits(),
    )
}

/// Drives the orchestrator through `ops`, writing every `Persist` to `store`, and checks
/// that the store loads the orchestrator's view.
fn check(store: &mut dyn Store, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut o = Orchestrator::new(
        Config {
            max_active: 2,
            ..Config::default()
        },
        0.0,
    );
    // Each host's last persisted record, as the shell wrote it.
    let mut last_host: BTreeMap<String, Host> = BTreeMap::new();
    let mut setup: Vec<Input> = HOSTS
        .iter()
        .enumerate()
        .map(|(i, h)| Input::AddHost {
            name: h.to_string(),
            address: format!("198.18.0.{}:7000", i + 1),
            memory_total_bytes: 8 << 30,
            timeout_s: (i == 2).then_some(30.0),
        })
        .collect();
    setup.extend(VMS.iter().enumerate().map(|(i, vm)| Input::AddVm {
        name: vm.to_string(),
        memory_bytes: 1 << 30,
        workload: "idle".into(),
        kind: VmKind::Sim,
        host: HOSTS[i % 2].to_string(),
    }));
    let mut inputs = setup;
    for op in ops {
        let input_now = match input(&mut o, store, op) {
            Some(i) => i,
            None => continue,
        };
        inputs.push(input_now);
        for input in inputs.drain(..) {
            let Ok(step) = o.handle(input) else { continue };
            for e in &step.effects {
                if let Effect::Persist(c) = e {
                    store
                        .apply(c)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    if let Change::Host(h) = c {
                        last_host.insert(h.name.clone(), (**h).clone());
                    }
                }
            }
        }
    }
    let loaded = store
        .load()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(
        &loaded.migrations,
        &o.migrations().cloned().collect::<Vec<_>>()
    );
    prop_assert_eq!(&loaded.vms, &o.vms().cloned().collect::<Vec<_>>());
    prop_assert_eq!(&loaded.hosts, &last_host.into_values().collect::<Vec<_>>());
    prop_assert_eq!(
        loaded.hosts.iter().map(durable).collect::<Vec<_>>(),
        o.hosts().map(durable).collect::<Vec<_>>()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn sqlite_loads_the_orchestrators_view(ops in prop::collection::vec(op(), 0..40)) {
        let mut store = livemig_store::open(&StoreUrl::SqliteMemory).expect("opens");
        check(store.as_mut(), &ops)?;
    }
}

proptest! {
    // Fewer cases: each gets a schema of its own on the server.
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn postgres_loads_the_orchestrators_view(ops in prop::collection::vec(op(), 0..40)) {
        let Some(db) = TestDb::postgres() else { return Ok(()) };
        let mut store = db.open();
        check(store.as_mut(), &ops)?;
    }
}
