//! Disk latency. Every disk is probed once a second: a 4 KiB write and `fdatasync` of a file of its
//! own (`.hoard-latency-probe`). A disk whose median probe over the last ten is slower than the
//! server's `slow_disk` setting is slow: the heartbeat says so, and meta places no new members on it
//! while other disks fit. A probe still running counts with its time so far, so that a disk that hangs
//! is slow within seconds; a disk that is fast again is no longer slow ten probes later.
//!
//! Fault injection, for tests only: when the server's environment has `HOARD_FAULT_INJECTION=1`, a file
//! `.hoard-fault-delay` at a disk's root holding a duration (`400ms`) delays every write to that disk,
//! probes and appends, by that much. The file is looked at no more than twice a second.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::disk::Disk;
use crate::store::VolumeStore;

/// Probes a disk's typical latency is taken from.
const PROBES: usize = 10;
/// Probes needed before a disk can be called slow.
const VERDICT: usize = 5;
/// How often each disk is probed.
const EVERY: Duration = Duration::from_secs(1);
/// The file each probe writes.
pub const PROBE_FILE: &str = ".hoard-latency-probe";
/// The fault injector's file (read only with `HOARD_FAULT_INJECTION=1`).
pub const FAULT_FILE: &str = ".hoard-fault-delay";
/// The default `slow_disk`: a disk whose 4 KiB synced write takes longer is slow.
pub const SLOW_DEFAULT: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct DiskLatency {
    recent: Mutex<VecDeque<Duration>>,
    running_since: Mutex<Option<Instant>>,
    slow_after_us: AtomicU64,
    inject: bool,
    /// When the fault file was last looked at, and the delay it held.
    fault: Mutex<(Option<Instant>, Duration)>,
}

impl Default for DiskLatency {
    fn default() -> Self {
        DiskLatency {
            recent: Mutex::default(),
            running_since: Mutex::default(),
            slow_after_us: AtomicU64::new(SLOW_DEFAULT.as_micros() as u64),
            inject: injection_on(),
            fault: Mutex::default(),
        }
    }
}

impl DiskLatency {
    pub fn set_slow_after(&self, d: Duration) {
        self.slow_after_us
            .store(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn record(&self, d: Duration) {
        let mut r = self.recent.lock();
        if r.len() == PROBES {
            r.pop_front();
        }
        r.push_back(d);
    }

    /// The median of the recent probes (a running one counted with its time so far); `None` before
    /// the first.
    pub fn typical(&self) -> Option<Duration> {
        let mut all: Vec<Duration> = self.recent.lock().iter().copied().collect();
        if let Some(since) = *self.running_since.lock() {
            if all.len() == PROBES {
                all.remove(0);
            }
            all.push(since.elapsed());
        }
        all.sort();
        all.get(all.len() / 2).copied()
    }

    /// Slow: the median of at least [`VERDICT`] probes is past `slow_disk`.
    pub fn slow(&self) -> bool {
        let after = Duration::from_micros(self.slow_after_us.load(Ordering::Relaxed));
        let probes = self.recent.lock().len() + usize::from(self.running_since.lock().is_some());
        probes >= VERDICT && self.typical().is_some_and(|t| t > after)
    }

    /// The delay the fault injector puts on each write to the disk at `root`; zero unless enabled.
    pub fn injected(&self, root: &Path) -> Duration {
        if !self.inject {
            return Duration::ZERO;
        }
        let mut f = self.fault.lock();
        if f.0.is_none_or(|t| t.elapsed() > Duration::from_millis(500)) {
            let text = std::fs::read_to_string(root.join(FAULT_FILE)).unwrap_or_default();
            f.1 = humantime::parse_duration(text.trim()).unwrap_or(Duration::ZERO);
            f.0 = Some(Instant::now());
        }
        f.1
    }
}

/// Whether this process's environment turns the fault injector on (read once).
pub fn injection_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("HOARD_FAULT_INJECTION").is_ok_and(|v| v == "1"))
}

/// One probe of `disk`: a 4 KiB write and `fdatasync`, after the injected delay.
fn probe(disk: &Disk) -> std::io::Result<()> {
    std::thread::sleep(disk.latency.injected(&disk.path));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(disk.path.join(PROBE_FILE))?;
    let mut page = [0u8; 4096];
    (&mut page[..]).write_all(&hoard_types::now_ms().to_le_bytes())?;
    f.write_all_at(&page, 0)?;
    f.sync_data()
}

/// Probes every disk of `store` once a second until `stop`, at most one probe per disk at a time. A
/// probe that fails leaves the disk's latency alone: failures are the write path's to report.
pub fn spawn_probes(
    store: Arc<VolumeStore>,
    slow_after: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    for d in store.disks() {
        d.latency.set_slow_after(slow_after);
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            for d in store.disks() {
                if d.failure().is_some() {
                    continue;
                }
                let mut running = d.latency.running_since.lock();
                if running.is_some() {
                    continue;
                }
                *running = Some(Instant::now());
                drop(running);
                let d = Arc::clone(d);
                tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    let ok = probe(&d).is_ok();
                    let took = started.elapsed();
                    *d.latency.running_since.lock() = None;
                    if ok {
                        d.latency.record(took);
                        metrics::histogram!("hoard_volume_disk_probe_seconds")
                            .record(took.as_secs_f64());
                    }
                });
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_is_slow_by_the_median_of_its_recent_probes_and_a_hung_probe_counts() {
        let l = DiskLatency::default();
        l.set_slow_after(Duration::from_millis(100));
        assert!(!l.slow(), "no probes yet");
        l.record(Duration::from_secs(1));
        assert!(!l.slow(), "one slow probe is no verdict");
        for _ in 0..6 {
            l.record(Duration::from_millis(2));
        }
        for _ in 0..4 {
            l.record(Duration::from_millis(900));
        }
        assert!(!l.slow(), "four slow probes of ten are not the median");
        l.record(Duration::from_millis(900));
        l.record(Duration::from_millis(900));
        assert!(l.slow(), "six of ten slow");
        for _ in 0..PROBES {
            l.record(Duration::from_millis(3));
        }
        assert!(!l.slow(), "fast again");
        // A probe that has been running for long counts as what it has taken so far.
        *l.running_since.lock() = Some(Instant::now() - Duration::from_secs(5));
        assert_eq!(l.typical(), Some(Duration::from_millis(3)));
        for _ in 0..5 {
            l.record(Duration::from_secs(5));
        }
        assert!(l.slow());
    }
}
