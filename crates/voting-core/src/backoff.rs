//! Bounded, jittered exponential backoff for retrying a dependency that is down.

use std::time::Duration;

/// Full jitter: each delay is uniform in `[0, min(max, base * 2^attempt)]`, so a fleet of
/// workers that lost Redis at the same moment does not come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max, attempt: 0 }
    }

    /// The delay before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.base.saturating_mul(1 << self.attempt.min(16)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::random::<f64>()).max(Duration::from_millis(1))
    }

    /// After a success: the next failure starts again from the base delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    /// At most 2 s between tries: after a PostgreSQL failover (~7 s) the worker is back within
    /// a second or two, keeping the results well inside the 10 s they may lag.
    fn default() -> Self {
        Self::new(Duration::from_millis(50), Duration::from_secs(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_but_stay_bounded() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        for _ in 0..50 {
            assert!(backoff.next_delay() <= Duration::from_millis(100));
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(10));
    }
}
