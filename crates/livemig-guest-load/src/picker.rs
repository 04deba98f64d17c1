//! Which page each write hits: a small xorshift generator and the access patterns.

use crate::spec::Pattern;

/// Picks page indices in `0..pages` according to a [`Pattern`].
#[derive(Debug, Clone)]
pub struct PagePicker {
    pattern: Pattern,
    pages: usize,
    hot_pages: usize,
    state: u64,
    cursor: usize,
}

impl PagePicker {
    /// A picker over `pages` pages (at least 1), seeded.
    pub fn new(pattern: Pattern, pages: usize, seed: u64) -> PagePicker {
        let pages = pages.max(1);
        let hot_pages = match pattern {
            Pattern::HotCold { hot, .. } => ((pages as f64 * hot).round() as usize).clamp(1, pages),
            _ => pages,
        };
        PagePicker {
            pattern,
            pages,
            hot_pages,
            state: seed | 1,
            cursor: 0,
        }
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// The next page to write.
    pub fn next_page(&mut self) -> usize {
        match self.pattern {
            Pattern::Idle | Pattern::Uniform => self.below(self.pages),
            Pattern::Scan => {
                let p = self.cursor;
                self.cursor = (self.cursor + 1) % self.pages;
                p
            }
            Pattern::HotCold { share, .. } => {
                let roll = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                if roll < share || self.hot_pages == self.pages {
                    self.below(self.hot_pages)
                } else {
                    self.hot_pages + self.below(self.pages - self.hot_pages)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_sweeps_in_order_and_wraps() {
        let mut p = PagePicker::new(Pattern::Scan, 3, 7);
        let got: Vec<usize> = (0..7).map(|_| p.next_page()).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn hotcold_sends_the_share_to_the_hot_pages() {
        let pattern = Pattern::HotCold {
            hot: 0.1,
            share: 0.9,
        };
        let mut p = PagePicker::new(pattern, 1000, 42);
        let n = 100_000;
        let hot = (0..n).filter(|_| p.next_page() < 100).count();
        let frac = hot as f64 / n as f64;
        assert!((frac - 0.9).abs() < 0.01, "{frac}");
    }

    #[test]
    fn uniform_stays_in_range_and_covers_it() {
        let mut p = PagePicker::new(Pattern::Uniform, 50, 1);
        let mut seen = [false; 50];
        for _ in 0..5000 {
            let i = p.next_page();
            assert!(i < 50);
            seen[i] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
