//! The read-back watcher: a share of the blocks put through this frontend is read back after a series of
//! delays (by default 1 minute, 1 hour, 1 day and 1 week) and checked against its hash, so that a write
//! that was acknowledged but did not stick is found while it can still be told apart from later damage.
//! Failures are counted and logged with the block's hash.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use hoard_runtime::{CancellationToken, Worker, WorkerError, WorkerState, WorkerStatus};
use hoard_types::BlockHash;
use parking_lot::Mutex;

use crate::{Frontend, FrontendError};

/// (when due, tie-breaker, block, stage), earliest first.
type Due = Reverse<(Instant, u64, BlockHash, usize)>;

#[derive(Default)]
pub(crate) struct Watcher {
    queue: Mutex<BinaryHeap<Due>>,
    seq: std::sync::atomic::AtomicU64,
}

impl Watcher {
    /// Considers a freshly stored block for watching.
    pub fn offer(&self, fe: &Frontend, hash: BlockHash) {
        let cfg = &fe.cfg;
        if cfg.watch_share <= 0.0 || cfg.watch_delays.is_empty() {
            return;
        }
        if rand::random::<f64>() >= cfg.watch_share {
            return;
        }
        let mut q = self.queue.lock();
        if q.len() >= cfg.watch_capacity {
            metrics::counter!("hoard_watcher_dropped_total").increment(1);
            return;
        }
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        q.push(Reverse((
            Instant::now() + cfg.watch_delays[0],
            seq,
            hash,
            0,
        )));
        metrics::gauge!("hoard_watcher_pending").set(q.len() as f64);
    }

    fn due(&self) -> Vec<(BlockHash, usize)> {
        let now = Instant::now();
        let mut q = self.queue.lock();
        let mut out = Vec::new();
        while let Some(Reverse((at, _, _, _))) = q.peek() {
            if *at > now || out.len() >= 64 {
                break;
            }
            let Reverse((_, _, h, stage)) = q.pop().expect("peeked");
            out.push((h, stage));
        }
        metrics::gauge!("hoard_watcher_pending").set(q.len() as f64);
        out
    }

    fn again(&self, fe: &Frontend, hash: BlockHash, stage: usize) {
        let Some(delay) = fe.cfg.watch_delays.get(stage) else {
            return;
        };
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut q = self.queue.lock();
        q.push(Reverse((Instant::now() + *delay, seq, hash, stage)));
        metrics::gauge!("hoard_watcher_pending").set(q.len() as f64);
    }
}

/// The read-back watcher as a worker (`watcher/<holder>`): what is due is read back every half
/// second, until the frontend is dropped.
struct ReadBack {
    fe: Weak<Frontend>,
    name: String,
    checked: u64,
    failed: u64,
}

impl Worker for ReadBack {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn status(&self) -> WorkerStatus {
        WorkerStatus {
            progress: None,
            detail: format!("{} blocks read back, {} failed", self.checked, self.failed),
        }
    }

    async fn work(&mut self, _: &CancellationToken) -> Result<WorkerState, WorkerError> {
        let Some(f) = self.fe.upgrade() else {
            return Ok(WorkerState::Done);
        };
        for (hash, stage) in f.watcher.due() {
            self.checked += 1;
            match f.get(hash, 0, 0).await {
                Ok(_) => {
                    metrics::counter!("hoard_watcher_checks_total", "result" => "ok").increment(1);
                    f.watcher.again(&f, hash, stage + 1);
                }
                // Deleted since it was stored: nothing to check any more.
                Err(FrontendError::NotFound(_)) => {
                    metrics::counter!("hoard_watcher_checks_total", "result" => "deleted")
                        .increment(1);
                }
                Err(e) => {
                    self.failed += 1;
                    metrics::counter!("hoard_watcher_checks_total", "result" => "failed")
                        .increment(1);
                    tracing::error!(block = %hash, stage, "read-back check failed: {e}");
                }
            }
        }
        Ok(WorkerState::Throttled(Duration::from_millis(500)))
    }
}

/// Starts the read-back watcher of `fe`.
pub(crate) fn spawn(fe: Weak<Frontend>, holder: &str) {
    let w = ReadBack {
        fe,
        name: format!("watcher/{holder}"),
        checked: 0,
        failed: 0,
    };
    if let Err(e) = hoard_runtime::Registry::global().spawn(w) {
        tracing::error!("read-back watcher not started: {e}");
    }
}
