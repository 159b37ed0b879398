//! Deadlines learned from recent latencies, so that a member that accepts connections but does not
//! answer (a process stopped, a disk hung) costs a request about what healthy members take, not a
//! fixed timeout.
//!
//! - A whole-block read that has not finished after 1.5 times the 95th percentile of recent reads
//!   (within 5 ms and 1 s) is raced by a read of every member that takes the first `k` fragments
//!   ([`crate::Pool::read_first_k`]; both in [`crate::Pool::read_hedged`]).
//! - A fragment append (or the fence before a volume's first append) may take 4 times the 99th
//!   percentile of recent appends, at least 1 s and at most `append_timeout`; past it the put moves to
//!   another volume.

use std::collections::VecDeque;
use std::time::Duration;

use std::sync::Mutex;

/// Recent requests a deadline is learned from.
const SAMPLES: usize = 512;
/// Below this many samples the defaults hold.
const WARM: usize = 32;

/// Reads a cold process learns its first hedge delay from.
const COLD: usize = 4;
/// Before there is anything to learn from, a read is hedged after this long.
const HEDGE_DEFAULT: Duration = Duration::from_millis(25);
const HEDGE_MIN: Duration = Duration::from_millis(5);
const HEDGE_MAX: Duration = Duration::from_secs(1);

/// Before there is anything to learn from, an append may take this long (or `append_timeout`, if
/// shorter).
const APPEND_DEFAULT: Duration = Duration::from_secs(3);
const APPEND_MIN: Duration = Duration::from_secs(1);

/// Latencies of one kind of recent request.
#[derive(Default)]
pub struct Latencies {
    recent: Mutex<VecDeque<Duration>>,
}

impl Latencies {
    /// Records how long a request took (a hedged read: its winning read; appends: see the put path,
    /// which leaves out one stopped member's).
    pub fn record(&self, took: Duration) {
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() == SAMPLES {
            r.pop_front();
        }
        r.push_back(took);
    }

    /// The `q` quantile of recent requests, once there are enough of them.
    fn quantile(&self, q: f64) -> Option<Duration> {
        let mut v: Vec<Duration> = {
            let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if r.len() < WARM {
                return None;
            }
            r.iter().copied().collect()
        };
        // Nearest rank: the smallest sample with at least a share `q` of them at or below it.
        let at = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        let (_, x, _) = v.select_nth_unstable(at);
        Some(*x)
    }

    /// How long a whole-block read may take before it is hedged.
    /// A process that has just started (a CLI download) learns from its first few reads: from
    /// [`COLD`] of them, 3x the slowest so far, never past [`HEDGE_DEFAULT`].
    pub fn hedge_after(&self) -> Duration {
        if let Some(p) = self.quantile(0.95) {
            return p.mul_f64(1.5).clamp(HEDGE_MIN, HEDGE_MAX);
        }
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        match r.iter().max() {
            Some(slowest) if r.len() >= COLD => {
                slowest.saturating_mul(3).clamp(HEDGE_MIN, HEDGE_DEFAULT)
            }
            _ => HEDGE_DEFAULT,
        }
    }

    /// How long an append may take before the put gives up on its volume; never past `cap`.
    pub fn append_deadline(&self, cap: Duration) -> Duration {
        let d = self
            .quantile(0.99)
            .map_or(APPEND_DEFAULT, |p| p.saturating_mul(4).max(APPEND_MIN));
        d.min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hedge_delay_follows_recent_reads_within_its_bounds() {
        let l = Latencies::default();
        assert_eq!(
            l.hedge_after(),
            HEDGE_DEFAULT,
            "too few reads to learn from"
        );
        // A cold start: a few reads of 2 ms hedge after 6 ms; slow ones never later than the default.
        let cold = Latencies::default();
        for _ in 0..COLD {
            cold.record(Duration::from_millis(2));
        }
        assert_eq!(cold.hedge_after(), Duration::from_millis(6));
        cold.record(Duration::from_secs(2));
        assert_eq!(cold.hedge_after(), HEDGE_DEFAULT);
        for i in 0..100u64 {
            // 95 reads of 10 ms, 5 slow ones of 3 s.
            l.record(Duration::from_millis(if i % 20 == 0 { 3000 } else { 10 }));
        }
        assert_eq!(l.hedge_after(), Duration::from_millis(15));
        for _ in 0..SAMPLES {
            l.record(Duration::from_micros(100));
        }
        assert_eq!(l.hedge_after(), HEDGE_MIN);
        for _ in 0..SAMPLES {
            l.record(Duration::from_secs(5));
        }
        assert_eq!(l.hedge_after(), HEDGE_MAX);
    }

    #[test]
    fn the_append_deadline_follows_recent_appends_within_its_bounds() {
        let l = Latencies::default();
        let cap = Duration::from_secs(30);
        assert_eq!(l.append_deadline(cap), APPEND_DEFAULT);
        assert_eq!(
            l.append_deadline(Duration::from_millis(200)),
            Duration::from_millis(200)
        );
        for i in 0..200u64 {
            // 49 in 50 appends take 20 ms, the rest 400 ms: the 99th percentile is a slow one.
            l.record(Duration::from_millis(if i % 50 == 0 { 400 } else { 20 }));
        }
        assert_eq!(l.append_deadline(cap), Duration::from_millis(1600));
        for _ in 0..SAMPLES {
            l.record(Duration::from_millis(5));
        }
        assert_eq!(l.append_deadline(cap), APPEND_MIN);
        for _ in 0..SAMPLES {
            l.record(Duration::from_secs(20));
        }
        assert_eq!(l.append_deadline(cap), cap);
    }
}
