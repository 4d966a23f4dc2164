//! Reconnect delays: exponential backoff with full jitter.
//!
//! Attempt `n` (from 0) waits a uniformly random time in `[0, min(max, initial × 2ⁿ)]`. Full
//! jitter (rather than a fixed or half-random delay) spreads the reconnects of many nodes
//! that lost the same engine at the same moment, so a restarted engine is not hit by all of
//! them at once.

use std::time::Duration;

/// Delay generator for one agent's reconnect attempts.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    /// Failed attempts since the last reset.
    attempt: u32,
    /// Per agent, so agents in one process draw independent delays without a shared lock.
    rng: fastrand::Rng,
}

impl Backoff {
    /// Starts at `initial`, doubling per attempt up to `max`.
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self::with_rng(initial, max, fastrand::Rng::new())
    }

    /// As [`new`](Self::new), with a given random source (tests seed it).
    pub(crate) fn with_rng(initial: Duration, max: Duration, rng: fastrand::Rng) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
            rng,
        }
    }

    /// Upper bound of the next delay: `min(max, initial × 2^attempt)`.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(31);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt, and counts the attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = u64::try_from(self.ceiling().as_micros()).unwrap_or(u64::MAX);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_micros(self.rng.u64(0..=ceiling))
    }

    /// Failed attempts since the last reset.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to the initial delay, after a connection proved healthy.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap_and_reset_starts_over() {
        let mut b = Backoff::with_rng(
            Duration::from_millis(200),
            Duration::from_secs(10),
            fastrand::Rng::with_seed(7),
        );
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling().as_millis());
            let ceiling = b.ceiling();
            assert!(b.next_delay() <= ceiling);
        }
        assert_eq!(
            ceilings,
            [
                200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000, 10_000
            ]
        );
        assert_eq!(b.attempts(), 10);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(200));
    }

    #[test]
    fn delays_are_jittered_and_never_overflow() {
        let mut b = Backoff::with_rng(
            Duration::from_millis(100),
            Duration::from_millis(100),
            fastrand::Rng::with_seed(1),
        );
        let delays: Vec<_> = (0..50).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(100)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 10, "full jitter spreads the delays");
        let mut huge = Backoff::new(Duration::from_secs(1), Duration::MAX);
        for _ in 0..100 {
            huge.next_delay();
        }
        assert!(huge.ceiling() >= Duration::from_secs(1 << 31));
    }
}
