//! The shared migration-bandwidth budget: which waiting migrations start and what rate each
//! running one is granted. Pure: no I/O, no clock (`now` is a parameter); `docs/budget.md`
//! states the rule and argues for it.
//!
//! Map of the module:
//! - this file: the inputs ([`Budget`], [`Demand`], [`Scheme`]), the output ([`Plan`]) and
//!   the one entry point [`plan`];
//! - [`validate`]: [`BudgetError`], every input checked before anything is computed;
//! - [`need`]: the lowest rate at which a migration still converges (from the method);
//! - [`allocate`]: minimums first, then the rest shortest-remaining-first, within every limit;
//! - [`admission`]: the queue (priority, then age, with aging) and admission by prediction;
//! - [`baselines`]: `sequential`, `fixed-slots` and `unlimited`, behind the same entry point.

pub mod admission;
pub mod allocate;
pub mod baselines;
pub mod need;
pub mod validate;

use std::collections::BTreeMap;

use livemig_policy::predictive::growth::Growth;
use livemig_policy::PolicyConfig;
use serde::{Deserialize, Serialize};

use crate::migration::MigrationId;

pub use admission::{effective_priority, DEFAULT_AGING_PER_S};
pub use need::{closed_form, from_sample, minimum, Need};
pub use validate::BudgetError;

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

impl Reason {
    /// The reason's kind, as the API names it.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::NoRoom { .. } => "no_room",
            Reason::Reserved { .. } => "reserved",
            Reason::BehindHead { .. } => "behind_head",
            Reason::CannotConverge { .. } => "cannot_converge",
            Reason::SourceBusy { .. } => "source_busy",
            Reason::HostSlots { .. } => "host_slots",
            Reason::TotalSlots { .. } => "total_slots",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: f64| b / (1024.0 * 1024.0);
        match self {
            Reason::NoRoom {
                constraint,
                need_bytes_per_s,
                free_bytes_per_s,
            } => write!(
                f,
                "needs {:.1} MiB/s to converge; {constraint} has {:.1} MiB/s free",
                mib(*need_bytes_per_s),
                mib(*free_bytes_per_s)
            ),
            Reason::Reserved { head, constraint } => write!(
                f,
                "would fit, but only in what {constraint} keeps for migration {head} (the head of the queue)"
            ),
            Reason::BehindHead { head } => write!(f, "behind migration {head}, the head of the queue"),
            Reason::CannotConverge { reach_bytes_per_s } => write!(
                f,
                "does not converge at any rate it could get (at most {:.1} MiB/s)",
                mib(*reach_bytes_per_s)
            ),
            Reason::SourceBusy { host, running } => {
                write!(f, "{host} already sends migration {running}")
            }
            Reason::HostSlots { host, limit } => {
                write!(f, "{host}'s {limit} outbound slots are taken")
            }
            Reason::TotalSlots { limit } => write!(f, "all {limit} migration slots are taken"),
        }
    }
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
    validate::all(scheme, budget, running, waiting, now)?;
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
