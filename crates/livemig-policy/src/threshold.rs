//! The threshold T = (h / M)^(1 / N) of claims 4 and 5.

use crate::PolicyConfig;

/// T from M, N and h: the constant factor that leaves exactly h after N rounds.
pub fn derived(memory_bytes: f64, stop_remaining: f64, max_rounds: u32) -> f64 {
    (stop_remaining / memory_bytes).powf(1.0 / f64::from(max_rounds.max(1)))
}

/// The operator's T when set, the derived one otherwise.
pub fn for_config(cfg: &PolicyConfig) -> f64 {
    cfg.threshold
        .unwrap_or_else(|| derived(cfg.memory_bytes, cfg.stop_remaining, cfg.max_rounds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_examples_of_the_method() {
        assert!((derived(100.0, 1.0, 5) - 0.398_107_170_553_497_3).abs() < 1e-12);
        assert!((derived(100.0, 1.0, 10) - 0.630_957_344_480_193_2).abs() < 1e-12);
    }

    #[test]
    fn operator_value_wins() {
        let cfg = PolicyConfig {
            threshold: Some(0.5),
            ..PolicyConfig::default()
        };
        assert_eq!(for_config(&cfg), 0.5);
    }
}
