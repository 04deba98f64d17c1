//! The baselines, behind the same entry point: `sequential` (one migration at a time per
//! source host, no cap: Nova's default), `fixed-slots` (a fixed number of outbound slots per
//! host and in all, each capped at uplink / total slots: KubeVirt, oVirt) and `unlimited`
//! (everything at once, no cap). None of them predicts: they admit by counting.

use std::collections::BTreeMap;

use super::admission::{numbered, Queued};
use super::{Budget, Demand, Grant, Plan, Reason};
use crate::migration::MigrationId;

fn grant(id: MigrationId, cap: Option<f64>) -> Grant {
    Grant {
        id,
        bytes_per_s: cap,
        minimum_bytes_per_s: None,
        converges: true,
    }
}

fn finish(
    running: &[Demand],
    admitted: Vec<MigrationId>,
    waiting: Vec<(Queued<'_>, Reason)>,
    cap: Option<f64>,
) -> Plan {
    let mut grants: Vec<Grant> = running
        .iter()
        .map(|d| d.id)
        .chain(admitted.iter().copied())
        .map(|id| grant(id, cap))
        .collect();
    grants.sort_by_key(|g| g.id);
    Plan {
        grants,
        admitted,
        waiting: numbered(waiting),
        overcommitted: Vec::new(),
    }
}

/// At most one migration per source host; in queue order, one whose source is free starts.
pub fn sequential(running: &[Demand], queue: &[Queued<'_>]) -> Plan {
    let mut busy: BTreeMap<&str, MigrationId> = BTreeMap::new();
    for d in running {
        let slot = busy.entry(d.source.as_str()).or_insert(d.id);
        *slot = (*slot).min(d.id);
    }
    let mut admitted = Vec::new();
    let mut waiting = Vec::new();
    for q in queue {
        let d = q.demand;
        match busy.get(d.source.as_str()) {
            Some(&r) => waiting.push((
                *q,
                Reason::SourceBusy {
                    host: d.source.clone(),
                    running: r,
                },
            )),
            None => {
                busy.insert(d.source.as_str(), d.id);
                admitted.push(d.id);
            }
        }
    }
    finish(running, admitted, waiting, None)
}

/// At most `per_source` migrations out of each host and `total` in all, each capped at
/// uplink / `total`, so that full slots add up to the uplink.
pub fn fixed_slots(
    budget: &Budget,
    per_source: u32,
    total: u32,
    running: &[Demand],
    queue: &[Queued<'_>],
) -> Plan {
    let mut out: BTreeMap<&str, u32> = BTreeMap::new();
    for d in running {
        *out.entry(d.source.as_str()).or_insert(0) += 1;
    }
    let mut all = u32::try_from(running.len()).unwrap_or(u32::MAX);
    let mut admitted = Vec::new();
    let mut waiting = Vec::new();
    for q in queue {
        let d = q.demand;
        let from = out.entry(d.source.as_str()).or_insert(0);
        if all >= total {
            waiting.push((*q, Reason::TotalSlots { limit: total }));
        } else if *from >= per_source {
            waiting.push((
                *q,
                Reason::HostSlots {
                    host: d.source.clone(),
                    limit: per_source,
                },
            ));
        } else {
            *from += 1;
            all += 1;
            admitted.push(d.id);
        }
    }
    let cap = budget.uplink_bytes_per_s / f64::from(total);
    finish(running, admitted, waiting, Some(cap))
}

/// Everything starts now, without a cap.
pub fn unlimited(running: &[Demand], queue: &[Queued<'_>]) -> Plan {
    let admitted = queue.iter().map(|q| q.demand.id).collect();
    finish(running, admitted, Vec::new(), None)
}

#[cfg(test)]
mod tests {
    use super::super::{plan, Scheme};
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;

    fn d(id: u64, src: &str, at: f64) -> Demand {
        Demand::new(id, src, "x", 1024.0 * MIB, 500.0 * MIB, 5, MIB).queued(0, at)
    }

    fn ids(v: &[MigrationId]) -> Vec<u64> {
        v.iter().map(|i| i.0).collect()
    }

    #[test]
    fn sequential_runs_one_per_source_uncapped() {
        let running = [d(1, "a", 0.0)];
        let waiting = [
            d(2, "a", 1.0),
            d(3, "b", 2.0),
            d(4, "b", 3.0),
            d(5, "c", 4.0),
        ];
        let b = Budget::uplink(100.0 * MIB);
        let p = plan(&Scheme::Sequential, &b, &running, &waiting, 10.0).expect("valid");
        assert_eq!(ids(&p.admitted), [3, 5]);
        assert_eq!(
            p.waiting[0].reason,
            Reason::SourceBusy {
                host: "a".into(),
                running: MigrationId(1)
            }
        );
        assert_eq!(
            p.waiting[1].reason,
            Reason::SourceBusy {
                host: "b".into(),
                running: MigrationId(3)
            }
        );
        assert!(p.grants.iter().all(|g| g.bytes_per_s.is_none()));
        assert_eq!(p.grants.len(), 3);
    }

    #[test]
    fn fixed_slots_two_per_source_five_in_all_a_fifth_each() {
        let b = Budget::uplink(100.0 * MIB);
        let waiting: Vec<Demand> = ["a", "a", "a", "b", "b", "c", "d"]
            .iter()
            .enumerate()
            .map(|(i, h)| d(i as u64 + 1, h, i as f64))
            .collect();
        let p = plan(&Scheme::FIXED_SLOTS, &b, &[], &waiting, 10.0).expect("valid");
        assert_eq!(ids(&p.admitted), [1, 2, 4, 5, 6]);
        assert_eq!(
            p.waiting[0].reason,
            Reason::HostSlots {
                host: "a".into(),
                limit: 2
            }
        );
        assert_eq!(p.waiting[1].reason, Reason::TotalSlots { limit: 5 });
        assert!(p.grants.iter().all(|g| g.bytes_per_s == Some(20.0 * MIB)));
    }

    #[test]
    fn unlimited_starts_everything() {
        let b = Budget::uplink(MIB);
        let waiting = [d(1, "a", 0.0), d(2, "a", 0.0), d(3, "a", 0.0)];
        let p = plan(&Scheme::Unlimited, &b, &[], &waiting, 0.0).expect("valid");
        assert_eq!(ids(&p.admitted), [1, 2, 3]);
        assert!(p.waiting.is_empty());
        assert!(p.grants.iter().all(|g| g.bytes_per_s.is_none()));
    }
}
