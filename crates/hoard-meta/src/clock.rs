//! Meta's clock: delete tokens and the assertion times they are compared with are read from it. The
//! delete contract needs two things of it (docs/architecture.md, "Deletes"):
//!
//! - **It never runs backwards**, also across restarts: a high-water mark is kept in the config table,
//!   always ahead of every time handed out. On open the clock starts from it; before it hands out a
//!   time within [`MARGIN_MS`] of the mark it moves the mark [`AHEAD_MS`] ahead, synced. A wall clock
//!   set back makes it stand still.
//! - **It never runs much faster than real time**: between two reads it advances by at most the
//!   monotonic time that passed plus [`SLEW`] of it, whatever the wall clock does. A host clock put
//!   right after it was behind (or a restart after downtime) is caught up slowly, so a fresh assertion
//!   never looks old. The delete cutoff allows for the slew and for the jump to the mark at a restart.
//!
//! Being slow is always safe: deletes are only kept longer.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;

use crate::MetaError;
use crate::engine::{Cf, KvEngine, WriteBatch};
use crate::schema::{self, ConfigKey};

/// How far ahead of the time handed out the stored mark is moved: also how far meta's clock can jump
/// at a restart (it starts from the mark), which the delete cutoff allows for.
pub const AHEAD_MS: u64 = 2_000;
/// The mark moves when a time within this of it is handed out.
const MARGIN_MS: u64 = 1_000;
/// The most meta's clock runs ahead of real time while it catches up with the wall: 1/16.
pub const SLEW: f64 = 1.0 / 16.0;

/// Where time comes from: (wall clock, monotonic clock), in milliseconds; the system's, or a test's.
pub type TimeSource = Arc<dyn Fn() -> (u64, u64) + Send + Sync>;

struct Reading {
    /// The last time handed out, and the monotonic time when it was.
    last: u64,
    mono: u64,
    /// The stored mark.
    mark: u64,
}

pub struct MetaClock {
    engine: Arc<dyn KvEngine>,
    source: TimeSource,
    state: Mutex<Reading>,
}

impl MetaClock {
    /// The clock over `engine`'s stored mark, reading time from `source`.
    pub fn open(engine: Arc<dyn KvEngine>, source: TimeSource) -> Result<MetaClock, MetaError> {
        let mark = engine
            .get(Cf::Config, ConfigKey::ClockMark.bytes())?
            .and_then(|v| schema::parse_counter(&v))
            .unwrap_or(0);
        let (wall, mono) = source();
        // A new engine starts at the wall. One that ran before starts where the mark says every time
        // handed out was below (a mark is moved on before a time within MARGIN_MS of it goes out):
        // never behind one of them, at most AHEAD_MS - MARGIN_MS past the last, and the same however
        // often meta restarts without handing a later time out.
        let last = if mark == 0 {
            wall
        } else {
            mark - MARGIN_MS.min(mark)
        };
        Ok(MetaClock {
            engine,
            source,
            state: Mutex::new(Reading { last, mono, mark }),
        })
    }

    /// The system's clocks.
    pub fn system() -> TimeSource {
        static START: OnceLock<Instant> = OnceLock::new();
        let start = *START.get_or_init(Instant::now);
        Arc::new(move || {
            (
                hoard_types::now_ms(),
                start.elapsed().as_millis().min(u64::MAX as u128) as u64,
            )
        })
    }

    /// Now, in Unix milliseconds: never less than any time handed out before, by this process or an
    /// earlier one over the same engine, and never more than real time allows since the last read.
    pub fn now(&self) -> Result<u64, MetaError> {
        let mut st = self.state.lock();
        let (wall, mono) = (self.source)();
        let passed = mono.saturating_sub(st.mono);
        let most = st
            .last
            .saturating_add(passed)
            .saturating_add((passed as f64 * SLEW) as u64);
        let t = wall.min(most).max(st.last);
        if t + MARGIN_MS > st.mark {
            let mark = t + AHEAD_MS;
            let mut b = WriteBatch::default();
            b.put(
                Cf::Config,
                ConfigKey::ClockMark.bytes(),
                mark.to_be_bytes().as_slice(),
            );
            self.engine.write(b, true)?;
            st.mark = mark;
        }
        st.mono = mono;
        st.last = t;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A wall clock the test sets, and a monotonic one it advances.
    fn fake(start: u64) -> (Arc<AtomicU64>, Arc<AtomicU64>, TimeSource) {
        let (w, m) = (Arc::new(AtomicU64::new(start)), Arc::new(AtomicU64::new(0)));
        let (w2, m2) = (Arc::clone(&w), Arc::clone(&m));
        (
            w,
            m,
            Arc::new(move || (w2.load(Ordering::SeqCst), m2.load(Ordering::SeqCst))),
        )
    }

    fn engines() -> Vec<(Arc<dyn KvEngine>, tempfile::TempDir)> {
        let dir = tempfile::tempdir().unwrap();
        let rocks: Arc<dyn KvEngine> =
            Arc::new(crate::RocksEngine::open(&dir.path().join("db")).unwrap());
        vec![
            (
                Arc::new(crate::MemEngine::default()),
                tempfile::tempdir().unwrap(),
            ),
            (rocks, dir),
        ]
    }

    #[test]
    fn time_never_runs_backwards_across_restarts_nor_fast_when_the_wall_jumps() {
        for (engine, _dir) in engines() {
            let (wall, mono, source) = fake(10_000_000);
            let clock = MetaClock::open(Arc::clone(&engine), Arc::clone(&source)).unwrap();
            assert_eq!(clock.now().unwrap(), 10_000_000);
            wall.store(10_003_000, Ordering::SeqCst);
            mono.store(3_000, Ordering::SeqCst);
            let before = clock.now().unwrap();
            assert_eq!(before, 10_003_000);
            // The wall clock is set back an hour within the process: time stands still.
            wall.store(10_003_000 - 3_600_000, Ordering::SeqCst);
            mono.store(4_000, Ordering::SeqCst);
            assert_eq!(clock.now().unwrap(), before);
            drop(clock);
            // Restarts with the wall clock still behind: never behind anything handed out, and not
            // moving on however often meta restarts.
            let mut starts = Vec::new();
            for _ in 0..5 {
                let clock = MetaClock::open(Arc::clone(&engine), Arc::clone(&source)).unwrap();
                starts.push(clock.now().unwrap());
            }
            assert!(
                starts[0] >= before && starts[0] <= before + AHEAD_MS,
                "{starts:?}"
            );
            assert!(starts.iter().all(|s| *s == starts[0]), "{starts:?}");
            // The wall is put right, an hour ahead: the clock catches up at the slew, not at once.
            let clock = MetaClock::open(Arc::clone(&engine), source).unwrap();
            let t0 = clock.now().unwrap();
            wall.store(20_000_000, Ordering::SeqCst);
            mono.store(4_000 + 60_000, Ordering::SeqCst);
            let t1 = clock.now().unwrap();
            assert_eq!(
                t1 - t0,
                60_000 + (60_000.0 * SLEW) as u64,
                "a minute, plus the slew"
            );
            // Caught up, it follows the wall again.
            mono.store(4_000 + 60_000 + 100_000_000, Ordering::SeqCst);
            wall.store(20_000_500, Ordering::SeqCst);
            assert_eq!(clock.now().unwrap(), 20_000_500);
        }
    }
}
