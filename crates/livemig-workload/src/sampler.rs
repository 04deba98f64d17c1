//! Drawing the pages a workload writes: a seeded generator and one sampler per [`Pattern`].
//!
//! These are the same access patterns [`crate::DirtyModel`] predicts for: `uniform` picks every
//! page with equal probability, `hotcold` sends a share of the writes to the first
//! [`hot_pages`] pages, `zipf` draws page ranks (rank r = page r - 1) from a Zipf law, `scan`
//! sweeps pages in order and wraps.

use serde::{Deserialize, Serialize};

use crate::spec::Pattern;

/// SplitMix64: a small, fast, seedable generator whose whole state is one `u64`, so that a
/// guest's writers can be serialised and continued exactly elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMix64 {
    pub state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Number of hot pages of a `hotcold` pattern over `pages` pages: `hot * pages` rounded, at
/// least 1 and, when there are two pages or more, leaving at least one cold page.
pub fn hot_pages(hot: f64, pages: f64) -> f64 {
    (hot * pages).round().clamp(1.0, (pages - 1.0).max(1.0))
}

/// Draws page indices for one pattern over a fixed number of pages.
#[derive(Debug, Clone)]
pub struct PageSampler {
    pages: u64,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Uniform,
    HotCold {
        hot: u64,
        share: f64,
    },
    /// Cumulative probabilities of ranks 1..=pages.
    Zipf {
        cdf: Vec<f64>,
    },
    Scan,
}

impl PageSampler {
    /// A sampler of `pattern` over `pages` pages (at least 1).
    pub fn new(pattern: Pattern, pages: u64) -> PageSampler {
        let pages = pages.max(1);
        let kind = match pattern {
            Pattern::Uniform => Kind::Uniform,
            Pattern::Scan => Kind::Scan,
            Pattern::HotCold { hot, share } => Kind::HotCold {
                hot: hot_pages(hot, pages as f64) as u64,
                share,
            },
            Pattern::Zipf { s } => {
                let mut cdf = Vec::with_capacity(pages as usize);
                let mut acc = 0.0;
                for r in 1..=pages {
                    acc += (r as f64).powf(-s);
                    cdf.push(acc);
                }
                for c in &mut cdf {
                    *c /= acc;
                }
                Kind::Zipf { cdf }
            }
        };
        PageSampler { pages, kind }
    }

    /// Pages sampled over.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The pages of the hot set of a `hotcold` pattern (pages `0..n`), `None` for the others.
    pub fn hot_pages(&self) -> Option<u64> {
        match self.kind {
            Kind::HotCold { hot, .. } => Some(hot),
            _ => None,
        }
    }

    /// The page of write number `seq` (0-based; only `scan` uses it), drawing from `rng`.
    pub fn sample(&self, rng: &mut SplitMix64, seq: u64) -> u64 {
        match &self.kind {
            Kind::Uniform => rng.below(self.pages),
            Kind::Scan => seq % self.pages,
            Kind::HotCold { hot, share } => {
                let cold = self.pages - hot;
                if cold == 0 || rng.unit() < *share {
                    rng.below(*hot)
                } else {
                    hot + rng.below(cold)
                }
            }
            Kind::Zipf { cdf } => {
                let u = rng.unit();
                (cdf.partition_point(|&c| c <= u) as u64).min(self.pages - 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DirtyModel;
    use crate::Workload;

    fn distinct_after(spec: &str, pages: u64, writes: u64) -> f64 {
        let w: Workload = spec.parse().expect("valid");
        let s = PageSampler::new(w.pattern, pages);
        let mut rng = SplitMix64::new(7);
        let mut seen = vec![false; pages as usize];
        for i in 0..writes {
            seen[s.sample(&mut rng, i) as usize] = true;
        }
        seen.iter().filter(|&&x| x).count() as f64
    }

    /// The sampler dirties as many distinct pages as the model predicts (within 3 %).
    #[test]
    fn samplers_agree_with_the_model() {
        let pages = 16_384u64;
        for spec in [
            "uniform:rate=1",
            "hotcold:rate=1,hot=10%,share=90%",
            "zipf:rate=1,s=1.1",
            "scan:rate=1",
        ] {
            let w: Workload = spec.parse().expect("valid");
            let m = DirtyModel::new(&w, pages as f64 * 4096.0, 4096.0);
            for writes in [2_000u64, 10_000, 40_000] {
                let got = distinct_after(spec, pages, writes);
                let want = m.distinct(writes as f64 * 4096.0) / 4096.0;
                assert!(
                    (got - want).abs() / want < 0.03,
                    "{spec} after {writes} writes: sampled {got}, model {want}"
                );
            }
        }
    }

    #[test]
    fn generator_is_reproducible_and_in_range() {
        let mut a = SplitMix64::new(1);
        let mut b = SplitMix64::new(1);
        for _ in 0..1000 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            assert!(x < 10);
            let u = a.unit();
            b.unit();
            assert!((0.0..1.0).contains(&u));
        }
        let hc = PageSampler::new(
            Pattern::HotCold {
                hot: 0.9999,
                share: 0.5,
            },
            10,
        );
        assert_eq!(hc.hot_pages(), Some(9), "one page stays cold");
        assert_eq!(PageSampler::new(Pattern::Uniform, 10).hot_pages(), None);
        assert_eq!(hot_pages(0.1, 100.0), 10.0);
        assert_eq!(hot_pages(0.0001, 100.0), 1.0);
    }
}
