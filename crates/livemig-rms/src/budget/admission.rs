//! The queue and admission by prediction: waiting migrations in order of priority plus aging
//! (then age, then id); each starts when its minimum fits beside the minimums of those
//! running; the first that does not fit is the head and is promised its minimum on every
//! limit it crosses; those behind it may start only in what is left beside that promise.

use std::collections::BTreeMap;

use super::allocate::{self, Limits, Usage};
use super::need::{self, Need};
use super::{Budget, Constraint, Demand, Grant, Plan, Reason, Scheme, Waiting};
use crate::migration::MigrationId;

/// Priority levels a waiting migration gains per second: one a minute, so the lowest
/// priority (0) outranks a newly submitted highest one (255) after 255 minutes of waiting.
pub const DEFAULT_AGING_PER_S: f64 = 1.0 / 60.0;

/// `priority + aging_per_s x (now - submitted_at)`; a submission in the future counts as
/// submitted now.
pub fn effective_priority(d: &Demand, aging_per_s: f64, now: f64) -> f64 {
    f64::from(d.priority) + aging_per_s * (now - d.submitted_at).max(0.0)
}

/// A waiting migration in its place.
#[derive(Debug, Clone, Copy)]
pub struct Queued<'a> {
    pub demand: &'a Demand,
    pub effective_priority: f64,
}

/// `waiting` in queue order: highest effective priority first, then the earliest submitted,
/// then the lowest id. Every scheme uses this order (the baselines with the default aging),
/// so that they differ only in what they admit and grant.
pub fn order<'a>(scheme: &Scheme, waiting: &'a [Demand], now: f64) -> Vec<Queued<'a>> {
    let aging = match *scheme {
        Scheme::Budget { aging_per_s, .. } => aging_per_s,
        _ => DEFAULT_AGING_PER_S,
    };
    let mut q: Vec<Queued<'a>> = waiting
        .iter()
        .map(|d| Queued {
            demand: d,
            effective_priority: effective_priority(d, aging, now),
        })
        .collect();
    q.sort_by(|a, b| {
        b.effective_priority
            .total_cmp(&a.effective_priority)
            .then(a.demand.submitted_at.total_cmp(&b.demand.submitted_at))
            .then(a.demand.id.cmp(&b.demand.id))
    });
    q
}

/// The budget scheme: admission by prediction, then [`allocate::grants`].
pub fn budget(budget: &Budget, running: &[Demand], queue: &[Queued<'_>], backfill: bool) -> Plan {
    let limits = Limits::new(budget, running.iter().chain(queue.iter().map(|q| q.demand)));
    // A running migration whose estimate no longer converges keeps its floor as minimum: the
    // guarantee is for those that can converge, and it must not crowd them out.
    let running_min: Vec<(f64, bool)> = running
        .iter()
        .map(|d| {
            let reach = limits.reach(d);
            match need::minimum(d, reach) {
                Need::Converges(b) => (b, true),
                Need::Infeasible => (d.floor_bytes_per_s.min(reach), false),
            }
        })
        .collect();
    let mut used = limits.usage(running.iter().zip(&running_min).map(|(d, m)| (d, m.0)));
    let mut reserved = Usage::new();
    let mut head: Option<MigrationId> = None;
    let mut admitted: Vec<(&Demand, f64)> = Vec::new();
    let mut waiting: Vec<(Queued<'_>, Reason)> = Vec::new();
    for q in queue {
        let d = q.demand;
        let reach = limits.reach(d);
        let need = match need::minimum(d, reach) {
            Need::Converges(b) => b,
            Need::Infeasible => {
                waiting.push((
                    *q,
                    Reason::CannotConverge {
                        reach_bytes_per_s: reach,
                    },
                ));
                continue;
            }
        };
        let crossed = limits.crossed(d);
        let free = |c: &Constraint, used: &Usage| limits.free(used, c);
        let short_beside_running = crossed.iter().find(|c| free(c, &used) < need);
        let short_beside_promise = crossed
            .iter()
            .find(|c| free(c, &used) - reserved.get(*c).copied().unwrap_or(0.0) < need);
        let reason = match (head, short_beside_running, short_beside_promise) {
            (Some(h), _, _) if !backfill => Some(Reason::BehindHead { head: h }),
            (_, Some(c), _) => Some(Reason::NoRoom {
                constraint: c.clone(),
                need_bytes_per_s: need,
                free_bytes_per_s: free(c, &used),
            }),
            (Some(h), None, Some(c)) => Some(Reason::Reserved {
                head: h,
                constraint: c.clone(),
            }),
            // Fits beside the running and beside the promise (none without a head).
            (_, None, _) => None,
        };
        match reason {
            None => {
                for c in crossed {
                    *used.entry(c).or_insert(0.0) += need;
                }
                admitted.push((d, need));
            }
            Some(reason) => {
                if head.is_none() {
                    head = Some(d.id);
                    for c in crossed {
                        *reserved.entry(c).or_insert(0.0) += need;
                    }
                }
                waiting.push((*q, reason));
            }
        }
    }
    let active: Vec<(&Demand, f64)> = running
        .iter()
        .zip(&running_min)
        .map(|(d, m)| (d, m.0))
        .chain(admitted.iter().copied())
        .collect();
    let (granted, overcommitted) = allocate::grants(&limits, &active);
    let converges: BTreeMap<MigrationId, bool> = running
        .iter()
        .zip(&running_min)
        .map(|(d, m)| (d.id, m.1))
        .collect();
    let mut grants: Vec<Grant> = active
        .iter()
        .zip(granted)
        .map(|((d, min), g)| Grant {
            id: d.id,
            bytes_per_s: Some(g),
            minimum_bytes_per_s: Some(*min),
            converges: converges.get(&d.id).copied().unwrap_or(true),
        })
        .collect();
    grants.sort_by_key(|g| g.id);
    Plan {
        grants,
        admitted: admitted.iter().map(|(d, _)| d.id).collect(),
        waiting: numbered(waiting),
        overcommitted,
    }
}

/// The waiting migrations with their 1-based positions.
pub fn numbered(waiting: Vec<(Queued<'_>, Reason)>) -> Vec<Waiting> {
    waiting
        .into_iter()
        .enumerate()
        .map(|(i, (q, reason))| Waiting {
            id: q.demand.id,
            position: i + 1,
            effective_priority: q.effective_priority,
            reason,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::plan;
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;
    const GIB: f64 = 1024.0 * MIB;

    /// N = 20 rounds, h = M / 100: T = 0.01^(1/20) = 0.794, so the need is 1.259 P.
    fn d(id: u64, src: &str, dst: &str, memory: f64, rate_mib: f64) -> Demand {
        Demand::new(id, src, dst, memory, rate_mib * MIB, 20, memory / 100.0).bounds(MIB, None)
    }

    fn need_of(p_mib: f64) -> f64 {
        p_mib * MIB * 100f64.powf(1.0 / 20.0)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs()
    }

    #[test]
    fn worked_example_three_migrations_on_100_mib_per_s() {
        // Dirty rates 10, 40, 70 MiB/s need 12.59, 50.36 and 88.13 MiB/s.
        let budget = Budget::uplink(100.0 * MIB);
        let waiting = [
            d(1, "a", "x", 4.0 * GIB, 10.0).queued(0, 0.0),
            d(2, "b", "x", GIB, 40.0).queued(0, 1.0),
            d(3, "c", "x", 2.0 * GIB, 70.0).queued(0, 2.0),
        ];
        let p = plan(&Scheme::BUDGET, &budget, &[], &waiting, 10.0).expect("valid");
        assert_eq!(p.admitted, [MigrationId(1), MigrationId(2)]);
        assert_eq!(p.waiting.len(), 1);
        let w = &p.waiting[0];
        assert_eq!((w.id, w.position), (MigrationId(3), 1));
        let Reason::NoRoom {
            constraint,
            need_bytes_per_s,
            free_bytes_per_s,
        } = &w.reason
        else {
            panic!("{:?}", w.reason)
        };
        assert_eq!(*constraint, Constraint::Uplink);
        assert!(close(*need_bytes_per_s, need_of(70.0)));
        assert!(close(
            *free_bytes_per_s,
            100.0 * MIB - need_of(10.0) - need_of(40.0)
        ));
        // Minimums 12.59 and 50.36; the 37.05 left goes to the smaller migration (1 GiB).
        let g1 = p.grant(MigrationId(1)).expect("runs");
        let g2 = p.grant(MigrationId(2)).expect("runs");
        assert!(close(g1.bytes_per_s.expect("capped"), need_of(10.0)));
        assert!(close(
            g2.bytes_per_s.expect("capped"),
            100.0 * MIB - need_of(10.0)
        ));
        assert!(close(
            g2.minimum_bytes_per_s.expect("budget"),
            need_of(40.0)
        ));
        let sum: f64 = p.grants.iter().filter_map(|g| g.bytes_per_s).sum();
        assert!(sum <= 100.0 * MIB * (1.0 + 1e-12));
        assert!((g1.bytes_per_s.expect("capped") / MIB - 12.589).abs() < 1e-3);

        // When migration 2 ends, 3 still does not fit beside 1 (12.59 + 88.13 = 100.72);
        // when 1 ends too, it starts alone with all 100.
        let p = plan(&Scheme::BUDGET, &budget, &waiting[..1], &waiting[2..], 20.0).expect("valid");
        assert!(p.admitted.is_empty(), "{p:?}");
        let p = plan(&Scheme::BUDGET, &budget, &[], &waiting[2..], 30.0).expect("valid");
        assert_eq!(p.admitted, [MigrationId(3)]);
        assert_eq!(p.grants[0].bytes_per_s, Some(100.0 * MIB));
    }

    #[test]
    fn priority_first_then_age_and_aging_lifts_the_old() {
        let a = d(1, "a", "x", GIB, 1.0).queued(0, 0.0);
        let b = d(2, "b", "x", GIB, 1.0).queued(5, 100.0);
        let c = d(3, "c", "x", GIB, 1.0).queued(5, 50.0);
        let waiting = [a, b, c];
        let ids = |now: f64, aging: f64| -> Vec<u64> {
            order(
                &Scheme::Budget {
                    aging_per_s: aging,
                    backfill: true,
                },
                &waiting,
                now,
            )
            .iter()
            .map(|q| q.demand.id.0)
            .collect()
        };
        assert_eq!(ids(100.0, 1e-6), [3, 2, 1], "priority, then the older");
        // At 0.1 level/s, a (age 200 s at t = 200) has 20; c (150 s) 20; b (100 s) 15.
        assert_eq!(
            ids(200.0, 0.1),
            [1, 3, 2],
            "tie on 20: the earlier submitted"
        );
        assert!((effective_priority(&waiting[0], 0.1, -5.0) - 0.0).abs() < 1e-12);
    }

    #[test]
    fn the_head_is_promised_its_minimum_and_smaller_ones_backfill_only_beside_it() {
        // Host a's NIC (60) is busy with a running 50; the head (a -> x, needs 25) waits for
        // it. Behind it: one that would need the uplink room the head is promised, and one
        // small enough to fit beside that promise.
        let budget = Budget::uplink(100.0 * MIB).with_host("a", 60.0 * MIB);
        let running = [Demand {
            floor_bytes_per_s: 50.0 * MIB,
            ..d(1, "a", "y", GIB, 0.0)
        }];
        let head = Demand {
            floor_bytes_per_s: 25.0 * MIB,
            ..d(2, "a", "x", GIB, 0.0).queued(9, 0.0)
        };
        let big = Demand {
            floor_bytes_per_s: 40.0 * MIB,
            ..d(3, "b", "x", GIB, 0.0).queued(0, 0.0)
        };
        let small = Demand {
            floor_bytes_per_s: 20.0 * MIB,
            ..d(4, "c", "x", GIB, 0.0).queued(0, 1.0)
        };
        let waiting = [head, big, small];
        let p = plan(&Scheme::BUDGET, &budget, &running, &waiting, 5.0).expect("valid");
        assert_eq!(p.admitted, [MigrationId(4)]);
        let reasons: Vec<(u64, usize, &Reason)> = p
            .waiting
            .iter()
            .map(|w| (w.id.0, w.position, &w.reason))
            .collect();
        assert!(matches!(
            reasons[0],
            (2, 1, Reason::NoRoom { constraint: Constraint::Host(h), .. }) if h == "a"
        ));
        assert!(matches!(
            reasons[1],
            (
                3,
                2,
                Reason::Reserved {
                    head: MigrationId(2),
                    constraint: Constraint::Uplink
                }
            )
        ));
        // Without backfill, nothing passes the head.
        let off = Scheme::Budget {
            aging_per_s: DEFAULT_AGING_PER_S,
            backfill: false,
        };
        let p = plan(&off, &budget, &running, &waiting, 5.0).expect("valid");
        assert!(p.admitted.is_empty());
        assert!(p.waiting[1..].iter().all(|w| w.reason
            == Reason::BehindHead {
                head: MigrationId(2)
            }));
    }

    #[test]
    fn one_that_cannot_converge_does_not_hold_the_queue() {
        let budget = Budget::uplink(100.0 * MIB);
        let hog = d(1, "a", "x", GIB, 90.0).queued(255, 0.0);
        let fine = d(2, "b", "x", GIB, 10.0).queued(0, 0.0);
        let p = plan(&Scheme::BUDGET, &budget, &[], &[hog, fine], 0.0).expect("valid");
        assert_eq!(p.admitted, [MigrationId(2)]);
        assert_eq!(
            p.waiting[0].reason,
            Reason::CannotConverge {
                reach_bytes_per_s: 100.0 * MIB
            }
        );
    }

    #[test]
    fn a_running_estimate_that_grew_is_scaled_and_blocks_new_starts() {
        let budget = Budget::uplink(100.0 * MIB);
        let running = [d(1, "a", "x", GIB, 60.0), d(2, "b", "x", GIB, 60.0)];
        let waiting = [d(3, "c", "x", GIB, 1.0)];
        let p = plan(&Scheme::BUDGET, &budget, &running, &waiting, 0.0).expect("valid");
        assert_eq!(p.overcommitted, [Constraint::Uplink]);
        assert!(p.admitted.is_empty());
        for g in &p.grants {
            assert!(close(g.bytes_per_s.expect("capped"), 50.0 * MIB), "{g:?}");
        }
    }
}
