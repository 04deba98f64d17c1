//! The QEMU test guest writes the workload the simulator models: for the same load spec, the
//! guest's page choice ([`PageStream`]) and the simulator's [`DirtyModel`] agree on the hot set
//! (its size, to the page) and on how many distinct pages a number of writes dirties.

use livemig_guest_load::{LoadSpec, PageStream, Pattern, PAGE};
use livemig_workload::DirtyModel;

/// The simulator's model of the memory the guest writes: its buffer, in its pages.
fn model(spec: &LoadSpec) -> DirtyModel {
    DirtyModel::for_pattern(spec.pattern, spec.buffer as f64, PAGE as f64)
}

/// Hot pages of `spec` as the model sees them: with every write going to the hot set, the
/// model's dirty set saturates at exactly the hot set.
fn model_hot_pages(spec: &LoadSpec) -> f64 {
    let Pattern::HotCold { hot, .. } = spec.pattern else {
        panic!("not hotcold")
    };
    let all_hot = DirtyModel::for_pattern(
        Pattern::HotCold { hot, share: 1.0 },
        spec.buffer as f64,
        PAGE as f64,
    );
    all_hot.distinct(1e9 * spec.buffer as f64) / PAGE as f64
}

fn hotcold(pages: usize, hot: &str, share: &str) -> LoadSpec {
    let s = format!(
        "hotcold:rate=1MiB/s,buffer={},hot={hot},share={share}",
        pages * PAGE
    );
    LoadSpec::parse(&s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Same buffer and hot fraction: the same number of hot pages, including the rounding edges
/// (a hot set rounding to zero pages or to the whole buffer, halves, odd page counts).
/// The guest used to round `hot × pages` and keep every page hot when that reached the buffer
/// (10 pages at 99.99 %: 10 hot pages for the guest, 9 in the model).
#[test]
fn the_hot_set_has_the_same_size() {
    let mut checked = 0;
    for pages in [1usize, 2, 3, 10, 1000, 12_289, 16_384] {
        for hot in ["0.01%", "5%", "10%", "25%", "50%", "95%", "99.99%"] {
            let spec = hotcold(pages, hot, "90%");
            let guest = PageStream::new(&spec)
                .sampler()
                .hot_pages()
                .expect("a hot set");
            let sim = model_hot_pages(&spec);
            assert_eq!(guest as f64, sim, "{pages} pages, hot={hot}");
            checked += 1;
        }
    }
    assert_eq!(checked, 49);
    assert_eq!(model_hot_pages(&hotcold(10, "99.99%", "90%")), 9.0);
    assert_eq!(model_hot_pages(&hotcold(10, "25%", "90%")), 3.0);
}

/// With every write going to the hot set, the guest writes exactly the model's hot pages: all
/// of them, and nothing else.
#[test]
fn a_full_share_writes_exactly_the_hot_set() {
    for (pages, hot) in [(10usize, "99.99%"), (10, "25%"), (3, "50%"), (1000, "5%")] {
        let spec = hotcold(pages, hot, "100%");
        let want = model_hot_pages(&spec) as usize;
        let mut stream = PageStream::new(&spec);
        let mut seen = vec![false; pages];
        for _ in 0..200 * pages {
            seen[stream.next_page()] = true;
        }
        let written: Vec<usize> = (0..pages).filter(|&p| seen[p]).collect();
        assert_eq!(
            written,
            (0..want).collect::<Vec<_>>(),
            "{pages} pages, hot={hot}"
        );
    }
}

/// The guest sends the configured share of its writes to the model's hot set (within five
/// standard deviations of a binomial draw).
#[test]
fn the_hot_set_gets_the_configured_share() {
    let n = 200_000u32;
    for (pages, hot, share) in [
        (16_384usize, "10%", 0.9),
        (1000, "25%", 0.6),
        (10, "99.99%", 0.5),
        (12_289, "5%", 0.99),
    ] {
        let spec = hotcold(pages, hot, &format!("{}%", share * 100.0));
        let hot_pages = model_hot_pages(&spec) as usize;
        let mut stream = PageStream::new(&spec);
        let in_hot = (0..n).filter(|_| stream.next_page() < hot_pages).count();
        let got = f64::from(in_hot as u32) / f64::from(n);
        let sigma = (share * (1.0 - share) / f64::from(n)).sqrt();
        assert!(
            (got - share).abs() <= 5.0 * sigma + 1e-9,
            "{pages} pages, hot={hot}: {got} of the writes hit the hot set, configured {share}"
        );
    }
}

/// What the guest dirties is what the simulator predicts, for every pattern the guest runs.
#[test]
fn distinct_dirty_pages_match_the_model() {
    for s in [
        "uniform:rate=1MiB/s,buffer=64MiB",
        "hotcold:rate=1MiB/s,buffer=64MiB,hot=10%,share=90%",
        "hotcold:rate=1MiB/s,buffer=48MiB,hot=20%,share=0.9",
        "zipf:rate=1MiB/s,buffer=64MiB,s=1.1",
        "scan:rate=1MiB/s,buffer=64MiB",
    ] {
        let spec = LoadSpec::parse(s).expect("valid");
        let m = model(&spec);
        let mut stream = PageStream::new(&spec);
        let mut seen = vec![false; spec.pages()];
        let mut dirty = 0usize;
        let mut writes = 0u64;
        for until in [2_000u64, 10_000, 40_000] {
            while writes < until {
                let p = stream.next_page();
                if !seen[p] {
                    seen[p] = true;
                    dirty += 1;
                }
                writes += 1;
            }
            let want = m.distinct(writes as f64 * PAGE as f64) / PAGE as f64;
            let got = dirty as f64;
            assert!(
                (got - want).abs() / want < 0.03,
                "{s} after {writes} writes: the guest dirtied {got} pages, the model {want}"
            );
        }
    }
}
