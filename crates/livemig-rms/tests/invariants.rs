//! Property test of the orchestrator: for random interleavings of inputs (submissions,
//! answers, agent events, cancels, ticks, lost hosts, heartbeats, restarts, operator
//! resolutions), the invariants hold after every step:
//! - every action in an effect list is preceded by the Persist it relies on;
//! - every transition is legal, and a refused input changes nothing;
//! - at most one unfinished migration holds a VM;
//! - a VM's location changes only on a confirmed hand-over, to that migration's destination;
//! - every answer to a known migration is recorded as an attempt;
//! - a lost host is never asked for capacity nor made a destination.

use std::collections::BTreeMap;

use livemig_policy::event::Event;
use livemig_policy::StopReason;
use livemig_rms::{
    check_persist_before_act, AgentReport, Answer, Config, Effect, Input, LocalState, MigrationId,
    MigrationRequest, MigrationState, Orchestrator, Reservation, VmKind,
};
use proptest::prelude::*;

const HOSTS: [&str; 4] = ["a", "b", "c", "d"];
const VMS: [&str; 3] = ["vm1", "vm2", "vm3"];

#[derive(Debug, Clone, Copy)]
enum Ev {
    Connected,
    Accepted,
    StopAndCopy,
    Committed,
    HandedOver,
    Resumed,
    FailedSource,
    FailedUnknown,
    Cancelled,
    Progress,
}

/// Who sends an agent event: the migration's source, its destination, or any host.
#[derive(Debug, Clone, Copy)]
enum From {
    Source,
    Target,
    Host(usize),
}

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
        from: From,
        ev: Ev,
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

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        Just(Ev::Connected),
        Just(Ev::Accepted),
        Just(Ev::StopAndCopy),
        Just(Ev::Committed),
        Just(Ev::HandedOver),
        Just(Ev::Resumed),
        Just(Ev::FailedSource),
        Just(Ev::FailedUnknown),
        Just(Ev::Cancelled),
        Just(Ev::Progress),
    ]
}

fn from() -> impl Strategy<Value = From> {
    prop_oneof![
        3 => Just(From::Source),
        3 => Just(From::Target),
        1 => (0..HOSTS.len()).prop_map(From::Host),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let host = 0..HOSTS.len();
    let mig = 0usize..8;
    prop_oneof![
        3 => (0..VMS.len(), prop::option::of(0..HOSTS.len()))
            .prop_map(|(vm, target)| Op::Submit { vm, target }),
        3 => (mig.clone(), host.clone(), 0.5f64..20.0)
            .prop_map(|(mig, host, ttl)| Op::Accept { mig, host, ttl }),
        2 => (mig.clone(), host.clone()).prop_map(|(mig, host)| Op::Refuse { mig, host }),
        6 => (mig.clone(), from(), ev()).prop_map(|(mig, from, ev)| Op::Event { mig, from, ev }),
        1 => mig.clone().prop_map(|mig| Op::Cancel { mig }),
        2 => (0.0f64..8.0).prop_map(|dt| Op::Tick { dt }),
        1 => host.clone().prop_map(|host| Op::Lost { host }),
        2 => host.clone().prop_map(|host| Op::Heartbeat { host }),
        1 => (
            prop::collection::vec((0..VMS.len(), 0..HOSTS.len()), 0..5),
            prop::collection::vec((0..HOSTS.len(), mig.clone(), 0u8..6), 0..4),
        )
            .prop_map(|(runs, locals)| Op::Restart { runs, locals }),
        1 => (mig, host).prop_map(|(mig, host)| Op::Resolve { mig, host }),
    ]
}

fn cluster() -> Orchestrator {
    let mut o = Orchestrator::new(
        Config {
            max_active: 2,
            ..Config::default()
        },
        0.0,
    );
    for (i, h) in HOSTS.iter().enumerate() {
        let steps = [
            Input::AddHost {
                name: h.to_string(),
                address: format!("198.18.0.{}:7000", i + 1),
                memory_total_bytes: 8 << 30,
                timeout_s: None,
            },
            Input::Heartbeat {
                host: h.to_string(),
                memory_free_bytes: (i as u64 + 1) << 30,
            },
        ];
        for s in steps {
            o.handle(s).expect("a host registers");
        }
    }
    for (i, vm) in VMS.iter().enumerate() {
        o.handle(Input::AddVm {
            name: vm.to_string(),
            memory_bytes: 1 << 30,
            workload: "idle".into(),
            kind: VmKind::Sim,
            host: HOSTS[i % 2].to_string(),
        })
        .expect("a VM registers");
    }
    o
}

fn event(ev: Ev) -> Event {
    match ev {
        Ev::Connected => Event::Connected { peer: None },
        Ev::Accepted => Event::Accepted { peer: "x".into() },
        Ev::StopAndCopy => Event::StopAndCopy {
            reason: StopReason::RemainingBelowStopLevel,
            bytes: 1.0,
            cap_bytes_per_s: 1.0,
        },
        Ev::Committed => Event::Committed,
        Ev::HandedOver => Event::HandedOver { downtime_s: 0.1 },
        Ev::Resumed => Event::Resumed {
            session: "s".into(),
        },
        Ev::FailedSource => Event::Failed {
            error: "broken".into(),
            outcome: "failed_source_running".into(),
        },
        Ev::FailedUnknown => Event::Failed {
            error: "lost the answer".into(),
            outcome: "unknown".into(),
        },
        Ev::Cancelled => Event::Cancelled {
            phase: "round 1".into(),
        },
        Ev::Progress => Event::Progress {
            round: 1,
            bytes_sent: 1.0,
            bytes_remaining: 1.0,
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

/// The ids in the orchestrator, to pick from by index.
fn ids(o: &Orchestrator) -> Vec<MigrationId> {
    o.migrations().map(|m| m.id).collect()
}

/// Turns an op into an input against the current state; `None` when it makes no sense yet
/// (no migration to name). A restart also replaces the orchestrator with one restored from
/// its own records, as the store would hold them.
fn input(o: &mut Orchestrator, op: &Op) -> Option<Input> {
    let ids = ids(o);
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
        Op::Event { mig, from, ev } => {
            let id = pick(*mig)?;
            let m = o.migration(id)?;
            let host = match from {
                From::Source => m.source.clone(),
                From::Target => m.target.clone().unwrap_or_else(|| m.source.clone()),
                From::Host(h) => HOSTS[*h].to_string(),
            };
            Input::AgentEvent {
                migration: id,
                host,
                event: event(*ev),
            }
        }
        Op::Cancel { mig } => Input::Cancel {
            migration: pick(*mig)?,
        },
        Op::Tick { dt } => Input::Tick { now: o.now() + dt },
        Op::Lost { host } => Input::HostLost {
            host: HOSTS[*host].into(),
        },
        Op::Heartbeat { host } => Input::Heartbeat {
            host: HOSTS[*host].into(),
            memory_free_bytes: 2 << 30,
        },
        Op::Restart { runs, locals } => {
            *o = Orchestrator::restore(
                o.config().clone(),
                o.now(),
                o.hosts().cloned(),
                o.vms().cloned(),
                o.migrations().cloned(),
            );
            let mut reports: BTreeMap<&str, AgentReport> = HOSTS
                .iter()
                .map(|h| {
                    (
                        *h,
                        AgentReport {
                            host: h.to_string(),
                            ..AgentReport::default()
                        },
                    )
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

/// Whether the input may confirm a hand-over of migration `id` (moving its VM).
fn confirms(input: &Input, before: &Orchestrator, id: MigrationId) -> bool {
    let Some(m) = before.migration(id) else {
        return false;
    };
    match input {
        Input::AgentEvent {
            migration,
            host,
            event,
        } if *migration == id => match event {
            Event::HandedOver { .. } => *host == m.source,
            Event::Resumed { .. } => m.target.as_deref() == Some(host.as_str()),
            _ => false,
        },
        Input::Resolve { migration, host } => {
            *migration == id && m.target.as_deref() == Some(host.as_str())
        }
        // Recovery completes a migration only when the destination's agent runs the VM.
        Input::Restarted { reports } => reports
            .iter()
            .any(|r| Some(r.host.as_str()) == m.target.as_deref() && r.vms.contains(&m.vm)),
        _ => false,
    }
}

fn check(
    before: &Orchestrator,
    input: &Input,
    after: &Orchestrator,
    effects: &[Effect],
) -> Result<(), TestCaseError> {
    check_persist_before_act(effects).map_err(TestCaseError::fail)?;
    // Legal transitions, and a migration record is never lost.
    for m in before.migrations() {
        let now = after
            .migration(m.id)
            .ok_or_else(|| TestCaseError::fail("a record vanished"))?;
        prop_assert!(
            m.state.can_go(now.state),
            "{:?} -> {:?} on {input:?}",
            m.state,
            now.state
        );
        prop_assert!(now.attempts.len() >= m.attempts.len());
    }
    // At most one unfinished migration per VM.
    for vm in VMS {
        let holding = after
            .migrations()
            .filter(|m| m.vm == vm && m.state.holds_vm())
            .count();
        prop_assert!(holding <= 1, "{vm} held by {holding}");
    }
    // The location moves only with a confirmed hand-over, to the destination, from the source.
    for vm in VMS {
        let (Some(old), Some(new)) = (before.vm(vm), after.vm(vm)) else {
            continue;
        };
        let completed: Vec<_> = after
            .migrations()
            .filter(|m| m.vm == vm && m.state == MigrationState::Completed)
            .filter(|m| {
                before
                    .migration(m.id)
                    .is_some_and(|b| b.state != MigrationState::Completed)
            })
            .collect();
        if old.host != new.host {
            prop_assert_eq!(completed.len(), 1, "{} moved without one completion", vm);
            let m = completed[0];
            prop_assert_eq!(Some(&new.host), m.target.as_ref());
            prop_assert_eq!(&old.host, &m.source);
            prop_assert!(confirms(input, before, m.id), "{vm} moved on {input:?}");
            let told = effects.iter().any(
                |e| matches!(e, Effect::SetLocation { vm: v, host } if v == vm && *host == new.host),
            );
            prop_assert!(told, "no SetLocation for {}", vm);
        } else {
            prop_assert!(completed.is_empty(), "{vm} completed without moving");
        }
    }
    // Every answer to a known migration is an attempt.
    if let Input::Answer {
        migration, host, ..
    } = input
    {
        let (b, a) = (before.migration(*migration), after.migration(*migration));
        if let (Some(b), Some(a)) = (b, a) {
            prop_assert_eq!(a.attempts.len(), b.attempts.len() + 1);
            prop_assert_eq!(&a.attempts[b.attempts.len()].host, host);
        }
    }
    // Lost hosts get no asks and no migrations.
    for e in effects {
        let host = match e {
            Effect::AskCapacity { host, .. } => host,
            Effect::StartMigration { target, .. } => target,
            _ => continue,
        };
        prop_assert!(
            after.host(host).is_some_and(|h| h.is_alive()),
            "{host} is lost: {e:?}"
        );
    }
    Ok(())
}

fn same(a: &Orchestrator, b: &Orchestrator) -> bool {
    a.migrations().eq(b.migrations()) && a.vms().eq(b.vms()) && a.hosts().eq(b.hosts())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_any_interleaving(ops in prop::collection::vec(op(), 1..80)) {
        let mut o = cluster();
        for op in &ops {
            let Some(input) = input(&mut o, op) else { continue };
            let before = o.clone();
            match o.handle(input.clone()) {
                Ok(step) => check(&before, &input, &o, &step.effects)?,
                Err(e) => prop_assert!(same(&before, &o), "{e} changed the state on {input:?}"),
            }
        }
    }
}

/// The generator is not idle: across many runs it reaches every state and moves VMs, so the
/// property above is exercised on hand-overs, unknown outcomes and cancellations alike.
#[test]
fn the_interleavings_reach_every_state() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};

    let mut runner = TestRunner::new_with_rng(
        RunnerConfig::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = prop::collection::vec(op(), 1..80);
    let mut seen = std::collections::BTreeSet::new();
    let mut moves = 0;
    for _ in 0..400 {
        let ops = strategy
            .new_tree(&mut runner)
            .map(|t| t.current())
            .unwrap_or_default();
        let mut o = cluster();
        for op in &ops {
            let Some(input) = input(&mut o, op) else {
                continue;
            };
            let before: Vec<String> = VMS
                .iter()
                .filter_map(|v| o.vm(v))
                .map(|v| v.host.clone())
                .collect();
            if o.handle(input).is_ok() {
                let after: Vec<String> = VMS
                    .iter()
                    .filter_map(|v| o.vm(v))
                    .map(|v| v.host.clone())
                    .collect();
                moves += before.iter().zip(&after).filter(|(b, a)| b != a).count();
            }
            seen.extend(o.migrations().map(|m| m.state.name()));
        }
    }
    for s in [
        "queued",
        "placing",
        "running",
        "switching_over",
        "completed",
        "failed",
        "cancelled",
        "unknown",
    ] {
        assert!(seen.contains(s), "no run reached {s}: {seen:?}");
    }
    assert!(moves >= 20, "only {moves} VM moves");
}
