//! The predictive policy's estimator and planner (issue 5).

use livemig_policy::predictive::growth::{Growth, Point};
use livemig_policy::predictive::plan::{self, Plan, TOLERANCE};
use livemig_policy::{DirtySample, Policy, PolicyConfig, PolicyKind, RoundStats, StopReason};
use proptest::prelude::*;

const MIB: f64 = 1024.0 * 1024.0;

/// Deterministic multiplicative noise in [-amp, amp].
fn jitter(i: usize, amp: f64) -> f64 {
    let x = ((i as f64 + 1.0) * 12.9898).sin() * 43_758.545_3;
    1.0 + amp * (2.0 * (x - x.floor()) - 1.0)
}

fn truth(w: f64, tau: f64, c: f64) -> Growth {
    Growth {
        working_set_bytes: w,
        tau_s: tau,
        linear_bytes_per_s: c,
        exponent: 1.0,
        memory_bytes: 1e15,
        residual: 0.0,
    }
}

#[test]
fn estimator_recovers_a_hot_set_curve_from_noisy_rounds() {
    let t = truth(400.0 * MIB, 1.5, 30.0 * MIB);
    // A 1 s sample and round durations shaped like a migration's, with +-3 % noise.
    let times = [
        0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 12.4, 2.3, 1.18, 0.78, 0.57, 0.44, 0.35,
    ];
    let pts: Vec<Point> = times
        .iter()
        .enumerate()
        .map(|(i, &s)| Point {
            t_s: s,
            dirty_bytes: t.predict(s) * jitter(i, 0.03),
            weight: 1.0,
        })
        .collect();
    let g = Growth::fit(&pts, 1e15).expect("fits");
    assert!(
        (g.working_set_bytes / t.working_set_bytes - 1.0).abs() < 0.1,
        "{g:?}"
    );
    assert!((g.tau_s / t.tau_s - 1.0).abs() < 0.15, "{g:?}");
    assert!(
        (g.linear_bytes_per_s / t.linear_bytes_per_s - 1.0).abs() < 0.15,
        "{g:?}"
    );
    assert!(g.residual > 0.0 && g.residual < 0.05, "{g:?}");
}

proptest! {
    #[test]
    fn estimator_predicts_within_noise_over_the_observed_range(
        w in 1.0e7f64..1.0e10,
        tau in 0.05f64..50.0,
        c in 0.0f64..1.0e9,
        noise in 0.0f64..0.03,
    ) {
        let t = truth(w, tau, c);
        let times: Vec<f64> = (0..14).map(|i| tau * 0.05 * 1.6f64.powi(i)).collect();
        let pts: Vec<Point> = times.iter().enumerate().map(|(i, &s)| Point {
            t_s: s,
            dirty_bytes: t.predict(s) * jitter(i, noise),
            weight: 1.0,
        }).collect();
        let g = Growth::fit(&pts, 1e15).expect("fits");
        for &s in &times {
            let rel = g.predict(s) / t.predict(s) - 1.0;
            prop_assert!(rel.abs() < 0.08 + 2.0 * noise, "t={s} rel={rel} fit={g:?}");
        }
    }

    #[test]
    fn planner_choice_meets_h_and_no_lower_bandwidth_does(
        w in 0.0f64..2.0e9,
        tau in 0.05f64..50.0,
        c in 1.0e5f64..5.0e8,
        beta in 0.3f64..1.0,
        remaining in 1.0e8f64..1.0e10,
        rounds in 1u32..15,
        h in 1.0e6f64..2.0e8,
    ) {
        let g = Growth { exponent: beta, memory_bytes: 1e11, ..truth(w, tau, c) };
        let (min, max) = (1.0e6, 2.0e9);
        match plan::lowest(&g, remaining, rounds, h, min, max) {
            Plan::Converges { bandwidth, rounds: r } => {
                prop_assert!((min..=max).contains(&bandwidth));
                prop_assert_eq!(plan::rounds_to_reach(&g, remaining, rounds, h, bandwidth), Some(r));
                prop_assert!(r <= rounds);
                if bandwidth > min {
                    let lower = bandwidth * (1.0 - 2.0 * TOLERANCE);
                    prop_assert_eq!(plan::rounds_to_reach(&g, remaining, rounds, h, lower), None);
                }
            }
            Plan::Infeasible { remaining: left } => {
                prop_assert_eq!(plan::rounds_to_reach(&g, remaining, rounds, h, max), None);
                prop_assert!(left > h);
            }
        }
    }
}

fn cfg() -> PolicyConfig {
    PolicyConfig {
        memory_bytes: 4096.0 * MIB,
        ..PolicyConfig::default()
    }
}

#[test]
fn round_one_comes_from_the_sample_not_b_min() {
    let t = truth(400.0 * MIB, 1.5, 30.0 * MIB);
    let mut p = PolicyKind::Predictive.build(cfg()).expect("valid");
    assert_eq!(
        p.first_cap(),
        cfg().min_bandwidth,
        "no sample: B_min like the method"
    );
    p.observe_sample(&DirtySample {
        points: (1..=10)
            .map(|i| (0.1 * f64::from(i), t.predict(0.1 * f64::from(i))))
            .collect(),
        ..DirtySample::default()
    });
    let b1 = p.first_cap();
    assert!(b1 > 10.0 * cfg().min_bandwidth, "{b1}");
    // The plan from the sample reaches h under the sample's own curve.
    let g = Growth::fit(
        &(1..=10)
            .map(|i| Point {
                t_s: 0.1 * f64::from(i),
                dirty_bytes: t.predict(0.1 * f64::from(i)),
                weight: 1.0,
            })
            .collect::<Vec<_>>(),
        cfg().memory_bytes,
    )
    .expect("fits");
    assert!(plan::rounds_to_reach(&g, cfg().memory_bytes, 10, cfg().stop_remaining, b1).is_some());
}

#[test]
fn infeasibility_is_reported_at_once_and_pre_copy_ends_when_rounds_stop_helping() {
    // A 2 GiB working set dirtied in well under a second: no bandwidth up to B_max gets it
    // under 64 MiB.
    let t = truth(2048.0 * MIB, 0.2, 0.0);
    let mut p: Box<dyn Policy> = PolicyKind::Predictive.build(cfg()).expect("valid");
    p.observe_sample(&DirtySample {
        points: (1..=10)
            .map(|i| (0.05 * f64::from(i), t.predict(0.05 * f64::from(i))))
            .collect(),
        ..DirtySample::default()
    });
    let mut cap = p.first_cap();
    assert_eq!(cap, cfg().max_bandwidth);
    let mut to_send = cfg().memory_bytes;
    for k in 1..=10 {
        let dur = to_send / cap;
        let dirty = t.predict(dur);
        let d = p
            .after_round(&RoundStats {
                round: k,
                cap_bytes_per_s: cap,
                bytes_sent: to_send,
                duration_s: dur,
                dirty_bytes: dirty,
            })
            .expect("valid");
        assert!(d.audit.infeasible, "round {k} must say so");
        match d.next_cap() {
            Some(next) => {
                cap = next;
                to_send = dirty;
            }
            None => {
                assert_eq!(d.stop_reason(), Some(StopReason::Infeasible));
                assert!(k < 10, "ended before spending all N rounds");
                return;
            }
        }
    }
    panic!("pre-copy should have ended early");
}
