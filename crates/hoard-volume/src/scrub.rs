//! Scrub: every disk reads back every fragment it holds, on a schedule, and checks it against the
//! crc32c in its block record. Bad fragments are reported to meta, which queues a range repair; damaged
//! `.idx` slots are counted and reported.
//!
//! One worker per disk, paced by a per-disk byte rate, jittered so that disks of a cell do not all
//! start together. Progress is checkpointed in `<disk>/scrub.toml` (extent and record position), so a
//! restarted server resumes its pass where it stopped. The knobs (pause, rate, interval, "start now")
//! come from meta with every heartbeat answer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hoard_proto::v1::{self, meta_client::MetaClient};
use hoard_types::now_ms;
use hoard_types::state::{ProblemKind, ScrubPhase};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::VolumeError;
use crate::disk::Disk;
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

    /// Starts one worker per disk; they stop when `stop` turns true.
    pub fn spawn(self: &Arc<Self>, stop: watch::Receiver<bool>) {
        for d in self.store.disks() {
            let (me, disk, stop) = (Arc::clone(self), Arc::clone(d), stop.clone());
            let span = tracing::info_span!("scrub", node = %self.store.node_id, disk = %d.id);
            tokio::spawn(tracing::Instrument::instrument(
                async move { me.run_disk(disk, stop).await },
                span,
            ));
        }
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

    async fn run_disk(self: Arc<Self>, disk: Arc<Disk>, mut stop: watch::Receiver<bool>) {
        let mut knobs_rx = self.knobs.subscribe();
        let mut cp = {
            let d = Arc::clone(&disk);
            tokio::task::spawn_blocking(move || Scrubber::load(&d))
                .await
                .unwrap_or_default()
        };
        // A disk that never finished a pass waits its jitter first, so that a new cell does not start
        // every disk at once.
        let born = now_ms();
        loop {
            let knobs = knobs_rx.borrow_and_update().clone();
            let state = match &knobs {
                Some(k) if k.paused => ScrubPhase::Paused,
                _ if cp.pass_started_unix_ms != 0 => ScrubPhase::Running,
                _ => ScrubPhase::Idle,
            };
            self.publish(&disk, &cp, state, 0);
            let due = match &knobs {
                None => false,
                Some(k) if k.paused || disk.failure().is_some() => false,
                Some(k) => {
                    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                    let next = if cp.last_pass_completed_unix_ms == 0 {
                        born.saturating_add(ms(jitter(&disk.id, k.interval)))
                    } else {
                        cp.last_pass_completed_unix_ms.saturating_add(ms(k
                            .interval
                            .saturating_add(jitter(&disk.id, k.interval))))
                    };
                    cp.pass_started_unix_ms != 0
                        || now_ms() >= next
                        || k.start_requested_unix_ms > cp.last_pass_completed_unix_ms
                }
            };
            if due {
                match self.pass(&disk, &mut cp, &mut knobs_rx, &mut stop).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(disk = %disk.id, "scrub pass interrupted: {e}");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = knobs_rx.changed() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Runs (or resumes) one pass over a disk. Ok(false) when stopping.
    async fn pass(
        &self,
        disk: &Arc<Disk>,
        cp: &mut Checkpoint,
        knobs_rx: &mut watch::Receiver<Option<Knobs>>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, VolumeError> {
        if cp.pass_started_unix_ms == 0 {
            *cp = Checkpoint {
                format: 1,
                pass_started_unix_ms: now_ms(),
                last_pass_completed_unix_ms: cp.last_pass_completed_unix_ms,
                last_pass_bad_ranges: cp.last_pass_bad_ranges,
                last_pass_index_damage: cp.last_pass_index_damage,
                ..Default::default()
            };
            tracing::info!(disk = %disk.id, "scrub pass started");
        } else {
            tracing::info!(disk = %disk.id, volume = cp.volume, record = cp.record, "scrub pass resumed");
        }
        Scrubber::save(disk, cp);
        let mut extents: Vec<_> = self
            .store
            .extents()
            .into_iter()
            .filter(|(_, d)| d.id == disk.id)
            .map(|(e, _)| e)
            .collect();
        extents.sort_by_key(|e| e.volume);
        let total: u64 = extents.iter().map(|e| e.data_len()).sum();
        let mut since_checkpoint = 0u64;
        let mut saved_at = std::time::Instant::now();
        let mut bucket = Bucket::default();
        let resume_at = cp.volume;
        for extent in extents.into_iter().filter(|e| e.volume >= resume_at) {
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
            .map_err(|e| VolumeError::Internal(e.to_string()))??;
            if cp.record == 0 {
                let damage = scan.bad_slots.len() as u64 + u64::from(scan.cut_bytes > 0);
                if damage > 0 {
                    cp.index_damage += damage;
                    metrics::counter!("hoard_scrub_index_damage_total").increment(damage);
                    tracing::warn!(
                        disk = %disk.id,
                        volume = extent.volume,
                        member = extent.member,
                        bad_slots = ?scan.bad_slots,
                        torn_bytes = scan.cut_bytes,
                        "damaged .idx records"
                    );
                }
            }
            records.sort_by_key(|r| r.offset);
            let generation = extent.generation();
            let member = extent.member as usize;
            let mut i = cp.record as usize;
            while i < records.len() {
                // Pause, knob changes and stop are seen between spans.
                loop {
                    if *stop.borrow() {
                        Scrubber::save(disk, cp);
                        return Ok(false);
                    }
                    let k = knobs_rx.borrow().clone().unwrap_or_default();
                    if !k.paused {
                        bucket.rate = k.bytes_per_sec;
                        break;
                    }
                    self.publish(disk, cp, ScrubPhase::Paused, total);
                    Scrubber::save(disk, cp);
                    tokio::select! {
                        _ = knobs_rx.changed() => {}
                        _ = stop.changed() => return Ok(false),
                    }
                }
                let lo = records[i].offset;
                let mut j = i;
                while j + 1 < records.len() && records[j + 1].end() - lo <= SPAN {
                    j += 1;
                }
                let hi = records[i..=j].iter().map(|r| r.end()).max().unwrap_or(lo);
                let ext = Arc::clone(&extent);
                let span = tokio::task::spawn_blocking(move || {
                    ext.read_range(generation, lo, (hi - lo) as u32)
                })
                .await
                .map_err(|e| VolumeError::Internal(e.to_string()))??;
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
                            disk = %disk.id,
                            volume = extent.volume,
                            member,
                            offset = r.offset,
                            block = %r.hash.short(),
                            "scrub found a corrupt fragment"
                        );
                        self.report(extent.volume, member as u32, r).await;
                    }
                }
                let n = hi - lo;
                cp.bytes_done += n;
                since_checkpoint += n;
                metrics::counter!("hoard_scrub_bytes_total").increment(n);
                i = j + 1;
                cp.record = i as u64;
                if since_checkpoint >= CHECKPOINT_EVERY
                    || saved_at.elapsed() >= Duration::from_secs(CHECKPOINT_SECS)
                {
                    since_checkpoint = 0;
                    saved_at = std::time::Instant::now();
                    Scrubber::save(disk, cp);
                }
                self.publish(disk, cp, ScrubPhase::Running, total);
                bucket.spend(n).await;
            }
            cp.record = records.len() as u64;
        }
        cp.last_pass_completed_unix_ms = now_ms();
        cp.last_pass_bad_ranges = cp.bad_ranges;
        cp.last_pass_index_damage = cp.index_damage;
        tracing::info!(
            disk = %disk.id,
            bytes = cp.bytes_done,
            bad_ranges = cp.bad_ranges,
            index_damage = cp.index_damage,
            "scrub pass complete"
        );
        cp.pass_started_unix_ms = 0;
        cp.volume = 0;
        cp.record = 0;
        Scrubber::save(disk, cp);
        self.publish(disk, cp, ScrubPhase::Idle, total);
        Ok(true)
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

/// A token bucket over scrubbed bytes; rate 0 means unthrottled.
#[derive(Default)]
struct Bucket {
    rate: u64,
    debt: f64,
    last: Option<tokio::time::Instant>,
}

impl Bucket {
    async fn spend(&mut self, bytes: u64) {
        if self.rate == 0 {
            self.debt = 0.0;
            self.last = None;
            return;
        }
        let now = tokio::time::Instant::now();
        let paid = self
            .last
            .map(|t| now.duration_since(t).as_secs_f64() * self.rate as f64)
            .unwrap_or(0.0);
        self.debt = (self.debt - paid).max(0.0) + bytes as f64;
        self.last = Some(now);
        let wait = self.debt / self.rate as f64;
        if wait > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            self.debt = 0.0;
            self.last = Some(tokio::time::Instant::now());
        }
    }
}
