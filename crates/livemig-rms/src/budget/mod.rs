//! The shared migration-bandwidth budget: which waiting migrations start and what rate each
//! running one is granted. Pure: no I/O, no clock (`now` is a parameter); `docs/budget.md`
//! states the rule and argues for it.
//!
//! Map of the module:
//! - this file: the inputs ([`Budget`], [`Demand`], [`Scheme`]), the output ([`Plan`]), the
//!   errors, validation and the one entry point [`plan`];
//! - [`need`]: the lowest rate at which a migration still converges (from the method);
//! - [`allocate`]: minimums first, then the rest shortest-remaining-first, within every limit;
//! - [`admission`]: the queue (priority, then age, with aging) and admission by prediction;
//! - [`baselines`]: `sequential`, `fixed-slots` and `unlimited`, behind the same entry point.

pub mod admission;
pub mod allocate;
pub mod baselines;
pub mod need;

use std::collections::{BTreeMap, BTreeSet};

use livemig_policy::predictive::growth::Growth;
use livemig_policy::PolicyConfig;
use serde::{Deserialize, Serialize};

use crate::migration::MigrationId;

pub use admission::{effective_priority, DEFAULT_AGING_PER_S};
pub use need::{closed_form, from_sample, minimum, Need};

/// The migration network's capacity: a rate for the shared uplink and, optionally, a limit
/// for each host's NIC (what migrations out of and into the host may use together).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// The shared uplink's budget for migration traffic (bytes/s, > 0).
    pub uplink_bytes_per_s: f64,
    /// Per-host NIC limits (bytes/s, > 0) by host name.
    #[serde(default)]
    pub host_nic_bytes_per_s: BTreeMap<String, f64>,
    /// The NIC limit of a host not in `host_nic_bytes_per_s`; `None`: such hosts are bounded
    /// by the uplink only.
    #[serde(default)]
    pub default_host_nic_bytes_per_s: Option<f64>,
}

impl Budget {
    /// A budget of `uplink` bytes/s with no NIC limits.
    pub fn uplink(uplink: f64) -> Budget {
        Budget {
            uplink_bytes_per_s: uplink,
            host_nic_bytes_per_s: BTreeMap::new(),
            default_host_nic_bytes_per_s: None,
        }
    }

    /// The same budget with `host`'s NIC limited to `limit` bytes/s.
    pub fn with_host(mut self, host: &str, limit: f64) -> Budget {
        self.host_nic_bytes_per_s.insert(host.to_owned(), limit);
        self
    }

    /// The NIC limit of `host`, if it has one.
    pub fn host_limit(&self, host: &str) -> Option<f64> {
        self.host_nic_bytes_per_s
            .get(host)
            .copied()
            .or(self.default_host_nic_bytes_per_s)
    }
}

/// What the allocator knows of one migration, running or waiting. A waiting migration has
/// `remaining_bytes = memory_bytes` and `rounds_left = N`; a running one what its last
/// finished round left and `N - k`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Demand {
    pub id: MigrationId,
    /// The host the VM leaves.
    pub source: String,
    /// The host the VM goes to.
    pub target: String,
    /// M: the guest's memory (bytes, > 0).
    pub memory_bytes: f64,
    /// The bytes the next round must send (M before round 1; D_k after round k).
    pub remaining_bytes: f64,
    /// The dirtying-rate estimate P (bytes/s, >= 0): the steepest line through the origin
    /// and an observation, `max D / t` over the pre-migration sample's points
    /// ([`need::from_sample`]) and, once running, the finished rounds' `(t_k, D_k)`. Not the
    /// mean of the P_k: distinct dirtying saturates, so later, shorter rounds dirty faster
    /// than the mean says (`docs/predictive.md`).
    pub dirty_rate_bytes_per_s: f64,
    /// The predictive policy's growth estimate, when there is one; it replaces the constant
    /// rate in [`need::minimum`].
    #[serde(default)]
    pub growth: Option<Growth>,
    /// The pre-copy rounds still allowed (N - k).
    pub rounds_left: u32,
    /// h: pre-copy stops when at most this much is left (bytes, > 0).
    pub stop_bytes: f64,
    /// B_min: the policy's lowest cap; no grant below it is planned (bytes/s, > 0).
    pub floor_bytes_per_s: f64,
    /// B_max: the policy's highest cap, beyond which a grant would go unused; `None`: none.
    #[serde(default)]
    pub ceiling_bytes_per_s: Option<f64>,
    /// Higher first. Bounded (a `u8`), which is what makes aging end every wait.
    #[serde(default)]
    pub priority: u8,
    /// When it was submitted (seconds, the same clock as `now`).
    pub submitted_at: f64,
}

impl Demand {
    /// A migration about to start: all of `memory_bytes` to send, `rounds` rounds allowed,
    /// priority 0, submitted at 0, the policy's default B_min and no ceiling.
    pub fn new(
        id: u64,
        source: &str,
        target: &str,
        memory_bytes: f64,
        dirty_rate_bytes_per_s: f64,
        rounds: u32,
        stop_bytes: f64,
    ) -> Demand {
        Demand {
            id: MigrationId(id),
            source: source.to_owned(),
            target: target.to_owned(),
            memory_bytes,
            remaining_bytes: memory_bytes,
            dirty_rate_bytes_per_s,
            growth: None,
            rounds_left: rounds,
            stop_bytes,
            floor_bytes_per_s: PolicyConfig::default().min_bandwidth,
            ceiling_bytes_per_s: None,
            priority: 0,
            submitted_at: 0.0,
        }
    }

    /// With `remaining` bytes and `rounds` rounds left.
    pub fn progressed(mut self, remaining: f64, rounds: u32) -> Demand {
        self.remaining_bytes = remaining;
        self.rounds_left = rounds;
        self
    }

    /// With B_min = `floor` and B_max = `ceiling`.
    pub fn bounds(mut self, floor: f64, ceiling: Option<f64>) -> Demand {
        self.floor_bytes_per_s = floor;
        self.ceiling_bytes_per_s = ceiling;
        self
    }

    /// With `priority`, submitted at `at`.
    pub fn queued(mut self, priority: u8, at: f64) -> Demand {
        self.priority = priority;
        self.submitted_at = at;
        self
    }

    /// With a growth estimate.
    pub fn with_growth(mut self, growth: Growth) -> Demand {
        self.growth = Some(growth);
        self
    }
}

/// The allocation scheme: the budget of this module or one of the baselines.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "scheme")]
pub enum Scheme {
    /// Admission by prediction, minimums first, the rest shortest-remaining-first.
    Budget {
        /// Priority levels a waiting migration gains per second of waiting (> 0).
        aging_per_s: f64,
        /// Whether a migration behind a head that does not fit may start in what the head
        /// cannot use (never in what the head is promised).
        backfill: bool,
    },
    /// One migration at a time per source host, no cap (Nova's default).
    Sequential,
    /// At most `per_source` outbound per host and `total` in all, each capped at
    /// uplink / `total` (KubeVirt, oVirt).
    FixedSlots { per_source: u32, total: u32 },
    /// Everything starts at once, no cap.
    Unlimited,
}

impl Scheme {
    /// The budget with the default aging and backfill on.
    pub const BUDGET: Scheme = Scheme::Budget {
        aging_per_s: DEFAULT_AGING_PER_S,
        backfill: true,
    };
    /// The fixed-slots baseline with KubeVirt's defaults: 2 outbound per host, 5 in all.
    pub const FIXED_SLOTS: Scheme = Scheme::FixedSlots {
        per_source: 2,
        total: 5,
    };
}

/// A limit that grants share.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Constraint {
    /// The shared uplink.
    Uplink,
    /// A host's NIC: migrations out of and into it.
    Host(String),
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Constraint::Uplink => write!(f, "the uplink"),
            Constraint::Host(h) => write!(f, "host {h}'s NIC"),
        }
    }
}

/// The rate one running (or just admitted) migration may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub id: MigrationId,
    /// The cap its policy's caps are bounded by; `None`: no cap.
    pub bytes_per_s: Option<f64>,
    /// The lowest rate that converges under its current estimate (the budget only).
    pub minimum_bytes_per_s: Option<f64>,
    /// Whether that estimate converges within what it can get (always true for the
    /// baselines, which do not predict).
    pub converges: bool,
}

/// Why a migration waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Reason {
    /// Its minimum does not fit beside the minimums of those running.
    NoRoom {
        constraint: Constraint,
        need_bytes_per_s: f64,
        free_bytes_per_s: f64,
    },
    /// It would fit, but only in what is promised to the head of the queue.
    Reserved {
        head: MigrationId,
        constraint: Constraint,
    },
    /// Backfill is off and the head of the queue waits.
    BehindHead { head: MigrationId },
    /// Under its estimate no rate up to what it could ever get (its ceiling, the uplink and
    /// its hosts' NICs, alone) converges, or its floor exceeds that. It does not hold the
    /// queue; it is re-examined at every plan (its estimate may change).
    CannotConverge { reach_bytes_per_s: f64 },
    /// `sequential`: its source already has a migration running.
    SourceBusy { host: String, running: MigrationId },
    /// `fixed-slots`: its source's outbound slots are taken.
    HostSlots { host: String, limit: u32 },
    /// `fixed-slots`: all slots are taken.
    TotalSlots { limit: u32 },
}

/// A waiting migration, its place and why it waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    pub id: MigrationId,
    /// 1 for the head of the queue.
    pub position: usize,
    /// Priority plus aging, what the queue is ordered by.
    pub effective_priority: f64,
    pub reason: Reason,
}

/// The answer of [`plan`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Plan {
    /// One per running and admitted migration, by id.
    pub grants: Vec<Grant>,
    /// The waiting migrations that start now, in queue order.
    pub admitted: Vec<MigrationId>,
    /// The others, in queue order.
    pub waiting: Vec<Waiting>,
    /// Limits the running migrations' minimums alone exceed (their estimates grew): their
    /// minimums are scaled down in proportion there, and nothing new starts across them.
    pub overcommitted: Vec<Constraint>,
}

impl Plan {
    /// The grant of `id`, if it runs.
    pub fn grant(&self, id: MigrationId) -> Option<&Grant> {
        self.grants.iter().find(|g| g.id == id)
    }
}

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

/// Plans one step: which of `waiting` start, the grant of every running and admitted
/// migration, and why the others wait. Call it whenever a migration starts, ends, finishes
/// a round or asks for more, with the current estimates.
pub fn plan(
    scheme: &Scheme,
    budget: &Budget,
    running: &[Demand],
    waiting: &[Demand],
    now: f64,
) -> Result<Plan, BudgetError> {
    validate(scheme, budget, running, waiting, now)?;
    let queue = admission::order(scheme, waiting, now);
    Ok(match *scheme {
        Scheme::Budget { backfill, .. } => admission::budget(budget, running, &queue, backfill),
        Scheme::Sequential => baselines::sequential(running, &queue),
        Scheme::FixedSlots { per_source, total } => {
            baselines::fixed_slots(budget, per_source, total, running, &queue)
        }
        Scheme::Unlimited => baselines::unlimited(running, &queue),
    })
}

fn validate(
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
    use super::*;

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
        ];
        for (d, words) in cases {
            let e = plan(&Scheme::BUDGET, &b, &[], &[d], 0.0).expect_err(words);
            assert!(e.to_string().contains(words), "{e} lacks {words}");
        }
        let e = plan(&Scheme::Unlimited, &b, &[demand(1)], &[demand(1)], 0.0);
        assert_eq!(e, Err(BudgetError::Duplicate(MigrationId(1))));
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
