//! The highest rate over any window of a given length, for a transfer made of segments each
//! at a constant rate: the same figure as `livemig_policy::report::peak_window`, in
//! O(n log n) instead of O(n²), for runs with many segments (the fleet simulation).
//!
//! The bytes in a window `[a, a + w]` are `F(a + w) - F(a)`, `F` the cumulative bytes,
//! piecewise linear; their maximum over `a` is reached with an edge of the window on a
//! segment's boundary, so only those windows are measured.

/// The highest `window_s` average of `segments` (`(start, duration, bytes)`, sorted by start
/// and not overlapping), in bytes/s. Segments of no duration are skipped.
pub fn window(segments: &[(f64, f64, f64)], window_s: f64) -> f64 {
    if window_s <= 0.0 {
        return 0.0;
    }
    let segs: Vec<(f64, f64, f64)> = segments
        .iter()
        .copied()
        .filter(|&(s, d, b)| d > 0.0 && s.is_finite() && b.is_finite())
        .collect();
    if segs.is_empty() {
        return 0.0;
    }
    // Cumulative bytes at each segment's start.
    let mut before = Vec::with_capacity(segs.len());
    let mut total = 0.0;
    for &(_, _, b) in &segs {
        before.push(total);
        total += b;
    }
    let cumulative = |t: f64| -> f64 {
        // The last segment starting at or before t.
        let i = segs.partition_point(|&(s, _, _)| s <= t);
        if i == 0 {
            return 0.0;
        }
        let (s, d, b) = segs[i - 1];
        before[i - 1] + b * ((t - s) / d).clamp(0.0, 1.0)
    };
    let mut best: f64 = 0.0;
    for &(s, d, _) in &segs {
        for edge in [s, s + d] {
            best = best.max(cumulative(edge + window_s) - cumulative(edge));
            best = best.max(cumulative(edge) - cumulative(edge - window_s));
        }
    }
    best / window_s
}

/// The highest rate (per second) over consecutive samples of a cumulative counter
/// (`(seconds, count)`, in time order) that span at least `span_s`: a 100 ms window measured
/// by a sampler whose period jitters. 0 with fewer than two samples that far apart.
pub fn counters(samples: &[(f64, u64)], span_s: f64) -> f64 {
    let mut best = 0.0f64;
    let mut j = 0;
    for (i, &(t0, c0)) in samples.iter().enumerate() {
        j = j.max(i + 1);
        while j < samples.len() && samples[j].0 - t0 < span_s {
            j += 1;
        }
        let Some(&(t1, c1)) = samples.get(j) else {
            break;
        };
        best = best.max(c1.saturating_sub(c0) as f64 / (t1 - t0));
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use livemig_policy::report::peak_window;

    #[test]
    fn agrees_with_the_reports_peak() {
        let cases: [&[(f64, f64, f64)]; 4] = [
            &[(0.0, 10.0, 1000.0), (10.0, 0.05, 50.0)],
            &[(0.0, 100.0, 1e6)],
            &[
                (0.0, 0.03, 30.0),
                (0.03, 0.02, 1.0),
                (0.05, 0.2, 400.0),
                (1.0, 0.01, 90.0),
            ],
            &[],
        ];
        for segs in cases {
            let (a, b) = (window(segs, 0.1), peak_window(segs, 0.1));
            assert!((a - b).abs() <= 1e-9 * b.max(1.0), "{segs:?}: {a} vs {b}");
        }
        assert!((window(cases[0], 0.1) - 550.0).abs() < 1e-6);
    }

    #[test]
    fn counters_peak_over_windows_of_at_least_the_span() {
        // 1 MB in the first 50 ms, then nothing: over 100 ms it is 10 MB/s, not 20.
        let s = [
            (0.0, 0),
            (0.05, 1_000_000),
            (0.10, 1_000_000),
            (0.2, 1_000_000),
        ];
        assert!((super::counters(&s, 0.1) - 10e6).abs() < 1.0);
        assert_eq!(super::counters(&s[..1], 0.1), 0.0);
        assert_eq!(super::counters(&s[..2], 0.1), 0.0, "no pair spans 100 ms");
    }
}
