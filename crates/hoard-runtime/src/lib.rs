//! One model for every background job of a Hoard process: a [`Worker`] does one unit of work at a time
//! and says how it went; one runner ([`Registry::spawn`]) drives it, with pause, resume and cancel
//! between units, a wait when it has nothing to do, and backoff when it fails; one [`Throttle`] type
//! paces the jobs that move bytes. Every worker of the process is listed by its [`Registry`] with its
//! state, progress and throttle: `hoard admin workers` and `/api/v1/workers`.
//!
//! Workers keep their own checkpoints (scrub's per disk, verify's cursor, the repair queue in meta):
//! the runner only decides when the next unit runs.

mod throttle;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
pub use tokio_util::sync::CancellationToken;

pub use throttle::Throttle;

/// How a unit of work went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// There is more to do now.
    Busy,
    /// There is more to do after this pause (the worker paces itself).
    Throttled(Duration),
    /// Nothing to do until [`Worker::wait_for_work`] returns.
    Idle,
    /// Finished for good.
    Done,
}

/// A unit of work that failed. The runner backs off (1.5^n seconds, at most a minute) and tries again;
/// a `permanent` error ends the worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerError {
    pub message: String,
    pub permanent: bool,
}

impl WorkerError {
    /// A failure that may pass: the unit is tried again after a backoff.
    pub fn transient(message: impl std::fmt::Display) -> WorkerError {
        WorkerError {
            message: message.to_string(),
            permanent: false,
        }
    }

    /// A failure that will not pass: the worker ends.
    pub fn permanent(message: impl std::fmt::Display) -> WorkerError {
        WorkerError {
            message: message.to_string(),
            permanent: true,
        }
    }
}

/// How far a worker is, in its own unit.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Progress {
    pub done: u64,
    /// 0 when unknown.
    pub total: u64,
    /// What `done` and `total` count: `bytes`, `entries`, `volumes`, `moves`.
    pub unit: &'static str,
}

impl Progress {
    pub fn new(done: u64, total: u64, unit: &'static str) -> Progress {
        Progress { done, total, unit }
    }
}

/// What a worker says of itself; cheap to compute.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WorkerStatus {
    pub progress: Option<Progress>,
    /// One line for people: what it is doing or last did.
    pub detail: String,
}

/// A background job, driven one unit at a time by the runner.
pub trait Worker: Send + 'static {
    /// Its name in listings and commands, unique in the process: `verify`, `scrub/disk-1f0c...`.
    fn name(&self) -> String;

    /// Progress and details now.
    fn status(&self) -> WorkerStatus;

    /// One unit of work. Long units should look at `cancel` and stop early.
    fn work(
        &mut self,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<WorkerState, WorkerError>> + Send;

    /// Waits until there may be work again; called after a unit answered [`WorkerState::Idle`].
    fn wait_for_work(&mut self) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(Duration::from_secs(1))
    }

    /// The throttle that paces it, if any: listed, and changed by operators.
    fn throttle(&self) -> Option<Throttle> {
        None
    }
}

/// Where a worker stands, as the runner sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Busy,
    Throttled,
    Idle,
    Paused,
    /// Waiting out a backoff after a failed unit.
    Backoff,
    Done,
    Cancelled,
    Failed,
}

impl Phase {
    /// Whether the worker has stopped for good.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Done | Phase::Cancelled | Phase::Failed)
    }
}

/// A worker as listed: its name, phase, progress, throttle and errors.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkerInfo {
    pub name: String,
    pub phase: Phase,
    pub paused: bool,
    pub status: WorkerStatus,
    /// Bytes per second; absent for workers without a throttle, 0 for unthrottled.
    pub throttle_bytes_per_sec: Option<u64>,
    /// Failed units in a row.
    pub errors: u32,
    pub last_error: Option<String>,
    pub started_unix_ms: u64,
}

struct Slot {
    info: Mutex<WorkerInfo>,
    pause: watch::Sender<bool>,
    cancel: CancellationToken,
    throttle: Option<Throttle>,
    done: tokio::sync::Notify,
}

/// A running (or finished) worker: its controls.
#[derive(Clone)]
pub struct WorkerHandle {
    slot: Arc<Slot>,
}

impl WorkerHandle {
    pub fn info(&self) -> WorkerInfo {
        let mut i = self.slot.info.lock().clone();
        i.throttle_bytes_per_sec = self.slot.throttle.as_ref().map(Throttle::rate);
        i
    }

    /// Stops starting units (the running one finishes).
    pub fn pause(&self) {
        let _ = self.slot.pause.send(true);
    }

    pub fn resume(&self) {
        let _ = self.slot.pause.send(false);
    }

    /// Ends the worker: the running unit sees the token, no other starts.
    pub fn cancel(&self) {
        self.slot.cancel.cancel();
    }

    /// Sets the worker's throttle; `false` when it has none.
    pub fn set_rate(&self, bytes_per_sec: u64) -> bool {
        match &self.slot.throttle {
            Some(t) => {
                t.set_rate(bytes_per_sec);
                true
            }
            None => false,
        }
    }

    /// Waits until the worker has stopped for good.
    pub async fn finished(&self) {
        loop {
            let notified = self.slot.done.notified();
            if self.info().phase.is_final() {
                return;
            }
            notified.await;
        }
    }
}

/// What went wrong with a command to a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlError {
    NoSuchWorker(String),
    /// A worker of that name is running already.
    Running(String),
    NoThrottle(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::NoSuchWorker(n) => write!(f, "no worker {n}"),
            ControlError::Running(n) => write!(f, "worker {n} is running already"),
            ControlError::NoThrottle(n) => write!(f, "worker {n} has no throttle"),
        }
    }
}

impl std::error::Error for ControlError {}

/// The workers of a process.
#[derive(Default)]
pub struct Registry {
    workers: Mutex<BTreeMap<String, WorkerHandle>>,
}

/// The longest backoff after failed units.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

fn backoff(errors: u32) -> Duration {
    let secs = 1.5f64.powi(errors.saturating_sub(1).min(10) as i32);
    Duration::from_secs_f64(secs).min(MAX_BACKOFF)
}

impl Registry {
    /// The process's registry, shared by every role it runs.
    pub fn global() -> &'static Registry {
        static GLOBAL: OnceLock<Registry> = OnceLock::new();
        GLOBAL.get_or_init(Registry::default)
    }

    /// Starts `worker` on the current runtime. A finished worker of the same name is replaced; a
    /// running one is not (`ControlError::Running`).
    pub fn spawn<W: Worker>(&self, mut worker: W) -> Result<WorkerHandle, ControlError> {
        let name = worker.name();
        let mut workers = self.workers.lock();
        if workers
            .get(&name)
            .is_some_and(|h| !h.info().phase.is_final())
        {
            return Err(ControlError::Running(name));
        }
        let slot = Arc::new(Slot {
            info: Mutex::new(WorkerInfo {
                name: name.clone(),
                phase: Phase::Busy,
                paused: false,
                status: worker.status(),
                throttle_bytes_per_sec: None,
                errors: 0,
                last_error: None,
                started_unix_ms: now_ms(),
            }),
            pause: watch::channel(false).0,
            cancel: CancellationToken::new(),
            throttle: worker.throttle(),
            done: tokio::sync::Notify::new(),
        });
        let handle = WorkerHandle {
            slot: Arc::clone(&slot),
        };
        workers.insert(name, handle.clone());
        drop(workers);
        tokio::spawn(async move {
            run(&mut worker, &slot).await;
            slot.info.lock().status = worker.status();
            slot.done.notify_waiters();
        });
        Ok(handle)
    }

    /// Every worker, by name.
    pub fn list(&self) -> Vec<WorkerInfo> {
        self.workers
            .lock()
            .values()
            .map(WorkerHandle::info)
            .collect()
    }

    /// Whether a worker of that name runs (has not stopped for good).
    pub fn is_running(&self, name: &str) -> bool {
        self.get(name).is_ok_and(|h| !h.info().phase.is_final())
    }

    pub fn get(&self, name: &str) -> Result<WorkerHandle, ControlError> {
        self.workers
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| ControlError::NoSuchWorker(name.to_string()))
    }

    /// The worker named `name`, or when there is none, every worker under `name/` (`scrub` names all of
    /// `scrub/<disk>`).
    pub fn matching(&self, name: &str) -> Result<Vec<WorkerHandle>, ControlError> {
        let workers = self.workers.lock();
        if let Some(h) = workers.get(name) {
            return Ok(vec![h.clone()]);
        }
        let under = format!("{}/", name.trim_end_matches('/'));
        let found: Vec<WorkerHandle> = workers
            .iter()
            .filter(|(n, _)| n.starts_with(&under))
            .map(|(_, h)| h.clone())
            .collect();
        if found.is_empty() {
            return Err(ControlError::NoSuchWorker(name.to_string()));
        }
        Ok(found)
    }

    /// Cancels every worker whose name starts with `prefix` (all with ""), and waits for them.
    pub async fn cancel_all(&self, prefix: &str) {
        let handles: Vec<WorkerHandle> = self
            .workers
            .lock()
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, h)| h.clone())
            .collect();
        for h in &handles {
            h.cancel();
        }
        for h in handles {
            h.finished().await;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn set_phase(slot: &Slot, phase: Phase) {
    slot.info.lock().phase = phase;
}

/// The runner: units until done, failed for good or cancelled; pauses, waits and backoffs between them,
/// each cut short by a cancel.
async fn run<W: Worker>(worker: &mut W, slot: &Slot) {
    let mut paused = slot.pause.subscribe();
    let cancel = slot.cancel.clone();
    let name = worker.name();
    loop {
        if cancel.is_cancelled() {
            set_phase(slot, Phase::Cancelled);
            return;
        }
        if *paused.borrow_and_update() {
            {
                let mut i = slot.info.lock();
                i.phase = Phase::Paused;
                i.paused = true;
            }
            tokio::select! {
                _ = paused.wait_for(|p| !*p) => {}
                _ = cancel.cancelled() => continue,
            }
            slot.info.lock().paused = false;
        }
        set_phase(slot, Phase::Busy);
        let outcome = tokio::select! {
            r = worker.work(&cancel) => r,
            _ = cancel.cancelled() => continue,
        };
        slot.info.lock().status = worker.status();
        let wait = match outcome {
            Ok(state) => {
                {
                    let mut i = slot.info.lock();
                    i.errors = 0;
                }
                match state {
                    WorkerState::Busy => {
                        tokio::task::yield_now().await;
                        continue;
                    }
                    WorkerState::Throttled(d) => {
                        set_phase(slot, Phase::Throttled);
                        Some(d)
                    }
                    WorkerState::Idle => {
                        set_phase(slot, Phase::Idle);
                        tokio::select! {
                            _ = worker.wait_for_work() => {}
                            _ = cancel.cancelled() => {}
                            _ = paused.changed() => {}
                        }
                        None
                    }
                    WorkerState::Done => {
                        set_phase(slot, Phase::Done);
                        return;
                    }
                }
            }
            Err(e) => {
                metrics::counter!("hoard_worker_errors_total", "worker" => kind_of(&name))
                    .increment(1);
                let errors = {
                    let mut i = slot.info.lock();
                    i.errors += 1;
                    i.last_error = Some(e.message.clone());
                    i.errors
                };
                if e.permanent {
                    tracing::error!(worker = %name, "worker failed: {}", e.message);
                    set_phase(slot, Phase::Failed);
                    return;
                }
                tracing::warn!(worker = %name, errors, "unit of work failed: {}", e.message);
                set_phase(slot, Phase::Backoff);
                Some(backoff(errors))
            }
        };
        if let Some(d) = wait {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = cancel.cancelled() => {}
            }
        }
    }
}

/// The bounded label of a worker for metrics: its name up to the first `/` (`scrub/disk-1` counts as
/// `scrub`).
fn kind_of(name: &str) -> String {
    name.split('/').next().unwrap_or(name).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Counts to `limit`, one per unit; fails the units listed in `fail_at` once each.
    struct Counter {
        name: String,
        n: Arc<AtomicU64>,
        limit: u64,
        fail_at: Vec<u64>,
    }

    impl Worker for Counter {
        fn name(&self) -> String {
            self.name.clone()
        }
        fn status(&self) -> WorkerStatus {
            WorkerStatus {
                progress: Some(Progress::new(
                    self.n.load(Ordering::SeqCst),
                    self.limit,
                    "units",
                )),
                detail: String::new(),
            }
        }
        async fn work(&mut self, _: &CancellationToken) -> Result<WorkerState, WorkerError> {
            let n = self.n.load(Ordering::SeqCst);
            if let Some(i) = self.fail_at.iter().position(|&f| f == n) {
                self.fail_at.remove(i);
                return Err(WorkerError::transient(format!("unit {n} failed")));
            }
            if n >= self.limit {
                return Ok(WorkerState::Done);
            }
            self.n.store(n + 1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(WorkerState::Busy)
        }
    }

    fn counter(name: &str, limit: u64, fail_at: Vec<u64>) -> (Counter, Arc<AtomicU64>) {
        let n = Arc::new(AtomicU64::new(0));
        (
            Counter {
                name: name.into(),
                n: Arc::clone(&n),
                limit,
                fail_at,
            },
            n,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_runs_to_done_and_backs_off_after_a_failure() {
        let reg = Registry::default();
        let (w, n) = counter("count", 5, vec![2]);
        let h = reg.spawn(w).unwrap();
        h.finished().await;
        let info = h.info();
        assert_eq!(info.phase, Phase::Done);
        assert_eq!(n.load(Ordering::SeqCst), 5);
        assert_eq!(info.status.progress.unwrap().done, 5);
        // The failure was recorded, and cleared by the next good unit.
        assert_eq!(info.last_error.as_deref(), Some("unit 2 failed"));
        assert_eq!(info.errors, 0);
        assert_eq!(reg.list().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn pause_stops_units_resume_continues_and_cancel_ends() {
        let reg = Registry::default();
        let (w, n) = counter("count", 1_000_000, vec![]);
        let h = reg.spawn(w).unwrap();
        tokio::time::sleep(Duration::from_millis(55)).await;
        h.pause();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let at = n.load(Ordering::SeqCst);
        assert!(at > 0);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(n.load(Ordering::SeqCst), at, "a paused worker ran");
        assert_eq!(h.info().phase, Phase::Paused);
        // A second worker of the same name is refused while this one lives.
        let (again, _) = counter("count", 1, vec![]);
        assert!(matches!(reg.spawn(again), Err(ControlError::Running(_))));
        h.resume();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            n.load(Ordering::SeqCst) > at,
            "a resumed worker did not run"
        );
        h.cancel();
        h.finished().await;
        assert_eq!(h.info().phase, Phase::Cancelled);
        // Once it has stopped, the name can be used again.
        let (again, _) = counter("count", 1, vec![]);
        reg.spawn(again).unwrap().finished().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_matches_itself_or_the_workers_under_it() {
        let reg = Registry::default();
        for name in ["scrub/d1", "scrub/d2", "scrubber", "verify"] {
            let (w, _) = counter(name, 1_000_000, vec![]);
            reg.spawn(w).unwrap();
        }
        let names = |n: &str| -> Vec<String> {
            let mut v: Vec<String> = reg
                .matching(n)
                .unwrap()
                .iter()
                .map(|h| h.info().name)
                .collect();
            v.sort();
            v
        };
        assert_eq!(names("verify"), ["verify"]);
        assert_eq!(names("scrub"), ["scrub/d1", "scrub/d2"]);
        assert_eq!(names("scrub/"), ["scrub/d1", "scrub/d2"]);
        assert_eq!(names("scrub/d2"), ["scrub/d2"]);
        assert!(matches!(
            reg.matching("scru"),
            Err(ControlError::NoSuchWorker(_))
        ));
        reg.cancel_all("").await;
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert!(backoff(3) > backoff(2));
        assert_eq!(backoff(100), backoff(11));
        assert!(backoff(100) <= MAX_BACKOFF);
        assert_eq!(kind_of("scrub/disk-1"), "scrub");
    }
}
