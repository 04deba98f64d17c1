//! The simulator against closed forms, and the oracle against its definition.

use livemig_policy::baselines::Constant;
use livemig_policy::{PolicyConfig, PolicyKind, PolicySpec};
use livemig_sim::oracle;
use livemig_sim::scenario::{parse_suite, ScenarioSpec};
use livemig_sim::simulate;
use std::path::Path;

const MIB: f64 = 1024.0 * 1024.0;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1e-300)
}

/// Scan (no saturation) under `fixed`: the geometric series of the pre-copy model.
#[test]
fn scan_under_fixed_matches_the_geometric_series() {
    for (m_mib, rate_mib, b_mib, n, h_mib, stop_mib) in [
        (4096.0, 40.0, 100.0, 10, 64.0, 1000.0),
        (1024.0, 90.0, 100.0, 5, 16.0, 500.0),
        (8192.0, 10.0, 250.0, 30, 1.0, 2000.0),
    ] {
        let (m, r, b, h, b_stop) = (
            m_mib * MIB,
            rate_mib * MIB,
            b_mib * MIB,
            h_mib * MIB,
            stop_mib * MIB,
        );
        let spec = ScenarioSpec {
            policy: PolicySpec {
                rounds: Some(n),
                stop_remaining: Some(format!("{h_mib}MiB")),
                min_bandwidth: Some("1MiB/s".into()),
                max_bandwidth: Some(format!("{stop_mib}MiB/s")),
                bandwidth: Some(format!("{b_mib}MiB/s")),
                ..PolicySpec::default()
            },
            name: "closed-form".into(),
            memory: format!("{m_mib}MiB"),
            workload: format!("scan:rate={rate_mib}MiB/s"),
            ..ScenarioSpec::default()
        };
        let s = spec.resolve(None).expect("valid scenario");
        let mut p = Constant::fixed(s.cfg.clone());
        let rep = simulate(&mut p, s.setup()).expect("runs");

        let rho = r / b;
        let mut k = 1;
        while k < n && m * rho.powi(k as i32) > h {
            k += 1;
        }
        let left = m * rho.powi(k as i32);
        let precopy = m * (1.0 - rho.powi(k as i32)) / (1.0 - rho);
        assert_eq!(rep.summary.rounds, k, "rounds");
        assert!(
            close(rep.summary.total_bytes, precopy + left),
            "bytes {} vs {}",
            rep.summary.total_bytes,
            precopy + left
        );
        assert!(close(rep.summary.downtime_s, left / b_stop), "downtime");
        assert!(
            close(rep.summary.total_time_s, precopy / b + left / b_stop),
            "time"
        );
        assert_eq!(rep.summary.converged, left <= h);
        for (i, x) in rep.rounds.iter().enumerate() {
            assert!(
                close(x.bytes_sent, m * rho.powi(i as i32)),
                "round {}",
                i + 1
            );
            assert!(close(x.factor, rho), "factor of round {}", i + 1);
        }
    }
}

#[test]
fn oracle_is_the_lowest_converging_constant_bandwidth() {
    let suite = parse_suite(
        Path::new("t.toml"),
        r#"
[[scenario]]
name = "hc"
memory = "4GiB"
workload = "hotcold:rate=300MiB/s,hot=10%,share=90%"
"#,
    )
    .expect("valid");
    let s = &suite[0];
    let o = oracle::find(s).expect("runs").expect("feasible");
    assert!(o.report.summary.converged);
    let b = o.bandwidth_bytes_per_s;
    // The issue's quick model: ~324 MiB/s.
    assert!((b / MIB - 324.0).abs() < 5.0, "{}", b / MIB);
    let below = oracle::run_fixed(s, b * (1.0 - 1e-4)).expect("runs");
    assert!(!below.summary.converged);
}

#[test]
fn oracle_is_none_when_even_b_max_fails() {
    let suite = parse_suite(
        Path::new("t.toml"),
        "[[scenario]]\nname = \"x\"\nmemory = \"4GiB\"\nworkload = \"scan:rate=2GiB/s\"\n",
    )
    .expect("valid");
    assert!(oracle::find(&suite[0]).expect("runs").is_none());
}

#[test]
fn literal_method_on_the_hot_set_example() {
    // Issue 5's figures: not converged after 10 rounds with ~110 MiB left, peak ~395 MiB/s,
    // ~580 s in total.
    let spec = ScenarioSpec {
        name: "hc".into(),
        memory: "4GiB".into(),
        workload: "hotcold:rate=300MiB/s,hot=10%,share=90%".into(),
        ..ScenarioSpec::default()
    };
    let s = spec.resolve(None).expect("valid");
    let mut p = PolicyKind::DirtyFactor.build(s.cfg.clone()).expect("valid");
    let rep = simulate(p.as_mut(), s.setup()).expect("runs");
    assert!(!rep.summary.converged);
    assert_eq!(rep.summary.rounds, 10);
    let left = rep.rounds.last().expect("rounds").dirty_bytes / MIB;
    assert!((left - 110.0).abs() < 5.0, "{left}");
    assert!((rep.summary.peak_cap_bytes_per_s / MIB - 395.0).abs() < 5.0);
    assert!((rep.summary.total_time_s - 580.0).abs() < 10.0);
}

#[test]
fn noise_is_reproducible_by_seed() {
    let run = |seed: u64| {
        let spec = ScenarioSpec {
            name: "n".into(),
            memory: "2GiB".into(),
            workload: "uniform:rate=50MiB/s".into(),
            noise: Some(0.2),
            seed: Some(seed),
            ..ScenarioSpec::default()
        };
        let s = spec.resolve(None).expect("valid");
        let mut p = PolicyKind::DirtyFactor.build(s.cfg.clone()).expect("valid");
        simulate(p.as_mut(), s.setup()).expect("runs")
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
}

#[test]
fn link_capacity_bounds_the_rate_and_state_adds_to_downtime() {
    let spec = ScenarioSpec {
        policy: PolicySpec {
            bandwidth: Some("1GiB/s".into()),
            max_bandwidth: Some("10Gbit/s".into()),
            ..PolicySpec::default()
        },
        name: "l".into(),
        memory: "1GiB".into(),
        workload: "idle".into(),
        link_capacity: Some("100MiB/s".into()),
        state_size: Some("10MiB".into()),
        resume_latency: Some("50ms".into()),
        ..ScenarioSpec::default()
    };
    let s = spec.resolve(None).expect("valid");
    let cfg = PolicyConfig { ..s.cfg.clone() };
    let rep = simulate(&mut Constant::fixed(cfg), s.setup()).expect("runs");
    assert!(close(rep.rounds[0].duration_s, 1024.0 / 100.0));
    assert!(close(rep.summary.downtime_s, 0.1 + 0.05));
    assert!(close(rep.summary.peak_bytes_per_s, 100.0 * MIB));
}

#[test]
fn default_suite_has_at_least_twelve_valid_scenarios() {
    let suite =
        parse_suite(Path::new("suite.toml"), livemig_sim::bench::DEFAULT_SUITE).expect("valid");
    assert!(suite.len() >= 12);
    let results = livemig_sim::bench::run_suite(&suite, &PolicyKind::ALL, |_, _| {}).expect("runs");
    for r in &results {
        assert_eq!(r.results.len(), PolicyKind::ALL.len());
        if let Some(o) = &r.oracle {
            assert!(o.report.summary.converged, "{}", r.scenario);
            // No policy's constant cap below the oracle's converges on a stationary workload.
            let fixed = r
                .results
                .iter()
                .find(|p| p.policy == "fixed")
                .expect("fixed ran");
            assert!(fixed.report.summary.converged);
        }
    }
    // Both feasible and infeasible scenarios are present.
    assert!(results.iter().any(|r| r.oracle.is_none()));
    assert!(results.iter().filter(|r| r.oracle.is_some()).count() >= 8);
}

/// `predictive` converges wherever some constant bandwidth <= B_max does, on the tuning suite
/// and on both hold-out sets (issue 5's first target).
#[test]
fn predictive_converges_wherever_the_oracle_does() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    for file in ["suite.toml", "holdout.toml", "holdout2.toml"] {
        let suite = livemig_sim::scenario::load_suite(&root.join(file)).expect("valid suite");
        let results = livemig_sim::bench::run_suite(&suite, &[PolicyKind::Predictive], |_, _| {})
            .expect("runs");
        for r in &results {
            let p = &r.results[0];
            if r.oracle.is_some() {
                assert!(p.report.summary.converged, "{file}: {}", r.scenario);
            } else {
                assert!(!p.report.summary.converged, "{file}: {}", r.scenario);
            }
        }
    }
}

#[test]
fn predictive_on_the_hot_set_example_stays_near_the_oracle() {
    let spec = ScenarioSpec {
        name: "hc".into(),
        memory: "4GiB".into(),
        workload: "hotcold:rate=300MiB/s,hot=10%,share=90%".into(),
        ..ScenarioSpec::default()
    };
    let s = spec.resolve(None).expect("valid");
    let r = livemig_sim::bench::run_scenario(&s, &[PolicyKind::Predictive]).expect("runs");
    let p = &r.results[0];
    assert!(
        livemig_sim::bench::meets_targets(p),
        "{:?}",
        p.report.summary
    );
    // Round 1 comes from the sample, not B_min.
    assert!(p.report.rounds[0].cap_bytes_per_s > 10.0 * s.cfg.min_bandwidth);
    // Without a sample, round 1 falls back to B_min like the method.
    let no_sample = ScenarioSpec {
        sample: Some("0s".into()),
        ..spec
    }
    .resolve(None)
    .expect("valid");
    let mut pol = PolicyKind::Predictive
        .build(no_sample.cfg.clone())
        .expect("valid");
    let rep = simulate(pol.as_mut(), no_sample.setup()).expect("runs");
    assert_eq!(rep.rounds[0].cap_bytes_per_s, s.cfg.min_bandwidth);
}

/// The simulator keeps no round sequence of its own: replaying its measured rounds through a
/// fresh pilot under the same policy gives the very same records (caps, decisions, audits),
/// for every policy on every scenario of the default suite (without the pre-round sample,
/// which the report does not carry).
#[test]
fn a_replay_through_the_pilot_reproduces_every_simulated_round() {
    let suite =
        parse_suite(Path::new("suite.toml"), livemig_sim::bench::DEFAULT_SUITE).expect("valid");
    for scenario in suite {
        let mut sc = scenario.clone();
        sc.link.sample_s = 0.0;
        for kind in PolicyKind::ALL {
            let mut policy = kind.build(sc.cfg.clone()).expect("policy");
            let report = simulate(policy.as_mut(), sc.setup()).expect("simulates");
            let replayed = livemig_policy::pilot::replay(
                kind.build(sc.cfg.clone()).expect("policy"),
                None,
                &report,
            )
            .expect("replays");
            assert_eq!(replayed, report.rounds, "{} under {kind}", sc.name);
        }
    }
}

/// A grant bounds every round's cap and the stop-and-copy, and the records keep the policy's
/// wish beside it.
#[test]
fn a_grant_bounds_every_simulated_cap_and_the_wish_is_kept() {
    let suite =
        parse_suite(Path::new("suite.toml"), livemig_sim::bench::DEFAULT_SUITE).expect("valid");
    let sc = &suite[0];
    let mut free = PolicyKind::DirtyFactor
        .build(sc.cfg.clone())
        .expect("policy");
    let free = simulate(free.as_mut(), sc.setup()).expect("simulates");
    let grant = free.rounds[0].cap_bytes_per_s / 2.0;
    let mut p = PolicyKind::DirtyFactor
        .build(sc.cfg.clone())
        .expect("policy");
    let r = livemig_sim::simulate_granted(p.as_mut(), sc.setup(), Some(grant)).expect("simulates");
    for rec in &r.rounds {
        assert!(rec.cap_bytes_per_s <= grant, "round {}", rec.round);
        assert!(rec.wish_bytes_per_s >= rec.cap_bytes_per_s);
    }
    assert!(r
        .rounds
        .iter()
        .any(|x| x.wish_bytes_per_s > x.cap_bytes_per_s));
    assert!(
        r.summary.peak_bytes_per_s <= grant * (1.0 + 1e-9),
        "the stop-and-copy too"
    );
}

/// The simulator emits the one event type too: every round's start and record, in order, and
/// the stop-and-copy and hand-over, matching its report.
#[test]
fn the_simulator_emits_every_round_as_events() {
    use livemig_policy::Event;
    let suite =
        parse_suite(Path::new("suite.toml"), livemig_sim::bench::DEFAULT_SUITE).expect("valid");
    let sc = &suite[0];
    let mut p = PolicyKind::Predictive
        .build(sc.cfg.clone())
        .expect("policy");
    let mut events = Vec::new();
    let r = livemig_sim::simulate_observed(p.as_mut(), sc.setup(), None, &mut |e| {
        events.push(e.clone())
    })
    .expect("simulates");
    assert!(matches!(events.first(), Some(Event::Started { .. })));
    let records: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::RoundEnded { record } => Some((**record).clone()),
            _ => None,
        })
        .collect();
    assert_eq!(records, r.rounds);
    let starts = events
        .iter()
        .filter(|e| matches!(e, Event::RoundStarted { .. }))
        .count();
    assert_eq!(starts, r.rounds.len());
    assert!(matches!(
        events.last(),
        Some(Event::HandedOver { downtime_s }) if *downtime_s == r.summary.downtime_s
    ));
}
