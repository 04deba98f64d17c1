//! Unit tests of the orchestrator: every transition and every refusal. Shared helpers here;
//! the tests by topic in the submodules.

mod budget;
mod hosts;
mod placing;
mod running;

use livemig_policy::event::Event;

use super::*;

pub(super) const GIB: u64 = 1 << 30;

/// Hosts a (the source, 8 GiB free), b (4 GiB free) and c (6 GiB free); vm1 and vm2
/// (1 GiB each) on a.
pub(super) fn cluster(max_active: usize) -> Orchestrator {
    cluster_with(Config {
        max_active,
        ..Config::default()
    })
}

/// [`cluster`] under `config`.
pub(super) fn cluster_with(config: Config) -> Orchestrator {
    let mut o = Orchestrator::new(config, 0.0);
    for (i, (name, free)) in [("a", 8), ("b", 4), ("c", 6)].into_iter().enumerate() {
        run(
            &mut o,
            Input::AddHost {
                name: name.into(),
                address: format!("198.18.0.{}:7000", i + 1),
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
pub(super) fn run(o: &mut Orchestrator, input: Input) -> Vec<Effect> {
    let step = o
        .handle(input.clone())
        .unwrap_or_else(|e| panic!("{input:?}: {e}"));
    if let Err(e) = check_persist_before_act(&step.effects) {
        panic!("{input:?}: {e}\n{:#?}", step.effects);
    }
    step.effects
}

pub(super) fn submit(o: &mut Orchestrator, vm: &str, target: Option<&str>) -> MigrationId {
    let step = o
        .handle(Input::Submit(MigrationRequest {
            vm: vm.into(),
            target: target.map(String::from),
            policy: None,
            settings: None,
            priority: None,
        }))
        .unwrap_or_else(|e| panic!("submit: {e}"));
    check_persist_before_act(&step.effects).unwrap_or_else(|e| panic!("{e}"));
    step.created.unwrap_or_else(|| panic!("no id"))
}

pub(super) fn accept(id: MigrationId, host: &str, expires_at: f64) -> Input {
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

pub(super) fn refuse(id: MigrationId, host: &str, reason: &str) -> Input {
    Input::Answer {
        migration: id,
        host: host.into(),
        answer: Answer::Refused {
            reason: reason.into(),
        },
    }
}

pub(super) fn event(id: MigrationId, host: &str, event: Event) -> Input {
    Input::AgentEvent {
        migration: id,
        host: host.into(),
        event,
    }
}

pub(super) fn handed_over() -> Event {
    Event::HandedOver { downtime_s: 0.05 }
}

pub(super) fn failed(outcome: &str) -> Event {
    Event::Failed {
        error: "the destination closed the connection".into(),
        outcome: outcome.into(),
    }
}

pub(super) fn state(o: &Orchestrator, id: MigrationId) -> MigrationState {
    o.migration(id)
        .map_or_else(|| panic!("no migration {id}"), |m| m.state)
}

pub(super) fn location(o: &Orchestrator, vm: &str) -> String {
    o.vm(vm)
        .map_or_else(|| panic!("no vm {vm}"), |v| v.host.clone())
}

pub(super) fn asks(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::AskCapacity { host, .. } => Some(host.clone()),
            _ => None,
        })
        .collect()
}

/// vm1 running from a to c; c's reservation expires at 8 s (hosts lapse after 10 s).
pub(super) fn running(o: &mut Orchestrator) -> MigrationId {
    let id = submit(o, "vm1", None);
    run(o, accept(id, "c", 8.0));
    assert_eq!(state(o, id), MigrationState::Running);
    id
}
