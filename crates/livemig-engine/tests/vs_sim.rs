//! Engine vs simulator: the same workload and policy give the same number of rounds and total
//! bytes within 15 % of `livemig_sim::simulate`'s prediction.
//!
//! The scenarios take 8 to 10 rounds, so that 15 % of the rounds is at least one round: one
//! round more or less (a loaded machine shifting the last, smallest round) is within the
//! tolerance, two are not.

mod common;

use common::*;
use livemig_engine::{InitialContent, SenderConfig};
use livemig_policy::{PolicyKind, PolicySpec};
use livemig_sim::ScenarioSpec;

fn compare(workload: &str, kind: PolicyKind, spec: ScenarioSpec) {
    let scenario = ScenarioSpec {
        name: "vs-sim".into(),
        memory: "64MiB".into(),
        workload: workload.into(),
        ..spec
    }
    .resolve(None)
    .expect("scenario");
    let mut p = kind.build(scenario.cfg.clone()).expect("policy");
    let predicted = livemig_sim::simulate(p.as_mut(), scenario.setup()).expect("simulates");

    let g = guest(64, workload, InitialContent::Random);
    let (sent, got) = migrate_pair(
        &g,
        kind,
        scenario.cfg.clone(),
        SenderConfig {
            sample_s: 0.0,
            ..SenderConfig::default()
        },
    );
    let measured = sent.expect("migration succeeds");
    got.expect("destination receives");
    // The engine keeps no round sequence of its own: its measured rounds replayed through a
    // fresh pilot give the very same records.
    let replayed = livemig_policy::pilot::replay(
        kind.build(scenario.cfg.clone()).expect("policy"),
        None,
        &measured,
    )
    .expect("replays");
    assert_eq!(replayed, measured.rounds, "{workload} {kind}: replay");
    let (m, s) = (&measured.summary, &predicted.summary);
    let per_round: Vec<String> = measured
        .rounds
        .iter()
        .zip(&predicted.rounds)
        .map(|(a, b)| {
            format!(
                "round {}: sent {:.2}/{:.2} MiB, {:.3}/{:.3} s, dirty {:.2}/{:.2} MiB",
                a.round,
                a.bytes_sent / MIB,
                b.bytes_sent / MIB,
                a.duration_s,
                b.duration_s,
                a.dirty_bytes / MIB,
                b.dirty_bytes / MIB
            )
        })
        .collect();
    let ctx = format!("{workload} {kind} (engine/sim)\n{}", per_round.join("\n"));
    assert!(
        (8..=10).contains(&s.rounds),
        "the scenario should take 8-10 rounds in the simulator, not {}\n{ctx}",
        s.rounds
    );
    eprintln!(
        "{ctx}\nrounds {}/{}, total {:.2}/{:.2} MiB",
        m.rounds,
        s.rounds,
        m.total_bytes / MIB,
        s.total_bytes / MIB
    );
    let rounds_off = (f64::from(m.rounds) - f64::from(s.rounds)).abs() / f64::from(s.rounds);
    assert!(
        rounds_off <= 0.15,
        "rounds {} vs {}\n{ctx}",
        m.rounds,
        s.rounds
    );
    let bytes_off = (m.total_bytes - s.total_bytes).abs() / s.total_bytes;
    assert!(
        bytes_off <= 0.15,
        "total bytes {:.2} vs {:.2} MiB\n{ctx}",
        m.total_bytes / MIB,
        s.total_bytes / MIB
    );
    assert_eq!(m.converged, s.converged, "{ctx}");
}

#[test]
fn dirty_factor_uniform_matches_the_simulator() {
    compare(
        "uniform:rate=24MiB/s",
        PolicyKind::DirtyFactor,
        ScenarioSpec {
            policy: PolicySpec {
                rounds: Some(30),
                stop_remaining: Some("2400KiB".into()),
                min_bandwidth: Some("32MiB/s".into()),
                max_bandwidth: Some("40MiB/s".into()),
                ..PolicySpec::default()
            },
            ..ScenarioSpec::default()
        },
    );
}

#[test]
fn fixed_hotcold_matches_the_simulator() {
    compare(
        "hotcold:rate=26MiB/s,hot=25%,share=80%",
        PolicyKind::Fixed,
        ScenarioSpec {
            policy: PolicySpec {
                rounds: Some(30),
                stop_remaining: Some("1.9MiB".into()),
                bandwidth: Some("32MiB/s".into()),
                ..PolicySpec::default()
            },
            ..ScenarioSpec::default()
        },
    );
}
