//! `qemu-native`: QEMU's own defaults decide and the governor only watches. [`Observed`]
//! stands in for a policy so that the Pilot numbers, bounds and reports the observed rounds
//! like any other: it keeps QEMU's own cap, and records QEMU's choice, which the governor
//! learns one pass late (another pass: QEMU went on; the switch-over: it stopped).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use livemig_policy::stats::FactorTracker;
use livemig_policy::{Audit, Branch, Decision, Policy, RoundStats, StatsError, StopReason};

/// The audit note of every observed round.
pub const OBSERVED_NOTE: &str = "observed only: QEMU's own defaults decide";

/// QEMU's own defaults as a policy that never decides anything itself.
#[derive(Debug)]
pub(crate) struct Observed {
    cap: f64,
    tracker: FactorTracker,
    switched: Arc<AtomicBool>,
}

impl Observed {
    /// Observes a migration under QEMU's own `max-bandwidth` of `cap`; the flag returned says,
    /// once set, that QEMU switched over after the round to be recorded next.
    pub fn new(cap: f64) -> (Observed, Arc<AtomicBool>) {
        let switched = Arc::new(AtomicBool::new(false));
        (
            Observed {
                cap,
                tracker: FactorTracker::default(),
                switched: switched.clone(),
            },
            switched,
        )
    }
}

impl Policy for Observed {
    fn name(&self) -> &'static str {
        "qemu-native"
    }
    fn threshold(&self) -> Option<f64> {
        None
    }
    fn first_cap(&self) -> f64 {
        self.cap
    }
    fn stop_copy_cap(&self) -> f64 {
        self.cap
    }
    fn after_round(&mut self, stats: &RoundStats) -> Result<Decision, StatsError> {
        let f = self.tracker.push(stats)?;
        let mut audit = Audit::measured(&f, stats.cap_bytes_per_s, stats.dirty_bytes, None);
        audit.note = Some(OBSERVED_NOTE.into());
        Ok(if self.switched.load(Ordering::Acquire) {
            Decision::stop(StopReason::DowntimeFits, audit)
        } else {
            Decision::next(self.cap, Branch::Constant, audit)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observed_rounds_go_on_at_qemus_cap_until_the_switch_over() {
        let (mut p, switched) = Observed::new(128e6);
        let mut stats = RoundStats {
            round: 1,
            cap_bytes_per_s: 128e6,
            bytes_sent: 100e6,
            duration_s: 1.0,
            dirty_bytes: 10e6,
        };
        let d = p.after_round(&stats).expect("round 1");
        assert_eq!(d.next_cap(), Some(128e6));
        assert_eq!(d.audit.note.as_deref(), Some(OBSERVED_NOTE));
        switched.store(true, Ordering::Release);
        stats.round = 2;
        let d = p.after_round(&stats).expect("round 2");
        assert_eq!(d.stop_reason(), Some(StopReason::DowntimeFits));
    }
}
