//! Properties of working-set curves and their trace decoder: any accepted curve is monotone,
//! finite and exact at its measured points; no input makes the decoder panic.

use livemig_workload::trace;
use livemig_workload::WorkingSet;
use proptest::prelude::*;

proptest! {
    #[test]
    fn accepted_curves_are_monotone_and_exact_at_their_points(
        raw in prop::collection::vec((0.001f64..100.0, 0.0f64..1e10), 1..12),
    ) {
        // Strictly increasing periods from positive gaps.
        let mut t = 0.0;
        let points: Vec<(f64, f64)> = raw
            .iter()
            .map(|&(gap, w)| {
                t += gap;
                (t, w)
            })
            .collect();
        let c = WorkingSet::new(points.clone()).expect("valid points");
        let mut high = 0.0f64;
        for (i, &(t, w)) in points.iter().enumerate() {
            high = high.max(w);
            prop_assert_eq!(c.points()[i], (t, high));
            prop_assert!((c.at(t) - high).abs() <= 1e-9 * high.max(1.0));
        }
        let end = points[points.len() - 1].0 * 4.0;
        let mut last = 0.0f64;
        for k in 0..=400 {
            let w = c.at(end * f64::from(k) / 400.0);
            prop_assert!(w.is_finite() && w >= last - 1e-6 * last.max(1.0), "{w} < {last}");
            last = w;
        }
    }

    #[test]
    fn the_trace_decoder_never_panics(text in "(time_s,dirty_rate_bytes_per_s(,period_s)?\n)?([-0-9.eENaif]{0,8}(,[-0-9.eENaif]{0,8}){0,3}\n){0,20}") {
        if let Ok(t) = trace::parse_trace("t", &text) {
            if let Some(c) = t.working_set(1.0) {
                let c = c.expect("checked while parsing");
                prop_assert!(c.at(1e6).is_finite());
            }
        }
    }
}
