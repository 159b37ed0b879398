//! Scrub: every disk reads back every fragment it holds, on a schedule, and checks it against the
//! crc32c in its block record. Bad fragments are reported to meta, which queues a range repair; damaged
//! `.idx` slots are counted and reported.
//!
//! One worker per disk (`scrub/<disk id>`, [`hoard_runtime::Worker`]: a span per unit, so that it can
//! be paused and cancelled like any other job), paced by a per-disk byte rate, jittered so that disks of a cell do not all
//! start together. Progress is checkpointed in `<disk>/scrub.toml` (extent and record position), so a
//! restarted server resumes its pass where it stopped. The knobs (pause, rate, interval, "start now")
//! come from meta with every heartbeat answer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hoard_proto::v1::{self, meta_client::MetaClient};
use hoard_runtime::{
    CancellationToken, Progress, Throttle, Worker, WorkerError, WorkerState, WorkerStatus,
};
use hoard_types::now_ms;
use hoard_types::state::{ProblemKind, ScrubPhase};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::VolumeError;
use crate::disk::Disk;
use crate::extent::Extent;
use crate::format::{BlockRecord, read_checked_toml, write_checked_toml};
use crate::store::VolumeStore;

const CHECKPOINT_FILE: &str = "scrub.toml";
/// Largest span read at once.
const SPAN: u64 = 8 << 20;
/// Progress is written to the checkpoint after this many bytes or this much time, whichever first.
const CHECKPOINT_EVERY: u64 = 64 << 20;
const CHECKPOINT_SECS: u64 = 2;

/// `<disk>/scrub.toml`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub format: u32,
    /// 0 while no pass is running.
    pub pass_started_unix_ms: u64,
    pub last_pass_completed_unix_ms: u64,
    /// Position of the running pass: the extent (by volume id) and the record (in offset order).
    pub volume: u64,
    pub record: u64,
    pub bytes_done: u64,
    pub bad_ranges: u64,
    pub index_damage: u64,
    pub last_pass_bad_ranges: u64,
    pub last_pass_index_damage: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Knobs {
    pub paused: bool,
    pub bytes_per_sec: u64,
    pub interval: Duration,
    pub start_requested_unix_ms: u64,
}

impl Knobs {
    pub fn from_wire(k: &v1::ScrubKnobs) -> Knobs {
        Knobs {
            paused: k.paused,
            bytes_per_sec: k.bytes_per_sec,
            interval: Duration::from_secs(k.interval_secs.clamp(1, MAX_INTERVAL_SECS)),
            start_requested_unix_ms: k.start_requested_unix_ms,
        }
    }
}

/// The scrubbers of one volume server.
pub struct Scrubber {
    store: Arc<VolumeStore>,
    knobs: watch::Sender<Option<Knobs>>,
    status: Mutex<std::collections::HashMap<String, v1::ScrubStatus>>,
    meta: MetaClient<Channel>,
}

fn checkpoint_path(d: &Disk) -> PathBuf {
    d.path.join(CHECKPOINT_FILE)
}

/// A per-disk fraction in [0, 0.1) of the interval, so that disks spread their passes.
/// The longest time between scrub passes a volume server takes from meta: ten years.
const MAX_INTERVAL_SECS: u64 = 10 * 365 * 86_400;

fn jitter(disk_id: &str, interval: Duration) -> Duration {
    let f = (crc32c::crc32c(disk_id.as_bytes()) & 0xffff) as f64 / 65536.0;
    interval.mul_f64(0.1 * f)
}

impl Scrubber {
    pub fn new(store: Arc<VolumeStore>, meta: MetaClient<Channel>) -> Arc<Scrubber> {
        Arc::new(Scrubber {
            store,
            knobs: watch::channel(None).0,
            status: Mutex::new(Default::default()),
            meta,
        })
    }

    /// New knobs from meta (every heartbeat answer).
    pub fn set_knobs(&self, k: Knobs) {
        self.knobs.send_if_modified(|cur| {
            let changed = cur.as_ref().is_none_or(|c| {
                c.paused != k.paused
                    || c.bytes_per_sec != k.bytes_per_sec
                    || c.interval != k.interval
                    || c.start_requested_unix_ms != k.start_requested_unix_ms
            });
            *cur = Some(k);
            changed
        });
    }

    /// The scrub status of a disk, for heartbeats.
    pub fn status(&self, disk_id: &str) -> Option<v1::ScrubStatus> {
        self.status.lock().get(disk_id).cloned()
    }

    /// Starts one worker per disk (`scrub/<disk id>`); they stop when `stop` turns true.
    pub fn spawn(self: &Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut handles = Vec::new();
        for d in self.store.disks() {
            let worker = DiskScrub {
                scrubber: Arc::clone(self),
                disk: Arc::clone(d),
                knobs_rx: self.knobs.subscribe(),
                cp: None,
                born: now_ms(),
                pass: None,
                throttle: Throttle::new(0),
            };
            match hoard_runtime::Registry::global().spawn(worker) {
                Ok(h) => handles.push(h),
                Err(e) => tracing::error!(disk = %d.id, "scrub not started: {e}"),
            }
        }
        tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
            for h in &handles {
                h.cancel();
            }
        });
    }

    fn publish(&self, disk: &Disk, cp: &Checkpoint, state: ScrubPhase, total: u64) {
        let s = v1::ScrubStatus {
            state: state.to_string(),
            pass_started_unix_ms: cp.pass_started_unix_ms,
            last_pass_completed_unix_ms: cp.last_pass_completed_unix_ms,
            bytes_done: cp.bytes_done,
            bytes_total: total,
            bad_ranges: cp.bad_ranges,
            last_pass_bad_ranges: cp.last_pass_bad_ranges,
            index_damage: cp.index_damage,
            last_pass_index_damage: cp.last_pass_index_damage,
        };
        let age = if cp.last_pass_completed_unix_ms == 0 {
            0.0
        } else {
            now_ms().saturating_sub(cp.last_pass_completed_unix_ms) as f64 / 1000.0
        };
        metrics::gauge!("hoard_scrub_pass_age_seconds", "disk" => disk.id.clone()).set(age);
        self.status.lock().insert(disk.id.clone(), s);
    }

    fn load(disk: &Disk) -> Checkpoint {
        match read_checked_toml::<Checkpoint>(&checkpoint_path(disk)) {
            Ok(cp) => cp,
            Err(VolumeError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Checkpoint {
                    format: 1,
                    ..Default::default()
                }
            }
            Err(e) => {
                tracing::warn!(disk = %disk.id, "scrub checkpoint unreadable, starting afresh: {e}");
                Checkpoint {
                    format: 1,
                    ..Default::default()
                }
            }
        }
    }

    fn save(disk: &Disk, cp: &Checkpoint) {
        if let Err(e) = write_checked_toml(&checkpoint_path(disk), cp) {
            tracing::warn!(disk = %disk.id, "cannot write scrub checkpoint: {e}");
        }
    }

    async fn report(&self, volume: u64, member: u32, r: &BlockRecord) {
        let req = v1::ReportVolumeRequest {
            volume,
            member: Some(member),
            kind: ProblemKind::Corrupt.to_string(),
            detail: "scrub: crc32c mismatch".into(),
            offset: r.offset,
            hash: bytes::Bytes::copy_from_slice(r.hash.as_bytes()),
        };
        if let Err(e) = self.meta.clone().report_volume(req).await {
            tracing::warn!(
                volume,
                member,
                "could not report a corrupt fragment: {}",
                e.message()
            );
        }
    }
}

/// One disk's scrub, as a worker: a span of an extent per unit, paced by the scrub throttle, with the
/// pass's position in the disk's checkpoint.
struct DiskScrub {
    scrubber: Arc<Scrubber>,
    disk: Arc<Disk>,
    knobs_rx: watch::Receiver<Option<Knobs>>,
    /// Loaded on the first unit.
    cp: Option<Checkpoint>,
    /// A disk that never finished a pass waits its jitter from here, so that a new cell does not start
    /// every disk at once.
    born: u64,
    pass: Option<Pass>,
    throttle: Throttle,
}

/// A running pass.
struct Pass {
    /// Extents still to scrub, by volume id.
    extents: std::collections::VecDeque<Arc<Extent>>,
    current: Option<Current>,
    total: u64,
    since_checkpoint: u64,
    saved_at: std::time::Instant,
}

/// The extent being scrubbed: its records in offset order, and the next one.
struct Current {
    extent: Arc<Extent>,
    records: Vec<BlockRecord>,
    next: usize,
}

fn io_err(e: impl std::fmt::Display) -> WorkerError {
    WorkerError::transient(e)
}

impl DiskScrub {
    fn due(&self, cp: &Checkpoint, k: &Knobs) -> bool {
        if k.paused || self.disk.failure().is_some() {
            return false;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let next = if cp.last_pass_completed_unix_ms == 0 {
            self.born
                .saturating_add(ms(jitter(&self.disk.id, k.interval)))
        } else {
            cp.last_pass_completed_unix_ms.saturating_add(ms(k
                .interval
                .saturating_add(jitter(&self.disk.id, k.interval))))
        };
        cp.pass_started_unix_ms != 0
            || now_ms() >= next
            || k.start_requested_unix_ms > cp.last_pass_completed_unix_ms
    }

    /// Starts (or resumes, from the checkpoint) a pass over the disk's extents.
    fn start_pass(&mut self, cp: &mut Checkpoint) -> Pass {
        if cp.pass_started_unix_ms == 0 {
            *cp = Checkpoint {
                format: 1,
                pass_started_unix_ms: now_ms(),
                last_pass_completed_unix_ms: cp.last_pass_completed_unix_ms,
                last_pass_bad_ranges: cp.last_pass_bad_ranges,
                last_pass_index_damage: cp.last_pass_index_damage,
                ..Default::default()
            };
            tracing::info!(disk = %self.disk.id, "scrub pass started");
        } else {
            tracing::info!(disk = %self.disk.id, volume = cp.volume, record = cp.record, "scrub pass resumed");
        }
        Scrubber::save(&self.disk, cp);
        let mut extents: Vec<Arc<Extent>> = self
            .scrubber
            .store
            .extents()
            .into_iter()
            .filter(|(_, d)| d.id == self.disk.id)
            .map(|(e, _)| e)
            .collect();
        extents.sort_by_key(|e| e.volume);
        let total = extents.iter().map(|e| e.data_len()).sum();
        Pass {
            extents: extents
                .into_iter()
                .filter(|e| e.volume >= cp.volume)
                .collect(),
            current: None,
            total,
            since_checkpoint: 0,
            saved_at: std::time::Instant::now(),
        }
    }

    /// Loads the next extent's records; `None` when the pass has none left.
    async fn next_extent(
        &self,
        cp: &mut Checkpoint,
        pass: &mut Pass,
    ) -> Result<Option<Current>, WorkerError> {
        let Some(extent) = pass.extents.pop_front() else {
            return Ok(None);
        };
        if extent.volume != cp.volume {
            cp.volume = extent.volume;
            cp.record = 0;
        }
        let ext = Arc::clone(&extent);
        let (mut records, scan) = tokio::task::spawn_blocking(move || {
            let mut recs: Vec<BlockRecord> = Vec::new();
            let scan = ext.for_each_record(|_, r| recs.push(r.clone()))?;
            Ok::<_, VolumeError>((recs, scan))
        })
        .await
        .map_err(io_err)?
        .map_err(io_err)?;
        if cp.record == 0 {
            let damage = scan.bad_slots.len() as u64 + u64::from(scan.cut_bytes > 0);
            if damage > 0 {
                cp.index_damage += damage;
                metrics::counter!("hoard_scrub_index_damage_total").increment(damage);
                tracing::warn!(
                    disk = %self.disk.id,
                    volume = extent.volume,
                    member = extent.member,
                    bad_slots = ?scan.bad_slots,
                    torn_bytes = scan.cut_bytes,
                    "damaged .idx records"
                );
            }
        }
        records.sort_by_key(|r| r.offset);
        let next = (cp.record as usize).min(records.len());
        Ok(Some(Current {
            extent,
            records,
            next,
        }))
    }

    /// Reads and checks one span of the current extent; answers the bytes read.
    async fn scrub_span(&self, cp: &mut Checkpoint, cur: &mut Current) -> Result<u64, WorkerError> {
        let (records, i) = (&cur.records, cur.next);
        let lo = records[i].offset;
        let mut j = i;
        while j + 1 < records.len() && records[j + 1].end() - lo <= SPAN {
            j += 1;
        }
        let hi = records[i..=j].iter().map(|r| r.end()).max().unwrap_or(lo);
        let (ext, generation) = (Arc::clone(&cur.extent), cur.extent.generation());
        let span =
            tokio::task::spawn_blocking(move || ext.read_range(generation, lo, (hi - lo) as u32))
                .await
                .map_err(io_err)?
                .map_err(io_err)?;
        let member = cur.extent.member as usize;
        for r in &records[i..=j] {
            let a = (r.offset - lo) as usize;
            let frag = &span[a..a + r.frag_len as usize];
            if r.crcs
                .get(member)
                .is_none_or(|&c| crc32c::crc32c(frag) != c)
            {
                cp.bad_ranges += 1;
                metrics::counter!("hoard_scrub_bad_ranges_total").increment(1);
                tracing::warn!(
                    disk = %self.disk.id,
                    volume = cur.extent.volume,
                    member,
                    offset = r.offset,
                    block = %r.hash.short(),
                    "scrub found a corrupt fragment"
                );
                self.scrubber
                    .report(cur.extent.volume, member as u32, r)
                    .await;
            }
        }
        let n = hi - lo;
        cp.bytes_done += n;
        metrics::counter!("hoard_scrub_bytes_total").increment(n);
        cur.next = j + 1;
        cp.record = cur.next as u64;
        Ok(n)
    }

    fn finish_pass(&self, cp: &mut Checkpoint, total: u64) {
        cp.last_pass_completed_unix_ms = now_ms();
        cp.last_pass_bad_ranges = cp.bad_ranges;
        cp.last_pass_index_damage = cp.index_damage;
        tracing::info!(
            disk = %self.disk.id,
            bytes = cp.bytes_done,
            bad_ranges = cp.bad_ranges,
            index_damage = cp.index_damage,
            "scrub pass complete"
        );
        cp.pass_started_unix_ms = 0;
        cp.volume = 0;
        cp.record = 0;
        Scrubber::save(&self.disk, cp);
        self.scrubber
            .publish(&self.disk, cp, ScrubPhase::Idle, total);
    }

    /// One unit, with the checkpoint taken out of `self` for the time of it.
    async fn unit(&mut self, cp: &mut Checkpoint) -> Result<WorkerState, WorkerError> {
        let knobs = self.knobs_rx.borrow_and_update().clone();
        let Some(k) = knobs else {
            // No word from meta yet.
            self.scrubber.publish(&self.disk, cp, ScrubPhase::Idle, 0);
            return Ok(WorkerState::Idle);
        };
        self.throttle.set_rate(k.bytes_per_sec);
        if k.paused {
            let total = self.pass.as_ref().map_or(0, |p| p.total);
            self.scrubber
                .publish(&self.disk, cp, ScrubPhase::Paused, total);
            Scrubber::save(&self.disk, cp);
            return Ok(WorkerState::Idle);
        }
        let Some(mut pass) = self.pass.take() else {
            if !self.due(cp, &k) {
                let phase = if cp.pass_started_unix_ms != 0 {
                    ScrubPhase::Running
                } else {
                    ScrubPhase::Idle
                };
                self.scrubber.publish(&self.disk, cp, phase, 0);
                return Ok(WorkerState::Idle);
            }
            self.pass = Some(self.start_pass(cp));
            return Ok(WorkerState::Busy);
        };
        let mut cur = match pass.current.take() {
            Some(c) => c,
            None => match self.next_extent(cp, &mut pass).await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    self.finish_pass(cp, pass.total);
                    return Ok(WorkerState::Busy);
                }
                Err(e) => {
                    self.pass = Some(pass);
                    return Err(e);
                }
            },
        };
        if cur.next >= cur.records.len() {
            cp.record = cur.records.len() as u64;
            self.pass = Some(pass);
            return Ok(WorkerState::Busy);
        }
        let res = self.scrub_span(cp, &mut cur).await;
        pass.current = Some(cur);
        let n = match res {
            Ok(n) => n,
            Err(e) => {
                self.pass = Some(pass);
                return Err(e);
            }
        };
        pass.since_checkpoint += n;
        if pass.since_checkpoint >= CHECKPOINT_EVERY
            || pass.saved_at.elapsed() >= Duration::from_secs(CHECKPOINT_SECS)
        {
            pass.since_checkpoint = 0;
            pass.saved_at = std::time::Instant::now();
            Scrubber::save(&self.disk, cp);
        }
        self.scrubber
            .publish(&self.disk, cp, ScrubPhase::Running, pass.total);
        self.pass = Some(pass);
        let wait = self.throttle.take(n);
        Ok(if wait.is_zero() {
            WorkerState::Busy
        } else {
            WorkerState::Throttled(wait)
        })
    }
}

impl Worker for DiskScrub {
    fn name(&self) -> String {
        format!("scrub/{}", self.disk.id)
    }

    fn status(&self) -> WorkerStatus {
        let (done, detail) = match &self.cp {
            Some(cp) if cp.pass_started_unix_ms != 0 => (
                cp.bytes_done,
                format!("pass running, {} corrupt fragments found", cp.bad_ranges),
            ),
            Some(cp) => (
                0,
                format!(
                    "idle, last pass found {} corrupt fragments",
                    cp.last_pass_bad_ranges
                ),
            ),
            None => (0, "starting".into()),
        };
        WorkerStatus {
            progress: Some(Progress::new(
                done,
                self.pass.as_ref().map_or(0, |p| p.total),
                "bytes",
            )),
            detail,
        }
    }

    async fn work(&mut self, _: &CancellationToken) -> Result<WorkerState, WorkerError> {
        let mut cp = match self.cp.take() {
            Some(cp) => cp,
            None => {
                let d = Arc::clone(&self.disk);
                tokio::task::spawn_blocking(move || Scrubber::load(&d))
                    .await
                    .unwrap_or_default()
            }
        };
        let r = self.unit(&mut cp).await;
        self.cp = Some(cp);
        r
    }

    async fn wait_for_work(&mut self) {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = self.knobs_rx.changed() => {}
        }
    }

    fn throttle(&self) -> Option<Throttle> {
        Some(self.throttle.clone())
    }
}

impl Drop for DiskScrub {
    fn drop(&mut self) {
        // A stopped pass resumes from here.
        if let Some(cp) = &self.cp {
            Scrubber::save(&self.disk, cp);
        }
    }
}
