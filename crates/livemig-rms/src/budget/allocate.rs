//! The allocation rule: every running migration first gets its minimum (scaled down in
//! proportion on a limit the minimums alone exceed), then what is left of every limit goes to
//! the migrations in order of remaining bytes, smallest first, each raised as far as its
//! ceiling and every limit it crosses allow.

use std::collections::BTreeMap;

use super::{Budget, Constraint, Demand};

/// The limits that matter for a set of migrations: the uplink and the NIC of every host
/// they touch that has a limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    caps: BTreeMap<Constraint, f64>,
}

impl Limits {
    /// The limits of `budget` that `demands` cross.
    pub fn new<'a>(budget: &Budget, demands: impl IntoIterator<Item = &'a Demand>) -> Limits {
        let mut caps = BTreeMap::from([(Constraint::Uplink, budget.uplink_bytes_per_s)]);
        for d in demands {
            for host in [&d.source, &d.target] {
                if let Some(limit) = budget.host_limit(host) {
                    caps.insert(Constraint::Host(host.clone()), limit);
                }
            }
        }
        Limits { caps }
    }

    /// The capacity of `c`; unlimited when `c` is a host without a limit.
    pub fn cap(&self, c: &Constraint) -> f64 {
        self.caps.get(c).copied().unwrap_or(f64::INFINITY)
    }

    /// The limits `d`'s traffic crosses: the uplink, then its source's and its target's NIC
    /// where they have a limit.
    pub fn crossed(&self, d: &Demand) -> Vec<Constraint> {
        let mut out = vec![Constraint::Uplink];
        for host in [&d.source, &d.target] {
            let c = Constraint::Host(host.clone());
            if self.caps.contains_key(&c) {
                out.push(c);
            }
        }
        out
    }

    /// The most `d` could ever be granted: its ceiling and every limit it crosses, alone.
    pub fn reach(&self, d: &Demand) -> f64 {
        self.crossed(d)
            .iter()
            .map(|c| self.cap(c))
            .fold(d.ceiling_bytes_per_s.unwrap_or(f64::INFINITY), f64::min)
    }

    /// What `rates` (one per demand) add up to on each limit.
    pub fn usage<'a>(&self, rates: impl IntoIterator<Item = (&'a Demand, f64)>) -> Usage {
        let mut used = Usage::new();
        for (d, r) in rates {
            for c in self.crossed(d) {
                *used.entry(c).or_insert(0.0) += r;
            }
        }
        used
    }

    /// What is free on `c` beside `used`.
    pub fn free(&self, used: &Usage, c: &Constraint) -> f64 {
        self.cap(c) - used.get(c).copied().unwrap_or(0.0)
    }
}

/// Bytes/s in use per limit.
pub type Usage = BTreeMap<Constraint, f64>;

/// The grants of `active` (each with its minimum), in the same order, and the limits the
/// minimums alone exceed.
///
/// 1. Minimums: on a limit whose minimums add up to more than its capacity, each minimum is
///    scaled by capacity / sum; a migration takes the smallest scale of the limits it
///    crosses. No limit is exceeded: on each, the scaled minimums add up to at most
///    capacity.
/// 2. The rest, shortest remaining first (ties by id): each migration in turn is raised by
///    the least of what is still free on every limit it crosses and of its ceiling. No limit
///    is exceeded (up to rounding): nothing is added beyond what is free.
pub fn grants(limits: &Limits, active: &[(&Demand, f64)]) -> (Vec<f64>, Vec<Constraint>) {
    let wanted = limits.usage(active.iter().copied());
    let scale: BTreeMap<&Constraint, f64> = wanted
        .iter()
        .map(|(c, &sum)| {
            let cap = limits.cap(c);
            (c, if sum > cap { cap / sum } else { 1.0 })
        })
        .collect();
    let over: Vec<Constraint> = scale
        .iter()
        .filter(|(_, &s)| s < 1.0)
        .map(|(c, _)| (*c).clone())
        .collect();
    let mut granted: Vec<f64> = active
        .iter()
        .map(|(d, min)| {
            let s = limits
                .crossed(d)
                .iter()
                .filter_map(|c| scale.get(c).copied())
                .fold(1.0, f64::min);
            min * s
        })
        .collect();
    let mut used = limits.usage(active.iter().zip(&granted).map(|((d, _), g)| (*d, *g)));
    let mut order: Vec<usize> = (0..active.len()).collect();
    order.sort_by(|&i, &j| {
        let (a, b) = (active[i].0, active[j].0);
        a.remaining_bytes
            .total_cmp(&b.remaining_bytes)
            .then(a.id.cmp(&b.id))
    });
    for i in order {
        let d = active[i].0;
        let crossed = limits.crossed(d);
        let room = crossed
            .iter()
            .map(|c| limits.free(&used, c))
            .fold(
                d.ceiling_bytes_per_s.unwrap_or(f64::INFINITY) - granted[i],
                f64::min,
            )
            .max(0.0);
        if room > 0.0 && room.is_finite() {
            granted[i] += room;
            for c in crossed {
                *used.entry(c).or_insert(0.0) += room;
            }
        }
    }
    (granted, over)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;
    const GIB: f64 = 1024.0 * MIB;

    fn d(id: u64, src: &str, dst: &str, remaining: f64) -> Demand {
        Demand::new(id, src, dst, 4.0 * GIB, 0.0, 10, MIB).progressed(remaining, 5)
    }

    #[test]
    fn minimums_then_the_rest_to_the_smallest() {
        let limits = Limits::new(&Budget::uplink(100.0 * MIB), []);
        let (a, b, c) = (
            d(1, "x", "y", GIB),
            d(2, "x", "z", 2.0 * GIB),
            d(3, "y", "z", GIB / 2.0),
        );
        let (g, over) = grants(
            &limits,
            &[(&a, 20.0 * MIB), (&b, 30.0 * MIB), (&c, 10.0 * MIB)],
        );
        assert!(over.is_empty());
        assert_eq!(
            g,
            [20.0 * MIB, 30.0 * MIB, 50.0 * MIB],
            "c is smallest: it gets the 40 left"
        );
    }

    #[test]
    fn a_ceiling_passes_the_rest_on() {
        let limits = Limits::new(&Budget::uplink(100.0 * MIB), []);
        let a = d(1, "x", "y", GIB).bounds(MIB, Some(25.0 * MIB));
        let b = d(2, "x", "z", 2.0 * GIB);
        let (g, _) = grants(&limits, &[(&a, 20.0 * MIB), (&b, 30.0 * MIB)]);
        assert_eq!(g, [25.0 * MIB, 75.0 * MIB]);
    }

    #[test]
    fn a_nic_limit_passes_the_rest_on() {
        let budget = Budget::uplink(100.0 * MIB).with_host("x", 40.0 * MIB);
        let (a, b) = (d(1, "x", "y", GIB), d(2, "z", "w", 2.0 * GIB));
        let limits = Limits::new(&budget, [&a, &b]);
        assert_eq!(
            limits.crossed(&a),
            [Constraint::Uplink, Constraint::Host("x".into())]
        );
        assert_eq!(limits.reach(&a), 40.0 * MIB);
        let (g, _) = grants(&limits, &[(&a, 10.0 * MIB), (&b, 10.0 * MIB)]);
        assert_eq!(g, [40.0 * MIB, 60.0 * MIB]);
    }

    #[test]
    fn grown_minimums_are_scaled_where_they_do_not_fit() {
        let budget = Budget::uplink(100.0 * MIB).with_host("x", 30.0 * MIB);
        let (a, b, c) = (
            d(1, "x", "y", GIB),
            d(2, "z", "x", GIB),
            d(3, "z", "w", GIB),
        );
        let limits = Limits::new(&budget, [&a, &b, &c]);
        let (g, over) = grants(
            &limits,
            &[(&a, 30.0 * MIB), (&b, 30.0 * MIB), (&c, 10.0 * MIB)],
        );
        assert_eq!(over, [Constraint::Host("x".into())]);
        assert_eq!(
            &g[..2],
            [15.0 * MIB, 15.0 * MIB],
            "x's 30 shared in proportion"
        );
        assert_eq!(
            g[2],
            70.0 * MIB,
            "c keeps its 10 and takes the uplink's rest"
        );
    }
}
