//! The block index: `hash -> location`, the one table that grows with the data, read from the engine.
//! Inserts are group-committed by one thread: each batch checks which hashes are live already, writes
//! the new rows and the volumes' counters in one synced write, then answers every caller.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc;

use hoard_types::state::BlockState;
use hoard_types::{BlockHash, BlockLocation, Geometry, VolumeId, now_ms};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::MetaError;
use crate::core::Core;
use crate::engine::{Cf, WriteBatch};
use crate::rows::BlockRow;
use crate::schema::{self, decode, encode};

/// Result of a block commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    Inserted,
    /// The hash was already live; the existing location stands.
    Exists(BlockLocation),
}

struct CommitJob {
    hash: BlockHash,
    row: BlockRow,
    reply: oneshot::Sender<Result<CommitOutcome, MetaError>>,
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
    commits: Mutex<Option<mpsc::Sender<CommitJob>>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

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
        let keys: Vec<&[u8]> = hashes.iter().map(|h| h.as_bytes().as_slice()).collect();
        let vals = self.core.engine.multi_get(Cf::Blocks, &keys)?;
        vals.into_iter()
            .map(|v| match v {
                None => Ok(None),
                Some(b) => {
                    let row: BlockRow = decode(&b)?;
                    Ok((row.state == BlockState::Live)
                        .then(|| (location_of(&row), row.created_unix_ms)))
                }
            })
            .collect()
    }

    /// Records `hash -> loc` unless the hash is already live; durable (synced) before it returns.
    pub async fn commit(
        &self,
        hash: BlockHash,
        loc: BlockLocation,
    ) -> Result<CommitOutcome, MetaError> {
        {
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
            if hoard_types::range_end(loc.offset, loc.frag_len).is_none_or(|end| end > vol.capacity)
            {
                return Err(MetaError::Invalid(format!(
                    "fragment at offset {}+{} is past volume {}'s capacity of {}",
                    loc.offset, loc.frag_len, loc.volume, vol.capacity
                )));
            }
        }
        let row = BlockRow {
            volume: loc.volume,
            offset: loc.offset,
            frag_len: loc.frag_len as u32,
            block_len: loc.block_len as u32,
            crcs: loc.crcs,
            created_unix_ms: now_ms(),
            state: BlockState::Live,
        };
        let (tx, rx) = oneshot::channel();
        {
            let commits = self.commits.lock();
            let sender = commits.as_ref().ok_or(MetaError::ShuttingDown)?;
            sender
                .send(CommitJob {
                    hash,
                    row,
                    reply: tx,
                })
                .map_err(|_| MetaError::ShuttingDown)?;
        }
        rx.await.map_err(|_| MetaError::ShuttingDown)?
    }
}

impl Drop for BlockIndex {
    fn drop(&mut self) {
        self.commits.lock().take();
    }
}

fn committer_loop(core: &Core, rx: mpsc::Receiver<CommitJob>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < 1024 {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        commit_batch(core, jobs);
    }
}

/// One group commit: existence checks, one synced batch, answers.
fn commit_batch(core: &Core, jobs: Vec<CommitJob>) {
    let started = std::time::Instant::now();
    let keys: Vec<&[u8]> = jobs.iter().map(|j| j.hash.as_bytes().as_slice()).collect();
    let existing = match core.engine.multi_get(Cf::Blocks, &keys) {
        Ok(v) => v,
        Err(e) => {
            let msg = e.to_string();
            for j in jobs {
                let _ = j.reply.send(Err(MetaError::Engine(msg.clone())));
            }
            return;
        }
    };
    let mut batch = WriteBatch::default();
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut fresh: HashMap<BlockHash, BlockRow> = HashMap::new();
    let mut deltas: BTreeMap<VolumeId, (u64, u64)> = BTreeMap::new();
    for (job, old) in jobs.iter().zip(existing) {
        let live_old = old
            .and_then(|b| decode::<BlockRow>(&b).ok())
            .filter(|r| r.state == BlockState::Live);
        if let Some(r) = live_old.as_ref().or_else(|| fresh.get(&job.hash)) {
            outcomes.push(CommitOutcome::Exists(location_of(r)));
            continue;
        }
        batch.put(Cf::Blocks, job.hash.as_bytes().to_vec(), encode(&job.row));
        let d = deltas.entry(job.row.volume).or_default();
        d.0 += 1;
        d.1 += job.row.block_len as u64;
        fresh.insert(job.hash, job.row.clone());
        outcomes.push(CommitOutcome::Inserted);
    }
    let res = core.write_with(batch, |t, b| {
        for (vid, (n, bytes)) in &deltas {
            if let Some(v) = t.volumes.get_mut(vid) {
                v.blocks += n;
                v.bytes += bytes;
                schema::put_volume(b, *vid, v);
            }
        }
    });
    metrics::histogram!("hoard_meta_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("hoard_meta_commit_batch_size").record(jobs.len() as f64);
    match res {
        Ok(()) => {
            for (j, o) in jobs.into_iter().zip(outcomes) {
                let _ = j.reply.send(Ok(o));
            }
        }
        Err(e) => {
            tracing::error!("block commit failed: {e}");
            let msg = e.to_string();
            for j in jobs {
                let _ = j.reply.send(Err(MetaError::Engine(msg.clone())));
            }
        }
    }
}
