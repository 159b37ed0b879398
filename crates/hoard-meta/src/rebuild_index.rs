//! Rebuilding the block index and the volume table from the disks alone, after the metadata tier was
//! lost.
//!
//! Every volume server reports the extents it holds with each heartbeat (volume, member, generation,
//! geometry, capacity). For each volume this metadata tier does not know, the members are taken from the
//! newest generation found per member index, the block records from the `.idx` of surviving members
//! (they are the same in every member), and each block is accepted only if `k` fragments that check
//! against their crc32c decode to bytes whose BLAKE3 is the block's key. Blocks of puts that were never
//! acknowledged may come back or not; none comes back wrong.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use hoard_erasure::Codec;
use hoard_proto::v1;
use hoard_runtime::{
    CancellationToken, Progress, Registry, Worker, WorkerError, WorkerHandle, WorkerState,
    WorkerStatus,
};
use hoard_types::state::{MemberState, VolumeState};
use hoard_types::{BlockHash, BlockLocation, ExtentId, Geometry, VolumeId, now_ms};
use parking_lot::Mutex;

use crate::MetaError;
use crate::blocks::{BlockIndex, CommitOutcome};
use crate::core::Core;
use crate::engine::Cf;
use crate::rows::ReportedExtent;
use crate::rows::{MemberRow, VolumeRow};
use crate::schema::{self, ConfigKey};

/// The highest member generation rebuild-index believes a disk about: far more rebuilds than a volume
/// ever sees, far below the top of the range.
const MAX_RESTORED_GENERATION: u64 = 1 << 48;

/// The worker's name.
pub const WORKER: &str = "rebuild-index";

/// Progress and result of a rebuild.
#[derive(Clone, Debug, Default)]
pub struct IndexRebuildReport {
    pub running: bool,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub cluster_id_adopted: String,
    pub volumes_total: u64,
    pub volumes_done: u64,
    pub volumes_restored: u64,
    pub records_seen: u64,
    pub blocks_accepted: u64,
    pub blocks_already_known: u64,
    pub blocks_rejected: u64,
    pub errors: Vec<String>,
}

struct Found {
    address: String,
    info: ReportedExtent,
}

/// Rebuilding the index from the disks: starting it, and its report.
pub struct IndexRebuild {
    core: Arc<Core>,
    blocks: Arc<BlockIndex>,
    report: Arc<Mutex<IndexRebuildReport>>,
}

impl IndexRebuild {
    pub(crate) fn new(core: Arc<Core>, blocks: Arc<BlockIndex>) -> IndexRebuild {
        IndexRebuild {
            core,
            blocks,
            report: Default::default(),
        }
    }

    pub fn report(&self) -> IndexRebuildReport {
        self.report.lock().clone()
    }

    /// Starts rebuilding the index from the disks as a worker; refused while one runs.
    pub fn start(&self) -> Result<WorkerHandle, MetaError> {
        let running = || MetaError::Conflict("an index rebuild is running already".into());
        if Registry::global().is_running(WORKER) {
            return Err(running());
        }
        *self.report.lock() = IndexRebuildReport {
            running: true,
            started_unix_ms: now_ms(),
            ..Default::default()
        };
        let job = Job {
            core: Arc::clone(&self.core),
            blocks: Arc::clone(&self.blocks),
            report: Arc::clone(&self.report),
            todo: None,
        };
        Registry::global().spawn(job).map_err(|_| running())
    }
}

/// One rebuild, as a worker: the first unit takes stock of what the volume servers hold (and the
/// disks' cluster id), each next unit restores one volume.
struct Job {
    core: Arc<Core>,
    blocks: Arc<BlockIndex>,
    report: Arc<Mutex<IndexRebuildReport>>,
    todo: Option<VecDeque<(VolumeId, Vec<Found>)>>,
}

impl Drop for Job {
    fn drop(&mut self) {
        let mut st = self.report.lock();
        if st.running {
            st.running = false;
            st.finished_unix_ms = now_ms();
            if self.todo.as_ref().is_some_and(|t| !t.is_empty()) {
                st.errors
                    .push("cancelled before every volume was restored".into());
            }
            tracing::info!(
                volumes = st.volumes_restored,
                accepted = st.blocks_accepted,
                rejected = st.blocks_rejected,
                "index rebuild finished"
            );
        }
    }
}

impl Worker for Job {
    fn name(&self) -> String {
        WORKER.to_string()
    }

    fn status(&self) -> WorkerStatus {
        let st = self.report.lock();
        WorkerStatus {
            progress: Some(Progress::new(st.volumes_done, st.volumes_total, "volumes")),
            detail: format!(
                "{} blocks accepted, {} rejected",
                st.blocks_accepted, st.blocks_rejected
            ),
        }
    }

    async fn work(&mut self, _: &CancellationToken) -> Result<WorkerState, WorkerError> {
        if self.todo.is_none() {
            let found = self.take_stock().map_err(|e| {
                self.progress(|s| s.errors.push(e.to_string()));
                WorkerError::permanent(e)
            })?;
            self.progress(|s| s.volumes_total = found.len() as u64);
            self.todo = Some(found.into_iter().collect());
            return Ok(WorkerState::Busy);
        }
        let next = self.todo.as_mut().and_then(VecDeque::pop_front);
        let Some((volume, extents)) = next else {
            return Ok(WorkerState::Done);
        };
        match self.restore_volume(volume, &extents).await {
            Ok(()) => self.progress(|s| s.volumes_restored += 1),
            Err(e) => {
                tracing::warn!(volume, "volume not restored: {e}");
                self.progress(|s| s.errors.push(format!("volume {volume}: {e}")));
            }
        }
        self.progress(|s| s.volumes_done += 1);
        Ok(WorkerState::Busy)
    }
}

impl Job {
    fn progress(&self, f: impl FnOnce(&mut IndexRebuildReport)) {
        f(&mut self.report.lock());
    }

    /// What the volume servers hold that this tier does not know, from their last heartbeats; takes
    /// the disks' cluster id when this tier starts from nothing.
    fn take_stock(&self) -> Result<BTreeMap<VolumeId, Vec<Found>>, MetaError> {
        let (found, labels, has_volumes) = {
            let cell = self.core.lock();
            let mut found: BTreeMap<VolumeId, Vec<Found>> = BTreeMap::new();
            for (node, extents) in &cell.in_service {
                let address = cell
                    .nodes
                    .get(node)
                    .map(|n| n.address.clone())
                    .unwrap_or_default();
                for e in extents {
                    if !cell.volumes.contains_key(&e.id.volume) {
                        found.entry(e.id.volume).or_default().push(Found {
                            address: address.clone(),
                            info: e.clone(),
                        });
                    }
                }
            }
            let mut labels: HashMap<String, usize> = HashMap::new();
            for d in cell
                .disks
                .values()
                .filter(|d| d.extents > 0 && !d.cluster_id.is_empty())
            {
                *labels.entry(d.cluster_id.clone()).or_default() += 1;
            }
            (found, labels, !cell.volumes.is_empty())
        };
        if let Some((id, _)) = labels.iter().max_by_key(|(_, n)| **n) {
            let id = id.clone();
            let changed = self.core.mutate(true, |cell, b| {
                if cell.cluster_id == id {
                    return Ok(false);
                }
                if has_volumes {
                    return Err(MetaError::Invalid(format!(
                        "the disks belong to cluster {id}, but this metadata tier already holds volumes of cluster {}",
                        cell.cluster_id
                    )));
                }
                cell.cluster_id = id.clone();
                b.put(Cf::Config, ConfigKey::ClusterId.bytes(), id.as_bytes().to_vec());
                Ok(true)
            })??;
            if changed {
                tracing::warn!(cluster = %id, "metadata tier takes the cluster id found on the disks");
                self.progress(|s| s.cluster_id_adopted = id.clone());
            }
        }
        Ok(found)
    }

    async fn restore_volume(&self, volume: VolumeId, extents: &[Found]) -> Result<(), MetaError> {
        let first = &extents[0].info;
        let g = Geometry::new(first.k, first.m).map_err(|e| MetaError::Invalid(e.to_string()))?;
        let width = g.width() as usize;
        // What the disks say is checked before it becomes this tier's own: every member agrees on the
        // shape, the capacity is one an extent can have, and generations are ones meta could have
        // handed out.
        if first.capacity == 0 || first.capacity > hoard_types::MAX_EXTENT_CAPACITY {
            return Err(MetaError::Invalid(format!(
                "extents report a capacity of {} bytes",
                first.capacity
            )));
        }
        if let Some(f) = extents.iter().find(|f| {
            f.info.k != first.k
                || f.info.m != first.m
                || f.info.capacity != first.capacity
                || f.info.id.generation == 0
                || f.info.id.generation > MAX_RESTORED_GENERATION
        }) {
            return Err(MetaError::Invalid(format!(
                "the extent on disk {} disagrees with the others (geometry {}+{}, capacity {}, {:?})",
                f.info.disk_id, f.info.k, f.info.m, f.info.capacity, f.info.id
            )));
        }
        // The newest generation of each member.
        let mut members: Vec<Option<&Found>> = vec![None; width];
        for f in extents {
            let r = f.info.id;
            let Some(slot) = members.get_mut(r.member as usize) else {
                continue;
            };
            let newer = slot.is_none_or(|cur| cur.info.id.generation < r.generation);
            if newer {
                *slot = Some(f);
            }
        }
        let row = VolumeRow {
            k: g.k,
            m: g.m,
            state: VolumeState::Sealed,
            members: members
                .iter()
                .map(|m| match m {
                    Some(f) => MemberRow {
                        disk_id: f.info.disk_id.clone(),
                        generation: f.info.id.generation,
                        state: MemberState::Ok,
                    },
                    None => MemberRow {
                        disk_id: String::new(),
                        generation: 0,
                        state: MemberState::Lost,
                    },
                })
                .collect(),
            capacity: first.capacity,
            seal_reason: "restored from disks by rebuild-index".into(),
            created_unix_ms: now_ms(),
            generation_seq: extents
                .iter()
                .map(|f| f.info.id.generation)
                .max()
                .unwrap_or(1),
            ..Default::default()
        };
        self.core.mutate(true, |cell, b| {
            if cell.volumes.contains_key(&volume) {
                return;
            }
            schema::put_volume(b, volume, &row);
            cell.volumes.insert(volume, row.clone());
            if volume >= cell.next_volume {
                // An id restored from the disks is this tier's own from now on.
                cell.next_volume = volume.saturating_add(1);
                schema::put_counter(b, ConfigKey::NextVolume, cell.next_volume);
            }
        })?;
        let sources: Vec<(u32, u64, String)> = members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.map(|f| (i as u32, f.info.id.generation, f.address.clone())))
            .collect();
        // The records, from up to two members (a damaged slot in one is filled from the other).
        let mut records: BTreeMap<u64, v1::BlockRecord> = BTreeMap::new();
        let mut read = 0;
        for (member, generation, address) in &sources {
            let extent = ExtentId {
                volume,
                member: *member,
                generation: *generation,
            };
            let Ok(got) = self.core.ops.read_index(address.clone(), extent).await else {
                continue;
            };
            for r in got {
                records.entry(r.offset).or_insert(r);
            }
            read += 1;
            if read >= 2 {
                break;
            }
        }
        self.progress(|s| s.records_seen += records.len() as u64);
        let codec = Arc::new(Codec::new(g).map_err(|e| MetaError::Invalid(e.to_string()))?);
        let sources = Arc::new(sources);
        let checks = futures::stream::iter(records.into_values())
            .map(|r| {
                let (codec, sources) = (Arc::clone(&codec), Arc::clone(&sources));
                async move { self.restore_block(volume, g, r, &codec, &sources).await }
            })
            .buffer_unordered(8);
        tokio::pin!(checks);
        while let Some(res) = checks.next().await {
            match res {
                Ok(CommitOutcome::Inserted) => self.progress(|s| s.blocks_accepted += 1),
                Ok(CommitOutcome::Exists(_)) => self.progress(|s| s.blocks_already_known += 1),
                Err(_) => self.progress(|s| s.blocks_rejected += 1),
            }
        }
        Ok(())
    }

    /// Reads `k` good fragments of one recorded block, checks that they decode to its hash, and
    /// commits the block.
    async fn restore_block(
        &self,
        volume: VolumeId,
        g: Geometry,
        r: v1::BlockRecord,
        codec: &Codec,
        sources: &[(u32, u64, String)],
    ) -> Result<CommitOutcome, MetaError> {
        let width = g.width() as usize;
        let k = g.k as usize;
        let bad = |why: &str| MetaError::Invalid(why.to_string());
        let hash = BlockHash::from_slice(&r.hash).map_err(|e| bad(&e.to_string()))?;
        if r.crcs.len() != width || r.frag_len as u64 != g.frag_len(r.block_len as u64) {
            return Err(bad("record does not fit the geometry"));
        }
        let mut frags: Vec<Option<Bytes>> = vec![None; width];
        let mut have = 0;
        // Data members first: no decoding needed when they are all there.
        let mut order: Vec<&(u32, u64, String)> = sources.iter().collect();
        order.sort_by_key(|(m, _, _)| *m);
        for (member, generation, address) in order {
            if have >= k {
                break;
            }
            let req = v1::ReadFragmentRequest {
                extent: Some(
                    ExtentId {
                        volume,
                        member: *member,
                        generation: *generation,
                    }
                    .into(),
                ),
                offset: r.offset,
                frag_len: r.frag_len,
                expected_crc: r.crcs[*member as usize],
                hash: r.hash.clone(),
            };
            if let Ok(f) = self.core.ops.read_fragment(address.clone(), req).await {
                frags[*member as usize] = Some(f);
                have += 1;
            }
        }
        if have < k {
            return Err(bad("fewer than k fragments pass their crc"));
        }
        let data = codec.decode_data(frags).map_err(|e| bad(&e.to_string()))?;
        let mut h = blake3::Hasher::new();
        let mut left = r.block_len as usize;
        for d in &data {
            let n = left.min(d.len());
            h.update(&d[..n]);
            left -= n;
        }
        if BlockHash::from_bytes(*h.finalize().as_bytes()) != hash {
            return Err(bad("decoded bytes do not hash to the key"));
        }
        self.blocks
            .commit(
                hash,
                BlockLocation {
                    volume,
                    offset: r.offset,
                    frag_len: r.frag_len as u64,
                    block_len: r.block_len as u64,
                    crcs: r.crcs.clone(),
                },
            )
            .await
    }
}
