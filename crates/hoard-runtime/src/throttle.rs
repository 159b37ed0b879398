//! One token bucket for every background job that moves bytes (rebuilds, moves, scrub): a live rate in
//! bytes per second (0: unthrottled), starting empty, refilling up to a burst of one second's worth, and
//! a debt bounded to a minute of the rate, so that one large unit of work never stalls the ones after it
//! for longer than that.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

#[derive(Clone)]
pub struct Throttle {
    inner: Arc<Inner>,
}

struct Inner {
    rate: AtomicU64,
    /// Tokens (bytes) in the bucket, negative while in debt, as of the instant beside them.
    bucket: Mutex<(f64, Option<Instant>)>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Throttle({} B/s)", self.rate())
    }
}

impl Throttle {
    /// A throttle at `rate` bytes per second; 0 is no throttle.
    pub fn new(rate: u64) -> Throttle {
        Throttle {
            inner: Arc::new(Inner {
                rate: AtomicU64::new(rate),
                bucket: Mutex::new((0.0, None)),
            }),
        }
    }

    pub fn rate(&self) -> u64 {
        self.inner.rate.load(Ordering::Relaxed)
    }

    /// Changes the rate; takes effect at the next `spend`.
    pub fn set_rate(&self, rate: u64) {
        if self.inner.rate.swap(rate, Ordering::Relaxed) != rate {
            *self.inner.bucket.lock() = (0.0, None);
        }
    }

    /// How long to wait before `bytes` may be spent, taking them now.
    pub fn take(&self, bytes: u64) -> Duration {
        let rate = self.rate();
        if rate == 0 {
            return Duration::ZERO;
        }
        let rate = rate as f64;
        let now = Instant::now();
        let mut b = self.inner.bucket.lock();
        let refill =
            b.1.map_or(0.0, |t| now.duration_since(t).as_secs_f64() * rate);
        b.0 = ((b.0 + refill).min(rate) - bytes as f64).max(-60.0 * rate);
        b.1 = Some(now);
        if b.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::try_from_secs_f64(-b.0 / rate).unwrap_or(Duration::from_secs(60))
        }
    }

    /// Waits until `bytes` may be spent.
    pub async fn spend(&self, bytes: u64) {
        let wait = self.take(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn throttle_paces_to_the_rate() {
        let t = Throttle::new(0);
        t.set_rate(10 << 20);
        let start = tokio::time::Instant::now();
        // The bucket starts empty: 30 MiB at 10 MiB/s take about 3 s.
        for _ in 0..30 {
            t.spend(1 << 20).await;
        }
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(2900), "{waited:?}");
        assert!(waited <= Duration::from_millis(3100), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_refills_to_a_bounded_burst_and_bounds_its_debt() {
        let t = Throttle::new(1000);
        // Each byte waits for its share of the rate.
        assert_eq!(t.take(500), Duration::from_millis(500));
        tokio::time::advance(Duration::from_secs(10)).await;
        // Idle time refills at most one second's worth.
        assert_eq!(t.take(1000), Duration::ZERO);
        assert_eq!(t.take(1000), Duration::from_secs(1));
        // One huge spend owes at most a minute.
        assert_eq!(t.take(u64::MAX), Duration::from_secs(60));
        // A rate change starts afresh; 0 is no throttle.
        t.set_rate(0);
        assert_eq!(t.take(u64::MAX), Duration::ZERO);
    }
}
