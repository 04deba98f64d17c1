//! What went on the wire when: 10 ms bins, the highest 100 ms window and per-window rates.

/// Width of one bin (s).
pub const BIN_S: f64 = 0.01;

/// Wire bytes per 10 ms bin since the meter's start.
#[derive(Debug, Clone, Default)]
pub struct WireMeter {
    bins: Vec<u64>,
}

impl WireMeter {
    /// An empty meter.
    pub fn new() -> WireMeter {
        WireMeter::default()
    }

    /// Records `bytes` sent at `t` seconds after the start.
    pub fn record(&mut self, t: f64, bytes: u64) {
        let i = if t.is_finite() && t > 0.0 {
            (t / BIN_S) as usize
        } else {
            0
        };
        if i >= self.bins.len() {
            self.bins.resize(i + 1, 0);
        }
        self.bins[i] += bytes;
    }

    /// Total bytes recorded.
    pub fn total(&self) -> u64 {
        self.bins.iter().sum()
    }

    /// The highest average rate over any `window_s` window made of whole bins (bytes/s).
    pub fn peak(&self, window_s: f64) -> f64 {
        let w = ((window_s / BIN_S).round() as usize).max(1);
        let mut sum: u64 = self.bins.iter().take(w).sum();
        let mut best = sum;
        for i in w..self.bins.len() {
            sum = sum + self.bins[i] - self.bins[i - w];
            best = best.max(sum);
        }
        best as f64 / (w as f64 * BIN_S)
    }

    /// Rates (bytes/s) of consecutive, non-overlapping `window_s` windows from `from_s` to
    /// `to_s` (whole windows only).
    pub fn window_rates(&self, from_s: f64, to_s: f64, window_s: f64) -> Vec<f64> {
        let w = ((window_s / BIN_S).round() as usize).max(1);
        let mut out = Vec::new();
        let mut i = (from_s / BIN_S).round() as usize;
        let end = ((to_s / BIN_S).floor() as usize).min(self.bins.len());
        while i + w <= end {
            let s: u64 = self.bins[i..i + w].iter().sum();
            out.push(s as f64 / (w as f64 * BIN_S));
            i += w;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_finds_the_busiest_window() {
        let mut m = WireMeter::new();
        for i in 0..100 {
            m.record(i as f64 * 0.01 + 0.001, 1000);
        }
        m.record(0.505, 9000);
        assert!((m.peak(0.1) - 190_000.0).abs() < 1e-6);
        assert_eq!(m.total(), 109_000);
        let r = m.window_rates(0.0, 0.3, 0.1);
        assert_eq!(r, vec![100_000.0; 3]);
    }
}
