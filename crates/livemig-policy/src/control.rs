//! The control handle of a running migration: a *granted* cap that someone else (an operator,
//! later the RMS's budget) may change at any time, and cancellation. Atomics only: no I/O, no
//! clock; executors read it between frames or passes.
//!
//! It is a live handle, kept apart from configuration: clone it, give one clone to the
//! executor, keep the other to steer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
struct Inner {
    /// The granted cap's bits (f64), 0 for none.
    granted: AtomicU64,
    cancelled: AtomicBool,
}

/// A shared handle on one migration (cheap to clone; all clones steer the same migration).
#[derive(Debug, Clone, Default)]
pub struct Control(Arc<Inner>);

impl Control {
    /// No grant (the policy's caps alone), not cancelled.
    pub fn new() -> Control {
        Control::default()
    }

    /// Grants at most `cap` bytes/s (`Some`), or lifts the grant (`None`). A non-positive or
    /// non-finite cap lifts it.
    pub fn grant(&self, cap: Option<f64>) {
        let bits = cap
            .filter(|c| *c > 0.0 && c.is_finite())
            .map_or(0, f64::to_bits);
        self.0.granted.store(bits, Ordering::Release);
    }

    /// The grant in force, if any.
    pub fn granted(&self) -> Option<f64> {
        match self.0.granted.load(Ordering::Acquire) {
            0 => None,
            b => Some(f64::from_bits(b)),
        }
    }

    /// The cap an executor runs under when the policy asks for `wish`: the lower of the two.
    pub fn effective(&self, wish: f64) -> f64 {
        self.granted().map_or(wish, |g| g.min(wish))
    }

    /// Asks the migration to stop. Before its commit point an executor stops and leaves the
    /// guest running on the source; after it, cancellation is too late and is ignored (the
    /// hand-over completes or is settled as usual).
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Release);
    }

    /// Whether cancellation was asked.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_steer_the_same_migration() {
        let c = Control::new();
        let mine = c.clone();
        assert_eq!(c.granted(), None);
        assert_eq!(c.effective(100.0), 100.0);
        mine.grant(Some(40.0));
        assert_eq!(c.granted(), Some(40.0));
        assert_eq!(c.effective(100.0), 40.0);
        assert_eq!(
            c.effective(10.0),
            10.0,
            "the grant is a ceiling, not a floor"
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            mine.grant(Some(bad));
            assert_eq!(c.granted(), None, "{bad} lifts the grant");
        }
        assert!(!c.is_cancelled());
        mine.cancel();
        assert!(c.is_cancelled());
    }
}
