//! The link a simulated migration runs over.

use serde::{Deserialize, Serialize};

/// Link and hand-over model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// The link's capacity (bytes/s); no round goes faster, whatever its cap.
    pub capacity: Option<f64>,
    /// CPU/device state sent during stop-and-copy (bytes).
    pub state_bytes: f64,
    /// Time from the last byte to the guest running on the destination (s).
    pub resume_latency_s: f64,
    /// Relative standard deviation of the measured dirty bytes per round (0 = exact model).
    pub noise: f64,
    /// Seed of the noise.
    pub seed: u64,
    /// Length of the dirty-log sample offered to the policy before round 1 (s); 0 = none.
    pub sample_s: f64,
}

/// Points in the pre-migration dirty-log sample.
pub const SAMPLE_POINTS: u32 = 10;

impl Default for Link {
    fn default() -> Self {
        Link {
            capacity: None,
            state_bytes: 0.0,
            resume_latency_s: 0.0,
            noise: 0.0,
            seed: 1,
            sample_s: 1.0,
        }
    }
}

impl Link {
    /// The rate a round capped at `cap` actually runs at.
    pub fn rate(&self, cap: f64) -> f64 {
        self.capacity.map_or(cap, |c| cap.min(c))
    }
}
