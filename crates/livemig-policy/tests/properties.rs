//! Property tests of the method's decision rule (issue 2, "What must hold").

use livemig_policy::{Branch, PolicyConfig, PolicyKind, RoundStats, StopReason};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    cfg: PolicyConfig,
    /// Per round: (dirty rate, effective/cap ratio, duration).
    rounds: Vec<(f64, f64, f64)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1.0e8f64..1.0e11,
        1u32..20,
        0.001f64..0.5,
        1.0e5f64..1.0e8,
        1.0f64..1000.0,
        prop::collection::vec((0.0f64..5.0e9, 0.2f64..1.0, 0.01f64..100.0), 1..25),
    )
        .prop_map(|(m, n, h_frac, bmin, spread, rounds)| Case {
            cfg: PolicyConfig {
                memory_bytes: m,
                page_size: 4096.0,
                max_rounds: n,
                stop_remaining: m * h_frac,
                min_bandwidth: bmin,
                max_bandwidth: bmin * spread,
                ..PolicyConfig::default()
            },
            rounds,
        })
}

proptest! {
    #[test]
    fn cap_in_bounds_and_direction_follows_the_comparator(c in case()) {
        let mut p = PolicyKind::DirtyFactor.build(c.cfg.clone()).expect("valid config");
        let t = p.threshold().expect("has T");
        let mut cap = p.first_cap();
        for (k, (rate, eff, dur)) in c.rounds.iter().enumerate() {
            let k = k as u32 + 1;
            let dirty = (rate * dur).max(c.cfg.stop_remaining * 1.01);
            let d = p.after_round(&RoundStats {
                round: k,
                cap_bytes_per_s: cap,
                bytes_sent: cap * eff * dur,
                duration_s: *dur,
                dirty_bytes: dirty,
            }).expect("valid stats");
            match d.next_cap() {
                None => {
                    // With remaining above h the only reason to stop is N, exactly at N.
                    prop_assert_eq!(k, c.cfg.max_rounds);
                    prop_assert_eq!(d.stop_reason(), Some(StopReason::RoundLimit));
                    break;
                }
                Some(next) => {
                    prop_assert!(k < c.cfg.max_rounds);
                    prop_assert!(next >= c.cfg.min_bandwidth && next <= c.cfg.max_bandwidth);
                    if d.audit.avg_factor > t {
                        prop_assert_eq!(d.audit.branch, Branch::Raise);
                        prop_assert!(next >= cap);
                    } else {
                        prop_assert_eq!(d.audit.branch, Branch::KeepOrLower);
                        prop_assert!(next <= cap);
                    }
                    cap = next;
                }
            }
        }
    }

    #[test]
    fn estimate_brings_the_average_to_the_threshold(c in case()) {
        let mut p = PolicyKind::DirtyFactor.build(c.cfg.clone()).expect("valid config");
        let t = p.threshold().expect("has T");
        let mut cap = p.first_cap();
        let mut checked = None;
        for (k, (rate, _eff, dur)) in c.rounds.iter().enumerate() {
            let k = k as u32 + 1;
            // When the previous decision took B* unclamped, make this round dirty at Phat at
            // exactly the cap: the average after it must be T.
            let (rate, expect_t) = match checked.take() {
                Some(phat) => (phat, true),
                None => (*rate, false),
            };
            let dirty = (rate * dur).max(c.cfg.stop_remaining * 1.01);
            let d = p.after_round(&RoundStats {
                round: k,
                cap_bytes_per_s: cap,
                bytes_sent: cap * dur,
                duration_s: *dur,
                dirty_bytes: dirty,
            }).expect("valid stats");
            if expect_t && rate * dur >= c.cfg.stop_remaining * 1.01 {
                prop_assert!((d.audit.avg_factor - t).abs() <= 1e-9 * t.max(1.0),
                    "avg {} vs T {}", d.audit.avg_factor, t);
            }
            let Some(next) = d.next_cap() else { break };
            if let Some(est) = d.audit.estimate_bytes_per_s {
                if next == est && d.audit.note.is_none() {
                    checked = Some(d.audit.mean_dirty_rate_bytes_per_s);
                }
            }
            cap = next;
        }
    }

    #[test]
    fn stops_exactly_when_remaining_reaches_h(
        c in case(),
        at in 1u32..20,
    ) {
        let at = at.min(c.cfg.max_rounds);
        let mut p = PolicyKind::DirtyFactor.build(c.cfg.clone()).expect("valid config");
        let mut cap = p.first_cap();
        for k in 1..=at {
            let dirty = if k == at { c.cfg.stop_remaining } else { c.cfg.stop_remaining * 2.0 + 1.0 };
            let d = p.after_round(&RoundStats {
                round: k,
                cap_bytes_per_s: cap,
                bytes_sent: cap,
                duration_s: 1.0,
                dirty_bytes: dirty,
            }).expect("valid stats");
            if k == at {
                prop_assert_eq!(d.stop_reason(), Some(StopReason::RemainingBelowStopLevel));
            } else {
                cap = d.next_cap().expect("continues before h is reached");
            }
        }
    }
}

/// A worked instance of the formula-5 property, so it is checked even if the random cases
/// above rarely land in range: rho_1 = 0.9 > T, B* = 2.49 B_1, and a round 2 that dirties at
/// Phat under B* brings the average to exactly T.
#[test]
fn formula5_worked_example_reaches_t() {
    let cfg = PolicyConfig {
        memory_bytes: 1e9,
        max_rounds: 10,
        stop_remaining: 1e7,
        min_bandwidth: 1e6,
        max_bandwidth: 1e9,
        ..PolicyConfig::default()
    };
    let mut p = PolicyKind::DirtyFactor.build(cfg).expect("valid");
    let t = p.threshold().expect("T");
    let d1 = p
        .after_round(&RoundStats {
            round: 1,
            cap_bytes_per_s: 1e6,
            bytes_sent: 1e9,
            duration_s: 1000.0,
            dirty_bytes: 9e8,
        })
        .expect("valid");
    assert_eq!(d1.audit.branch, Branch::Raise);
    let b2 = d1.next_cap().expect("continues");
    assert!((b2 - 0.9e6 / (2.0 * t - 0.9)).abs() < 1e-6);
    let phat = d1.audit.mean_dirty_rate_bytes_per_s;
    let d2 = p
        .after_round(&RoundStats {
            round: 2,
            cap_bytes_per_s: b2,
            bytes_sent: b2 * 10.0,
            duration_s: 10.0,
            dirty_bytes: phat * 10.0,
        })
        .expect("valid");
    assert!(
        (d2.audit.avg_factor - t).abs() < 1e-12,
        "{} vs {t}",
        d2.audit.avg_factor
    );
}
