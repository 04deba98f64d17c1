//! Every input checked before anything is computed: finite numbers, positive rates and
//! sizes, distinct hosts, distinct ids. The allocator never panics on input; it refuses it.

use std::collections::BTreeSet;

use super::{Budget, Demand, Scheme};
use crate::migration::MigrationId;

/// Input the allocator refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    #[error("the uplink budget must be a finite rate above zero, not {0}")]
    Uplink(f64),
    #[error("the NIC limit of host {host} must be a finite rate above zero, not {value}")]
    HostLimit { host: String, value: f64 },
    #[error("the default NIC limit must be a finite rate above zero, not {0}")]
    DefaultHostLimit(f64),
    #[error("migration {id}: {field} must be {expected}, not {value}")]
    Demand {
        id: MigrationId,
        field: &'static str,
        expected: &'static str,
        value: f64,
    },
    #[error("migration {id}: {remaining} bytes remaining exceed its memory of {memory} bytes")]
    RemainingAboveMemory {
        id: MigrationId,
        remaining: f64,
        memory: f64,
    },
    #[error("migration {id}: its ceiling {ceiling} B/s is below its floor {floor} B/s")]
    CeilingBelowFloor {
        id: MigrationId,
        floor: f64,
        ceiling: f64,
    },
    #[error("migration {id}: a source and a target host are needed")]
    NoHost { id: MigrationId },
    #[error("migration {id}: source and target are both {host}")]
    SameHost { id: MigrationId, host: String },
    #[error("migration {0} is listed twice")]
    Duplicate(MigrationId),
    #[error("the time must be finite, not {0}")]
    Now(f64),
    #[error("the scheme's {field} must be {expected}, not {value}")]
    Scheme {
        field: &'static str,
        expected: &'static str,
        value: f64,
    },
}

impl BudgetError {
    /// The migration whose demand is at fault, when one is (the rest of the call is fine).
    pub fn culprit(&self) -> Option<MigrationId> {
        match self {
            BudgetError::Demand { id, .. }
            | BudgetError::RemainingAboveMemory { id, .. }
            | BudgetError::CeilingBelowFloor { id, .. }
            | BudgetError::NoHost { id }
            | BudgetError::SameHost { id, .. } => Some(*id),
            BudgetError::Duplicate(id) => Some(*id),
            _ => None,
        }
    }
}

/// Checks a whole call of [`super::plan`].
pub fn all(
    scheme: &Scheme,
    budget: &Budget,
    running: &[Demand],
    waiting: &[Demand],
    now: f64,
) -> Result<(), BudgetError> {
    if !positive(budget.uplink_bytes_per_s) {
        return Err(BudgetError::Uplink(budget.uplink_bytes_per_s));
    }
    for (host, &value) in &budget.host_nic_bytes_per_s {
        if !positive(value) {
            return Err(BudgetError::HostLimit {
                host: host.clone(),
                value,
            });
        }
    }
    if let Some(v) = budget
        .default_host_nic_bytes_per_s
        .filter(|v| !positive(*v))
    {
        return Err(BudgetError::DefaultHostLimit(v));
    }
    if !now.is_finite() {
        return Err(BudgetError::Now(now));
    }
    match *scheme {
        Scheme::Budget { aging_per_s, .. } if !positive(aging_per_s) => {
            return Err(BudgetError::Scheme {
                field: "aging rate",
                expected: "finite and above zero",
                value: aging_per_s,
            })
        }
        Scheme::FixedSlots { per_source, total } if per_source == 0 || total == 0 => {
            return Err(BudgetError::Scheme {
                field: "slot counts",
                expected: "at least 1",
                value: 0.0,
            })
        }
        _ => {}
    }
    let mut seen = BTreeSet::new();
    for d in running.iter().chain(waiting) {
        if !seen.insert(d.id) {
            return Err(BudgetError::Duplicate(d.id));
        }
        validate_demand(d)?;
    }
    Ok(())
}

/// The most rounds left a demand may carry: far above any policy's round limit, low enough
/// that the planner's simulation of them stays cheap.
pub const MAX_ROUNDS_LEFT: u32 = 10_000;

fn positive(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

fn validate_demand(d: &Demand) -> Result<(), BudgetError> {
    let bad = |field, expected, value| BudgetError::Demand {
        id: d.id,
        field,
        expected,
        value,
    };
    const POS: &str = "finite and above zero";
    const NONNEG: &str = "finite and at least zero";
    if d.source.is_empty() || d.target.is_empty() {
        return Err(BudgetError::NoHost { id: d.id });
    }
    if d.source == d.target {
        return Err(BudgetError::SameHost {
            id: d.id,
            host: d.source.clone(),
        });
    }
    let checks: [(&'static str, f64, bool); 5] = [
        ("the memory size", d.memory_bytes, true),
        ("the remaining bytes", d.remaining_bytes, false),
        ("the dirty rate", d.dirty_rate_bytes_per_s, false),
        ("the stop level h", d.stop_bytes, true),
        ("the floor", d.floor_bytes_per_s, true),
    ];
    for (field, value, strictly) in checks {
        let ok = value.is_finite() && if strictly { value > 0.0 } else { value >= 0.0 };
        if !ok {
            return Err(bad(field, if strictly { POS } else { NONNEG }, value));
        }
    }
    if !d.submitted_at.is_finite() {
        return Err(bad("the submission time", "finite", d.submitted_at));
    }
    // The predictive planner's work grows with the rounds left (it simulates them).
    if d.rounds_left > MAX_ROUNDS_LEFT {
        return Err(bad(
            "the rounds left",
            "at most 10000",
            f64::from(d.rounds_left),
        ));
    }
    if d.remaining_bytes > d.memory_bytes {
        return Err(BudgetError::RemainingAboveMemory {
            id: d.id,
            remaining: d.remaining_bytes,
            memory: d.memory_bytes,
        });
    }
    if let Some(c) = d.ceiling_bytes_per_s {
        if !positive(c) {
            return Err(bad("the ceiling", POS, c));
        }
        if c < d.floor_bytes_per_s {
            return Err(BudgetError::CeilingBelowFloor {
                id: d.id,
                floor: d.floor_bytes_per_s,
                ceiling: c,
            });
        }
    }
    if let Some(g) = &d.growth {
        let fields: [(&'static str, f64, bool); 6] = [
            ("the growth's working set", g.working_set_bytes, false),
            ("the growth's time constant", g.tau_s, true),
            ("the growth's rate", g.linear_bytes_per_s, false),
            ("the growth's exponent", g.exponent, true),
            ("the growth's memory", g.memory_bytes, true),
            ("the growth's residual", g.residual, false),
        ];
        for (field, value, strictly) in fields {
            let ok = value.is_finite() && if strictly { value > 0.0 } else { value >= 0.0 };
            if !ok {
                return Err(bad(field, if strictly { POS } else { NONNEG }, value));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::plan;
    use super::*;
    use livemig_policy::predictive::growth::Growth;

    const MIB: f64 = 1024.0 * 1024.0;

    fn demand(id: u64) -> Demand {
        Demand::new(id, "a", "b", 1024.0 * MIB, 10.0 * MIB, 10, 10.0 * MIB)
    }

    #[test]
    fn refuses_bad_budgets() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let r = plan(&Scheme::BUDGET, &Budget::uplink(bad), &[], &[], 0.0);
            assert!(matches!(r, Err(BudgetError::Uplink(_))), "{r:?}");
        }
        let b = Budget::uplink(1.0).with_host("a", -2.0);
        assert!(matches!(
            plan(&Scheme::BUDGET, &b, &[], &[], 0.0),
            Err(BudgetError::HostLimit { .. })
        ));
        let b = Budget {
            default_host_nic_bytes_per_s: Some(0.0),
            ..Budget::uplink(1.0)
        };
        assert!(matches!(
            plan(&Scheme::BUDGET, &b, &[], &[], 0.0),
            Err(BudgetError::DefaultHostLimit(_))
        ));
        assert!(matches!(
            plan(&Scheme::BUDGET, &Budget::uplink(1.0), &[], &[], f64::NAN),
            Err(BudgetError::Now(_))
        ));
    }

    #[test]
    fn refuses_bad_demands() {
        let b = Budget::uplink(100.0 * MIB);
        let cases: Vec<(Demand, &str)> = vec![
            (
                Demand {
                    dirty_rate_bytes_per_s: f64::NAN,
                    ..demand(1)
                },
                "dirty rate",
            ),
            (
                Demand {
                    dirty_rate_bytes_per_s: -1.0,
                    ..demand(1)
                },
                "dirty rate",
            ),
            (
                Demand {
                    stop_bytes: 0.0,
                    ..demand(1)
                },
                "stop level",
            ),
            (demand(1).bounds(0.0, None), "floor"),
            (demand(1).bounds(10.0, Some(5.0)), "ceiling"),
            (demand(1).queued(0, f64::INFINITY), "submission"),
            (demand(1).progressed(2048.0 * MIB, 3), "exceed its memory"),
            (
                Demand {
                    target: "a".into(),
                    ..demand(1)
                },
                "both a",
            ),
            (
                Demand {
                    source: String::new(),
                    ..demand(1)
                },
                "source and a target",
            ),
            (
                demand(1).with_growth(Growth {
                    tau_s: f64::NAN,
                    ..Growth::linear(1.0, 1.0)
                }),
                "growth",
            ),
            (
                Demand {
                    rounds_left: MAX_ROUNDS_LEFT + 1,
                    ..demand(1)
                },
                "rounds left",
            ),
        ];
        for (d, words) in cases {
            let e = plan(&Scheme::BUDGET, &b, &[], &[d], 0.0).expect_err(words);
            assert!(e.to_string().contains(words), "{e} lacks {words}");
        }
        let e = plan(&Scheme::Unlimited, &b, &[demand(1)], &[demand(1)], 0.0);
        assert_eq!(e, Err(BudgetError::Duplicate(MigrationId(1))));
    }

    #[test]
    fn the_most_rounds_left_with_a_growth_that_never_converges_plans_quickly() {
        // The planner simulates the rounds: at the cap it must still answer at once.
        let d = Demand {
            rounds_left: MAX_ROUNDS_LEFT,
            ..demand(1)
        }
        .with_growth(Growth::linear(1e12, 1e13));
        let started = std::time::Instant::now();
        let p = plan(
            &Scheme::BUDGET,
            &Budget::uplink(100.0 * MIB),
            &[],
            &[d],
            0.0,
        );
        assert!(p.is_ok(), "{p:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn refuses_bad_schemes() {
        let b = Budget::uplink(1.0);
        for s in [
            Scheme::Budget {
                aging_per_s: 0.0,
                backfill: true,
            },
            Scheme::Budget {
                aging_per_s: f64::NAN,
                backfill: false,
            },
            Scheme::FixedSlots {
                per_source: 0,
                total: 5,
            },
        ] {
            assert!(matches!(
                plan(&s, &b, &[], &[], 0.0),
                Err(BudgetError::Scheme { .. })
            ));
        }
    }

    #[test]
    fn nic_limits_fall_back_to_the_default() {
        let b = Budget {
            default_host_nic_bytes_per_s: Some(7.0),
            ..Budget::uplink(10.0).with_host("a", 3.0)
        };
        assert_eq!(b.host_limit("a"), Some(3.0));
        assert_eq!(b.host_limit("z"), Some(7.0));
        assert_eq!(Budget::uplink(1.0).host_limit("a"), None);
    }
}
