//! The workload mix of a fleet: named workload classes with weights, `idle:2,web:2,db:1,heavy:1`.
//!
//! Every class is a workload spec of `livemig-workload` (its kinds: `idle`, `uniform`,
//! `hotcold`, `zipf`, `scan`) at a fixed rate; the kinds' own names are classes too.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The classes a mix may name, with the workload spec each stands for.
pub const CLASSES: &[(&str, &str)] = &[
    ("idle", "idle"),
    ("web", "hotcold:rate=40MiB/s,hot=5%,share=90%"),
    ("db", "zipf:rate=150MiB/s,s=0.9"),
    ("heavy", "uniform:rate=250MiB/s"),
    ("uniform", "uniform:rate=50MiB/s"),
    ("hotcold", "hotcold:rate=300MiB/s,hot=10%,share=90%"),
    ("zipf", "zipf:rate=200MiB/s,s=1.1"),
    ("scan", "scan:rate=50MiB/s"),
    // The six guests of `livemig bench-drain`, light to heavy.
    ("u256k", "uniform:rate=256KiB/s"),
    ("u2m", "uniform:rate=2MiB/s"),
    ("u6m", "uniform:rate=6MiB/s"),
    ("u12m", "uniform:rate=12MiB/s"),
    ("u20m", "uniform:rate=20MiB/s"),
    ("u40m", "uniform:rate=40MiB/s"),
];

/// The mix of `livemig bench-drain`'s host, one VM of each class in order
/// ([`DrainScenario::in_order`](crate::DrainScenario)).
pub const TESTBED_MIX: &str = "u256k:1,u2m:1,u6m:1,u12m:1,u20m:1,u40m:1";

/// The mix `livemig plan drain` uses unless told otherwise.
pub const DEFAULT_MIX: &str = "idle:2,web:2,db:1,heavy:1";

/// The workload spec of class `name`.
pub fn class_spec(name: &str) -> Option<&'static str> {
    CLASSES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Why a mix was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MixError {
    #[error("the mix is empty (expected CLASS:WEIGHT,..., e.g. {DEFAULT_MIX})")]
    Empty,
    #[error("`{0}` is not CLASS:WEIGHT (e.g. web:2)")]
    NotPair(String),
    #[error("unknown workload class `{class}` (expected one of: {known})")]
    UnknownClass { class: String, known: String },
    #[error("the weight of `{class}` must be a whole number from 0 to 1000000, got `{weight}`")]
    Weight { class: String, weight: String },
    #[error("the class `{0}` is named twice")]
    Duplicate(String),
    #[error("every weight is 0")]
    AllZero,
}

fn names() -> String {
    CLASSES
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Classes with weights: a VM's class is drawn with probability weight / total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mix {
    pub entries: Vec<(String, u32)>,
}

impl Mix {
    /// The total weight.
    pub fn total(&self) -> u64 {
        self.entries.iter().map(|&(_, w)| u64::from(w)).sum()
    }

    /// The class drawn by `u`, uniform in [0, total).
    pub fn pick(&self, u: u64) -> usize {
        let mut acc = 0;
        for (i, &(_, w)) in self.entries.iter().enumerate() {
            acc += u64::from(w);
            if u < acc {
                return i;
            }
        }
        self.entries.len().saturating_sub(1)
    }
}

impl Default for Mix {
    fn default() -> Self {
        // The default mix is written in this file and parses.
        DEFAULT_MIX.parse().unwrap_or(Mix {
            entries: vec![("idle".into(), 1)],
        })
    }
}

impl FromStr for Mix {
    type Err = MixError;

    fn from_str(s: &str) -> Result<Mix, MixError> {
        let mut entries: Vec<(String, u32)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (class, weight) = part
                .split_once(':')
                .ok_or_else(|| MixError::NotPair(part.to_string()))?;
            let class = class.trim();
            if class_spec(class).is_none() {
                return Err(MixError::UnknownClass {
                    class: class.to_string(),
                    known: names(),
                });
            }
            let w = weight
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|w| *w <= 1_000_000)
                .ok_or_else(|| MixError::Weight {
                    class: class.to_string(),
                    weight: weight.trim().to_string(),
                })?;
            if entries.iter().any(|(c, _)| c == class) {
                return Err(MixError::Duplicate(class.to_string()));
            }
            entries.push((class.to_string(), w));
        }
        if entries.is_empty() {
            return Err(MixError::Empty);
        }
        let mix = Mix { entries };
        if mix.total() == 0 {
            return Err(MixError::AllZero);
        }
        Ok(mix)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|(c, w)| format!("{c}:{w}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use livemig_workload::Workload;

    #[test]
    fn every_class_is_a_workload_spec() {
        for (name, spec) in CLASSES {
            Workload::parse_self_contained(spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn parses_picks_and_refuses() {
        let m: Mix = "idle:2, web:1,heavy:0".parse().expect("mix");
        assert_eq!(m.total(), 3);
        assert_eq!((m.pick(0), m.pick(1), m.pick(2)), (0, 0, 1));
        assert_eq!(m.to_string(), "idle:2,web:1,heavy:0");
        assert_eq!(Mix::default().to_string(), DEFAULT_MIX);
        assert_eq!("".parse::<Mix>(), Err(MixError::Empty));
        assert_eq!("web".parse::<Mix>(), Err(MixError::NotPair("web".into())));
        assert!(matches!(
            "nope:1".parse::<Mix>(),
            Err(MixError::UnknownClass { .. })
        ));
        assert!(matches!(
            "web:-1".parse::<Mix>(),
            Err(MixError::Weight { .. })
        ));
        assert!(matches!(
            "web:1,web:2".parse::<Mix>(),
            Err(MixError::Duplicate(_))
        ));
        assert_eq!("web:0".parse::<Mix>(), Err(MixError::AllZero));
    }
}
