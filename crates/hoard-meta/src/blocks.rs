//! The block index: `hash -> location`, the one table that grows with the data, read from the engine.
//! Every change (puts, assertions, deletes, undeletes, compaction's re-points) is group-committed by
//! one thread: each batch reads the rows it touches, applies the state machine of [`index_ops`] op by
//! op, writes the rows and the volumes' counters in one synced write, then answers every caller.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc;

use hoard_types::state::{BlockState, VolumeState};
use hoard_types::{BlockHash, BlockLocation, Geometry, VolumeId};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::MetaError;
use crate::core::Core;
use crate::engine::{Cf, WriteBatch};
use crate::index_ops::{self, Change, Op, Outcome};
use crate::rows::BlockRow;
use crate::schema::{self, decode, encode};

/// Result of a block commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    Inserted,
    /// The hash was already live; the existing location stands.
    Exists(BlockLocation),
}

/// Changes of the block index waiting for the committer, and where their outcomes go.
struct Job {
    ops: Vec<(BlockHash, Op)>,
    reply: oneshot::Sender<Result<Vec<Outcome>, MetaError>>,
}

pub(crate) fn location_of(row: &BlockRow) -> BlockLocation {
    BlockLocation {
        volume: row.volume,
        offset: row.offset,
        frag_len: row.frag_len as u64,
        block_len: row.block_len as u64,
        crcs: row.crcs.clone(),
    }
}

pub struct BlockIndex {
    core: Arc<Core>,
    commits: Mutex<Option<mpsc::Sender<Job>>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Ops per group commit at the most.
const MAX_BATCH: usize = 4096;

impl BlockIndex {
    /// The index over `core`, with its committer thread started.
    pub(crate) fn start(core: Arc<Core>) -> Result<BlockIndex, MetaError> {
        let (tx, rx) = mpsc::channel();
        let c = Arc::clone(&core);
        let handle = std::thread::Builder::new()
            .name("meta-committer".into())
            .spawn(move || committer_loop(&c, rx))
            .map_err(|e| MetaError::Engine(format!("spawn committer: {e}")))?;
        Ok(BlockIndex {
            core,
            commits: Mutex::new(Some(tx)),
            committer: Mutex::new(Some(handle)),
        })
    }

    /// Stops the committer after it has answered every queued commit.
    pub fn shutdown(&self) {
        self.commits.lock().take();
        if let Some(h) = self.committer.lock().take() {
            let _ = h.join();
        }
    }

    /// Live locations of `hashes`; `None` for absent or deleted ones.
    pub fn lookup(
        &self,
        hashes: &[BlockHash],
    ) -> Result<Vec<Option<(BlockLocation, u64)>>, MetaError> {
        Ok(self
            .rows(hashes)?
            .into_iter()
            .map(|r| {
                r.filter(|r| r.state == BlockState::Live)
                    .map(|r| (location_of(&r), r.created_unix_ms))
            })
            .collect())
    }

    /// The rows of `hashes` as they are stored, in any state.
    pub fn rows(&self, hashes: &[BlockHash]) -> Result<Vec<Option<BlockRow>>, MetaError> {
        let keys: Vec<&[u8]> = hashes.iter().map(|h| h.as_bytes().as_slice()).collect();
        self.core
            .engine
            .multi_get(Cf::Blocks, &keys)?
            .into_iter()
            .map(|v| v.map(|b| decode::<BlockRow>(&b)).transpose())
            .collect()
    }

    /// Records `hash -> loc` unless the hash is already live in a usable volume; durable (synced)
    /// before it returns.
    pub async fn commit(
        &self,
        hash: BlockHash,
        loc: BlockLocation,
    ) -> Result<CommitOutcome, MetaError> {
        self.check_location(&loc)?;
        let now = self.core.clock.now()?;
        let row = BlockRow {
            volume: loc.volume,
            offset: loc.offset,
            frag_len: loc.frag_len as u32,
            block_len: loc.block_len as u32,
            crcs: loc.crcs,
            created_unix_ms: now,
            state: BlockState::Live,
            asserted_unix_ms: now,
            deleted_unix_ms: 0,
        };
        let volume = row.volume;
        match self.apply(vec![(hash, Op::Insert(row))]).await?.pop() {
            Some(Outcome::Inserted) => Ok(CommitOutcome::Inserted),
            Some(Outcome::Exists(l)) => Ok(CommitOutcome::Exists(l)),
            Some(Outcome::Refused) => Err(MetaError::Conflict(format!(
                "volume {volume} takes no new blocks (it is being compacted, retired or lost): put \
                 the block again"
            ))),
            other => Err(MetaError::Engine(format!("commit answered {other:?}"))),
        }
    }

    /// Presence answers that count as assertions, one per hash: each present row's assertion moves up
    /// (durably, before the answer) when it is older than the refresh. With `revive`, a deleted block
    /// within its grace is live again (a put of its bytes). Rows in unusable volumes are not present.
    pub async fn assert(&self, hashes: &[BlockHash], revive: bool) -> Result<Vec<bool>, MetaError> {
        let ops = hashes.iter().map(|h| (*h, Op::Assert { revive })).collect();
        Ok(self
            .apply(ops)
            .await?
            .iter()
            .map(|o| matches!(o, Outcome::Present(_)))
            .collect())
    }

    /// A delete token: now, on meta's clock.
    pub fn delete_token(&self) -> Result<u64, MetaError> {
        self.core.clock.now()
    }

    /// Deletes `hashes` under `token` (taken from [`BlockIndex::delete_token`] before the deleter read
    /// its references): each one whose last assertion is older than the token minus the reference
    /// window and the refresh. One outcome per hash: deleted, kept, already deleted or not found.
    pub async fn delete(
        &self,
        hashes: &[BlockHash],
        token: u64,
    ) -> Result<Vec<Outcome>, MetaError> {
        let now = self.core.clock.now()?;
        if token == 0 || token > now {
            return Err(MetaError::Invalid(format!(
                "delete token {token} is not one meta handed out (meta's clock reads {now}): take one \
                 with DeleteToken"
            )));
        }
        self.apply(hashes.iter().map(|h| (*h, Op::Delete { token })).collect())
            .await
    }

    /// Brings deleted blocks back within their grace: restored, not deleted, or not found.
    pub async fn undelete(&self, hashes: &[BlockHash]) -> Result<Vec<Outcome>, MetaError> {
        self.apply(hashes.iter().map(|h| (*h, Op::Undelete)).collect())
            .await
    }

    /// Applies `ops` in the committer's next synced batch, in order; one outcome each. A re-point's
    /// new location is checked like a put's.
    pub async fn apply(&self, ops: Vec<(BlockHash, Op)>) -> Result<Vec<Outcome>, MetaError> {
        for (_, op) in &ops {
            if let Op::Repoint { to, .. } = op {
                self.check_location(to)?;
            }
        }
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let (tx, rx) = oneshot::channel();
        {
            let commits = self.commits.lock();
            let sender = commits.as_ref().ok_or(MetaError::ShuttingDown)?;
            sender
                .send(Job { ops, reply: tx })
                .map_err(|_| MetaError::ShuttingDown)?;
        }
        rx.await.map_err(|_| MetaError::ShuttingDown)?
    }

    /// Returns once every change queued before it is written.
    pub async fn barrier(&self) -> Result<(), MetaError> {
        let (tx, rx) = oneshot::channel();
        {
            let commits = self.commits.lock();
            let sender = commits.as_ref().ok_or(MetaError::ShuttingDown)?;
            sender
                .send(Job {
                    ops: Vec::new(),
                    reply: tx,
                })
                .map_err(|_| MetaError::ShuttingDown)?;
        }
        rx.await.map_err(|_| MetaError::ShuttingDown)?.map(|_| ())
    }

    /// A location a row may point at: a known volume, its geometry, inside its capacity.
    fn check_location(&self, loc: &BlockLocation) -> Result<(), MetaError> {
        let t = self.core.lock();
        let vol = t
            .volumes
            .get(&loc.volume)
            .ok_or(MetaError::NoVolume(loc.volume))?;
        let g = Geometry { k: vol.k, m: vol.m };
        if loc.crcs.len() != g.width() as usize {
            return Err(MetaError::Invalid(format!(
                "{} crcs for a {}-member volume",
                loc.crcs.len(),
                g.width()
            )));
        }
        if loc.block_len == 0
            || loc.block_len > hoard_types::MAX_BLOCK_LEN
            || loc.frag_len != g.frag_len(loc.block_len)
        {
            return Err(MetaError::Invalid(format!(
                "fragment length {} does not fit a block of {} bytes in geometry {g}",
                loc.frag_len, loc.block_len
            )));
        }
        if hoard_types::range_end(loc.offset, loc.frag_len).is_none_or(|end| end > vol.capacity) {
            return Err(MetaError::Invalid(format!(
                "fragment at offset {}+{} is past volume {}'s capacity of {}",
                loc.offset, loc.frag_len, loc.volume, vol.capacity
            )));
        }
        Ok(())
    }
}

impl Drop for BlockIndex {
    fn drop(&mut self) {
        self.commits.lock().take();
    }
}

fn committer_loop(core: &Core, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut n = first.ops.len();
        let mut jobs = vec![first];
        while n < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.ops.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        commit_batch(core, jobs);
    }
}

/// Counter changes of one volume: live blocks, live bytes, dead blocks, dead bytes.
type Delta = (i64, i64, i64, i64);

fn add(d: &mut Delta, c: Delta, sign: i64) {
    d.0 += sign * c.0;
    d.1 += sign * c.1;
    d.2 += sign * c.2;
    d.3 += sign * c.3;
}

fn shift(v: u64, by: i64) -> u64 {
    v.saturating_add_signed(by)
}

/// One group commit: the rows as they stand, every op in order (each seeing the ones before it), one
/// synced batch with the volumes' counters, then the answers.
fn commit_batch(core: &Core, jobs: Vec<Job>) {
    let started = std::time::Instant::now();
    let fail = |jobs: Vec<Job>, msg: String| {
        for j in jobs {
            let _ = j.reply.send(Err(MetaError::Engine(msg.clone())));
        }
    };
    let now = match core.clock.now() {
        Ok(t) => t,
        Err(e) => return fail(jobs, e.to_string()),
    };
    let mut hashes: Vec<BlockHash> = jobs
        .iter()
        .flat_map(|j| j.ops.iter().map(|(h, _)| *h))
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    let keys: Vec<&[u8]> = hashes.iter().map(|h| h.as_bytes().as_slice()).collect();
    let stored = match core.engine.multi_get(Cf::Blocks, &keys) {
        Ok(v) => v,
        Err(e) => return fail(jobs, e.to_string()),
    };
    let mut rows: HashMap<BlockHash, Option<BlockRow>> = HashMap::with_capacity(hashes.len());
    for (h, v) in hashes.iter().zip(stored) {
        rows.insert(*h, v.and_then(|b| decode::<BlockRow>(&b).ok()));
    }
    let donor = crate::compaction::Compaction::donor_of(core);
    let usable: HashMap<VolumeId, bool> = {
        let t = core.lock();
        t.volumes
            .iter()
            .map(|(id, v)| {
                (
                    *id,
                    !matches!(v.state, VolumeState::Lost | VolumeState::Retired),
                )
            })
            .collect()
    };
    let policy = core.cfg.delete;
    let mut changed: HashMap<BlockHash, Change> = HashMap::new();
    let mut deltas: BTreeMap<VolumeId, Delta> = BTreeMap::new();
    let mut outcomes: Vec<Vec<Outcome>> = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let mut out = Vec::with_capacity(job.ops.len());
        for (hash, op) in &job.ops {
            let cur = rows.get(hash).cloned().flatten();
            let usable = |v: VolumeId| usable.get(&v).copied().unwrap_or(false);
            // A put's bytes in a volume that takes no new rows: compaction is emptying it (its
            // inspection must not miss a row written after it looked), or it is out of service.
            let refused =
                matches!(op, Op::Insert(new) if new.volume == donor || !usable(new.volume));
            let (change, outcome) = if refused {
                (Change::Keep, Outcome::Refused)
            } else {
                index_ops::apply(op, cur.as_ref(), now, &policy, usable)
            };
            let new = match &change {
                Change::Keep => None,
                Change::Put(r) => Some(Some(r.clone())),
                Change::Remove => Some(None),
            };
            if let Some(new) = new {
                if let Some(old) = &cur {
                    add(
                        deltas.entry(old.volume).or_default(),
                        index_ops::contribution(old),
                        -1,
                    );
                }
                if let Some(r) = &new {
                    add(
                        deltas.entry(r.volume).or_default(),
                        index_ops::contribution(r),
                        1,
                    );
                }
                rows.insert(*hash, new);
                changed.insert(*hash, change);
            }
            match op {
                Op::Delete { .. } => {
                    metrics::counter!("hoard_delete_results_total", "result" => outcome_name(&outcome))
                        .increment(1);
                }
                Op::Undelete => {
                    metrics::counter!("hoard_undelete_results_total", "result" => outcome_name(&outcome))
                        .increment(1);
                }
                _ => {}
            }
            out.push(outcome);
        }
        outcomes.push(out);
    }
    let mut batch = WriteBatch::default();
    for (hash, change) in &changed {
        match change {
            Change::Put(_) => {
                if let Some(Some(r)) = rows.get(hash) {
                    batch.put(Cf::Blocks, hash.as_bytes().to_vec(), encode(r));
                }
            }
            Change::Remove => batch.delete(Cf::Blocks, hash.as_bytes().to_vec()),
            Change::Keep => {}
        }
    }
    let res = core.write_with(batch, |t, b| {
        for (vid, d) in &deltas {
            if *d == (0, 0, 0, 0) {
                continue;
            }
            if let Some(v) = t.volumes.get_mut(vid) {
                v.blocks = shift(v.blocks, d.0);
                v.bytes = shift(v.bytes, d.1);
                v.dead_blocks = shift(v.dead_blocks, d.2);
                v.dead_bytes = shift(v.dead_bytes, d.3);
                schema::put_volume(b, *vid, v);
            }
        }
    });
    let n: usize = jobs.iter().map(|j| j.ops.len()).sum();
    metrics::histogram!("hoard_meta_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("hoard_meta_commit_batch_size").record(n as f64);
    match res {
        Ok(()) => {
            for (j, o) in jobs.into_iter().zip(outcomes) {
                let _ = j.reply.send(Ok(o));
            }
        }
        Err(e) => {
            tracing::error!("block commit failed: {e}");
            fail(jobs, e.to_string());
        }
    }
}

/// The label of a delete's outcome, for metrics and answers.
pub fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Deleted => "deleted",
        Outcome::Kept => "kept",
        Outcome::AlreadyDeleted => "already_deleted",
        Outcome::NotFound => "not_found",
        Outcome::Restored => "restored",
        Outcome::NotDeleted => "not_deleted",
        Outcome::Inserted => "inserted",
        Outcome::Exists(_) => "exists",
        Outcome::Present(_) => "present",
        Outcome::Missing => "missing",
        Outcome::Moved => "moved",
        Outcome::Stale => "stale",
        Outcome::Dropped => "dropped",
        Outcome::Refused => "refused",
    }
}
