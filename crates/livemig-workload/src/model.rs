//! Expected distinct dirty bytes after `w` written bytes, for each access pattern.
//!
//! Writes are page-sized and independent, so after `w / S` writes a page with probability `p`
//! of being hit is dirty with probability `1 - (1 - p)^(w / S)`. Summing over pages gives the
//! expected distinct dirty pages; hot sets saturate, scans do not (until they wrap).
//! The count depends only on `w`, not on when the writes happened, which keeps the simulator
//! exact for time-varying rates.
//!
//! A measured working-set curve `W(t)` (a [`WorkingSet`], replayed at a constant write rate
//! `r`) needs no pattern: `w` written bytes stand for `w / r` seconds, so the distinct bytes
//! are `W(w / r)`.

use crate::spec::{Pattern, Workload};
use crate::workingset::WorkingSet;

/// How distinct dirt grows with writes.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Scan,
    /// Groups of pages sharing one hit probability: `(pages, p)`, with `ln(1 - p)` kept
    /// beside them (computed once: the simulator asks for thousands of groups at every step).
    Groups(Vec<(f64, f64)>, Vec<f64>),
    /// A measured curve, replayed at `rate` bytes/s of writes.
    Curve {
        curve: WorkingSet,
        rate: f64,
    },
}

/// Below this exponent `exp_m1` is exactly -1: the group is wholly dirty.
const SATURATED: f64 = -40.0;

/// A workload's dirtying model for one memory size.
#[derive(Debug, Clone, PartialEq)]
pub struct DirtyModel {
    page_size: f64,
    memory: f64,
    shape: Shape,
}

/// Pages ranked individually before Zipf ranks are grouped.
const ZIPF_EXACT_RANKS: f64 = 4096.0;
/// Width ratio of the geometric Zipf rank groups.
const ZIPF_GROUP_RATIO: f64 = 1.01;

/// Probability mass of 1-based Zipf ranks `[a, b]` (unnormalised), approximated past the exact
/// ranks by the integral of `x^-s` over `[a - 1/2, b + 1/2]`.
fn zipf_mass(a: f64, b: f64, s: f64) -> f64 {
    let (lo, hi) = (a - 0.5, b + 0.5);
    if (s - 1.0).abs() < 1e-12 {
        (hi / lo).ln()
    } else {
        (hi.powf(1.0 - s) - lo.powf(1.0 - s)) / (1.0 - s)
    }
}

fn zipf_groups(pages: f64, s: f64) -> Vec<(f64, f64)> {
    let mut groups = Vec::new();
    let exact = ZIPF_EXACT_RANKS.min(pages);
    let mut rank = 1.0;
    while rank <= exact {
        groups.push((1.0, rank.powf(-s)));
        rank += 1.0;
    }
    while rank <= pages {
        let end = (rank * ZIPF_GROUP_RATIO).floor().max(rank).min(pages);
        let count = end - rank + 1.0;
        groups.push((count, zipf_mass(rank, end, s) / count));
        rank = end + 1.0;
    }
    let total: f64 = groups.iter().map(|(c, p)| c * p).sum();
    for g in &mut groups {
        g.1 /= total;
    }
    groups
}

fn groups(g: Vec<(f64, f64)>) -> Shape {
    let logs = g.iter().map(|&(_, p)| (-p).ln_1p()).collect();
    Shape::Groups(g, logs)
}

impl DirtyModel {
    /// The model of `workload` on a guest of `memory` bytes in pages of `page_size`.
    pub fn new(workload: &Workload, memory: f64, page_size: f64) -> DirtyModel {
        match workload.curve() {
            Some(curve) => DirtyModel::for_curve(curve.clone(), memory, page_size),
            None => DirtyModel::for_pattern(workload.pattern, memory, page_size),
        }
    }

    /// The model of a measured working-set curve over `memory` bytes, replayed at the curve's
    /// [`WorkingSet::initial_rate`] (what a curve workload's rate series holds).
    pub fn for_curve(curve: WorkingSet, memory: f64, page_size: f64) -> DirtyModel {
        let rate = curve.initial_rate();
        DirtyModel {
            page_size,
            memory,
            shape: Shape::Curve { curve, rate },
        }
    }

    /// The model of writes following `pattern` over `memory` bytes in pages of `page_size`
    /// (only the pattern matters, not the rate: see the module's docs).
    pub fn for_pattern(pattern: Pattern, memory: f64, page_size: f64) -> DirtyModel {
        let pages = (memory / page_size).floor().max(1.0);
        let shape = match pattern {
            Pattern::Scan => Shape::Scan,
            Pattern::Uniform => groups(vec![(pages, 1.0 / pages)]),
            Pattern::HotCold { hot, share } => {
                let hot_pages = crate::sampler::hot_pages(hot, pages);
                let cold_pages = pages - hot_pages;
                let mut g = vec![(hot_pages, share / hot_pages)];
                if cold_pages > 0.0 {
                    g.push((cold_pages, (1.0 - share) / cold_pages));
                }
                groups(g)
            }
            Pattern::Zipf { s } => groups(zipf_groups(pages, s)),
        };
        DirtyModel {
            page_size,
            memory,
            shape,
        }
    }

    /// Expected bytes of distinct pages dirtied by `written` bytes of page writes.
    pub fn distinct(&self, written: f64) -> f64 {
        if written <= 0.0 {
            return 0.0;
        }
        match &self.shape {
            Shape::Scan => written.min(self.memory),
            Shape::Curve { curve, rate } if *rate > 0.0 => {
                curve.at(written / rate).min(self.memory)
            }
            Shape::Curve { .. } => 0.0,
            Shape::Groups(groups, logs) => {
                let writes = written / self.page_size;
                let pages: f64 = groups
                    .iter()
                    .zip(logs)
                    .map(|(&(count, p), &log_miss)| {
                        let x = writes * log_miss;
                        if p <= 0.0 {
                            0.0
                        } else if p >= 1.0 || x < SATURATED {
                            count
                        } else {
                            -count * x.exp_m1()
                        }
                    })
                    .sum();
                (pages * self.page_size).min(self.memory)
            }
        }
    }

    /// Memory size the model was built for.
    pub fn memory(&self) -> f64 {
        self.memory
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

    fn model(spec: &str, memory: f64) -> DirtyModel {
        DirtyModel::new(&spec.parse().expect("valid"), memory, 4096.0)
    }

    #[test]
    fn scan_grows_linearly_until_it_wraps() {
        let m = model("scan:rate=1", GIB);
        assert_eq!(m.distinct(1e6), 1e6);
        assert_eq!(m.distinct(2.0 * GIB), GIB);
    }

    #[test]
    fn uniform_matches_the_occupancy_formula() {
        let m = model("uniform:rate=1", GIB);
        let n = GIB / 4096.0;
        // After n writes, 1 - 1/e of the pages are dirty (approximately).
        let d = m.distinct(GIB) / GIB;
        assert!((d - (1.0 - (1.0 - 1.0 / n).powf(n))).abs() < 1e-9);
        assert!((d - 0.632).abs() < 1e-3);
        // Few writes: almost all distinct.
        assert!((m.distinct(4096.0 * 10.0) - 4096.0 * 10.0).abs() < 1.0);
    }

    #[test]
    fn hot_set_saturates() {
        let m = model("hotcold:rate=1,hot=10%,share=90%", GIB);
        let huge = m.distinct(1000.0 * GIB);
        assert!((huge - GIB).abs() / GIB < 1e-6);
        // A moderate number of writes fills the hot set (10 %) and barely touches the rest.
        let d = m.distinct(GIB) / GIB;
        assert!(d > 0.1 && d < 0.2, "{d}");
    }

    #[test]
    fn zipf_groups_are_normalised_and_concentrated() {
        let m = model("zipf:rate=1,s=1.1", 4.0 * GIB);
        let Shape::Groups(g, _) = &m.shape else {
            panic!("zipf has groups")
        };
        let total: f64 = g.iter().map(|(c, p)| c * p).sum();
        assert!((total - 1.0).abs() < 1e-9);
        let pages: f64 = g.iter().map(|(c, _)| c).sum();
        assert_eq!(pages, 4.0 * GIB / 4096.0);
        // Heavily skewed: 1 GiB of writes dirties far less than uniform would.
        let uniform = model("uniform:rate=1", 4.0 * GIB);
        assert!(m.distinct(GIB) < 0.5 * uniform.distinct(GIB));
    }

    #[test]
    fn a_curve_replays_its_seconds_and_caps_at_memory() {
        let mib = 1024.0 * 1024.0;
        let curve = WorkingSet::new(vec![
            (1.0, 64.0 * mib),
            (4.0, 160.0 * mib),
            (8.0, 160.0 * mib),
        ])
        .expect("valid");
        let m = DirtyModel::for_curve(curve.clone(), 384.0 * mib, 4096.0);
        // 64 MiB/s of writes: 2 s of them are 2 s of the curve.
        assert_eq!(m.distinct(128.0 * mib), curve.at(2.0));
        assert_eq!(m.distinct(64.0 * mib * 100.0), 160.0 * mib);
        let small = DirtyModel::for_curve(curve, 100.0 * mib, 4096.0);
        assert_eq!(small.distinct(64.0 * mib * 100.0), 100.0 * mib);
        let idle = WorkingSet::new(vec![(1.0, 0.0)]).expect("valid");
        assert_eq!(DirtyModel::for_curve(idle, mib, 4096.0).distinct(mib), 0.0);
    }

    #[test]
    fn zipf_grouping_matches_exact_sum_on_small_guest() {
        // 64 MiB = 16384 pages: compare against the exact per-page sum.
        let memory = 64.0 * 1024.0 * 1024.0;
        let m = model("zipf:rate=1,s=0.9", memory);
        let n = (memory / 4096.0) as usize;
        let h: f64 = (1..=n).map(|i| (i as f64).powf(-0.9)).sum();
        let writes = 20_000.0;
        let exact: f64 = (1..=n)
            .map(|i| 1.0 - (1.0 - (i as f64).powf(-0.9) / h).powf(writes))
            .sum::<f64>()
            * 4096.0;
        let approx = m.distinct(writes * 4096.0);
        assert!((approx - exact).abs() / exact < 0.01, "{approx} vs {exact}");
    }
}
