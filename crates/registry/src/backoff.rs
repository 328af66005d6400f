//! How long to wait before trying again after a failure: doubling from a first wait to a
//! last one, back to the first after a success. One rule for every retry loop of fleetd (the
//! registry's followers and stores, the engine's election, registration, the systemd
//! watcher); the agent's per-unit retries add jitter on top (`agent::reconcile::retry_delay`).
//!
//! ```
//! use registry::Backoff;
//! use std::time::Duration;
//! let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
//! let waits: Vec<_> = (0..5).map(|_| backoff.wait()).collect();
//! assert_eq!(waits, [100, 200, 400, 800, 1000].map(Duration::from_millis));
//! backoff.reset();
//! assert_eq!(backoff.wait(), Duration::from_millis(100));
//! ```

use std::time::Duration;

/// Doubling waits between `first` and `last`.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    last: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, last: Duration) -> Backoff {
        Backoff {
            first,
            last,
            next: first,
        }
    }

    /// The wait before the next attempt; the one after is twice as long, up to `last`.
    pub fn wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.last);
        wait
    }

    /// The wait [`Backoff::wait`] would give, without counting an attempt.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Back to the first wait (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}
