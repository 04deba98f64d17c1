//! A token-bucket rate limiter with time as a parameter (the cap others may change live is
//! `livemig_policy::Control`).

/// Seconds of traffic the bucket may save up (the burst), at the current rate.
pub const DEFAULT_BURST_S: f64 = 0.005;

/// Why a rate was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimiterError {
    #[error("a rate cap must be positive, got {0} bytes/s")]
    Rate(f64),
}

/// Token bucket: `take(n, now)` debits n bytes and says how long to wait before sending them.
/// Tokens accrue at `rate` up to a burst of `rate * burst_s` bytes; a debt is paid off by
/// waiting. Times are seconds on any monotonic clock the caller chooses.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst_s: f64,
    tokens: f64,
    last: f64,
}

impl TokenBucket {
    /// A bucket at `rate` bytes/s (`f64::INFINITY` for no limit), empty at `now`.
    pub fn new(rate: f64, burst_s: f64, now: f64) -> Result<TokenBucket, LimiterError> {
        if rate.is_nan() || rate <= 0.0 {
            return Err(LimiterError::Rate(rate));
        }
        Ok(TokenBucket {
            rate,
            burst_s: burst_s.max(0.0),
            tokens: 0.0,
            last: now,
        })
    }

    /// The current rate.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    fn refill(&mut self, now: f64) {
        if now > self.last {
            if self.rate.is_finite() {
                let cap = self.rate * self.burst_s;
                self.tokens = (self.tokens + self.rate * (now - self.last)).min(cap.max(0.0));
            } else {
                self.tokens = 0.0;
            }
            self.last = now;
        }
    }

    /// Changes the rate from `now` on (what accrued so far accrued at the old rate). A debt
    /// carries over and is paid at the new rate.
    pub fn set_rate(&mut self, rate: f64, now: f64) -> Result<(), LimiterError> {
        if rate.is_nan() || rate <= 0.0 {
            return Err(LimiterError::Rate(rate));
        }
        self.refill(now);
        self.rate = rate;
        if let Some(cap) = Some(rate * self.burst_s).filter(|c| c.is_finite()) {
            self.tokens = self.tokens.min(cap);
        }
        Ok(())
    }

    /// Debits `bytes` at `now`; returns the seconds to wait before sending them (0 if none).
    pub fn take(&mut self, bytes: f64, now: f64) -> f64 {
        self.refill(now);
        if !self.rate.is_finite() {
            return 0.0;
        }
        self.tokens -= bytes;
        if self.tokens >= 0.0 {
            0.0
        } else {
            -self.tokens / self.rate
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `total` bytes in `chunk`-byte frames, advancing a fake clock by each wait.
    fn run(b: &mut TokenBucket, t: &mut f64, total: f64, chunk: f64) {
        let mut sent = 0.0;
        while sent < total {
            *t += b.take(chunk, *t);
            sent += chunk;
        }
    }

    #[test]
    fn long_run_rate_equals_the_cap() {
        let mut t = 0.0;
        let mut b = TokenBucket::new(1e6, DEFAULT_BURST_S, t).expect("valid");
        run(&mut b, &mut t, 10e6, 4096.0);
        // 10 MB at 1 MB/s: 10 s, give or take one frame.
        assert!((t - 10.0).abs() < 0.01, "{t}");
    }

    #[test]
    fn rate_changes_mid_run_take_effect_at_once() {
        let mut t = 0.0;
        let mut b = TokenBucket::new(1e6, DEFAULT_BURST_S, t).expect("valid");
        run(&mut b, &mut t, 1e6, 1000.0);
        b.set_rate(4e6, t).expect("valid");
        let t1 = t;
        run(&mut b, &mut t, 4e6, 1000.0);
        assert!((t1 - 1.0).abs() < 0.01, "{t1}");
        assert!((t - t1 - 1.0).abs() < 0.01, "{}", t - t1);
    }

    #[test]
    fn idle_time_saves_at_most_the_burst() {
        let mut b = TokenBucket::new(1e6, 0.01, 0.0).expect("valid");
        // After 100 s idle only 10 ms worth (10 kB) may go without waiting.
        assert_eq!(b.take(10_000.0, 100.0), 0.0);
        assert!(b.take(10_000.0, 100.0) > 0.009);
    }
}
