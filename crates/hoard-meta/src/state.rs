//! The metadata tier's logic: the block index with group-committed inserts, and the cell tables (volumes,
//! disks, nodes) with leases and placement.
//!
//! The cell tables are small (thousands of rows) and live in memory, written through to the engine. The
//! block index is the one table that grows with the data and is read from the engine.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use hoard_proto::v1;
use hoard_types::{BlockHash, BlockLocation, Geometry, VolumeId, now_ms};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::MetaError;
use crate::engine::{Cf, KvEngine, WriteBatch};
use crate::placement::{self, Candidate};
use crate::records::{
    self, BLOCK_LIVE, BlockRow, DiskRow, MemberRow, NodeRow, VolumeRow, decode, encode,
};
use crate::volume_ops::VolumeOps;

pub const STATE_CREATING: &str = "creating";
pub const STATE_OPEN: &str = "open";
pub const STATE_SEALED: &str = "sealed";
pub const STATE_RETIRED: &str = "retired";
pub const STATE_DEGRADED: &str = "degraded";
pub const STATE_LOST: &str = "lost";
pub const MEMBER_OK: &str = "ok";
pub const MEMBER_LOST: &str = "lost";

const KEY_CLUSTER_ID: &[u8] = b"cluster_id";
const KEY_NEXT_VOLUME: &[u8] = b"next_volume";

#[derive(Clone, Debug)]
pub struct MetaConfig {
    /// Geometry of new volumes.
    pub geometry: Geometry,
    /// Bytes of each member's data region.
    pub extent_capacity: u64,
    /// How long a write lease lasts without renewal.
    pub lease: Duration,
    /// A node silent for longer is down.
    pub heartbeat_grace: Duration,
    /// Keep at most `m` members of a volume on one node (refuse to place otherwise).
    pub node_failure_domain: bool,
    /// A disk filled past this share of its capacity (counting the room its open extents may still
    /// take) takes no new members.
    pub high_water: f64,
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            geometry: Geometry::DEFAULT,
            extent_capacity: 1 << 30,
            lease: Duration::from_secs(30),
            heartbeat_grace: Duration::from_secs(15 * 60),
            node_failure_domain: true,
            high_water: 0.9,
        }
    }
}

#[derive(Default)]
pub(crate) struct Cell {
    pub(crate) cluster_id: String,
    pub(crate) next_volume: VolumeId,
    pub(crate) volumes: BTreeMap<VolumeId, VolumeRow>,
    pub(crate) disks: BTreeMap<String, DiskRow>,
    pub(crate) nodes: BTreeMap<String, NodeRow>,
    /// Planned and running rebuilds, by volume.
    pub(crate) repairs: BTreeMap<VolumeId, crate::records::RepairRow>,
    /// Corrupt fragments to rewrite in place, by (volume, member, offset).
    pub(crate) ranges: BTreeMap<(VolumeId, u32, u64), crate::records::RangeRow>,
    /// Member moves (rebalance, drain), by id.
    pub(crate) moves: BTreeMap<u64, crate::records::MoveRow>,
    pub(crate) next_move: u64,
    pub(crate) rebalance: crate::records::RebalanceRow,
    pub(crate) knobs: crate::records::KnobsRow,
    pub(crate) scrub_knobs: crate::records::ScrubKnobsRow,
    /// The last scrub status each disk reported. Memory only: the checkpoints live on the disks.
    pub(crate) scrub: BTreeMap<String, v1::ScrubStatus>,
    /// The extents each volume server last said it holds. Memory only.
    pub(crate) in_service: BTreeMap<String, Vec<v1::ExtentInfo>>,
    pub(crate) counters: crate::records::RepairCountersRow,
    /// (time, bytes) of recent rebuild commits, for the rate.
    pub(crate) recent: std::collections::VecDeque<(u64, u64)>,
    /// Disks a frontend reported failing since their node's last heartbeat: no new members go there
    /// until the node proves itself alive again. Memory only.
    pub(crate) suspect: std::collections::HashSet<String>,
}

/// A disk as placement sees it (for any disk meta knows, healthy or not).
pub(crate) fn candidate_of(cell: &Cell, disk: &str) -> Option<Candidate> {
    let d = cell.disks.get(disk)?;
    let n = cell.nodes.get(&d.node_id)?;
    Some(Candidate {
        disk_id: disk.to_string(),
        node_id: d.node_id.clone(),
        zone: n.labels.get("zone").cloned().unwrap_or_default(),
        rack: n.labels.get("rack").cloned().unwrap_or_default(),
        free_bytes: d.free_bytes,
        members: 0,
    })
}

/// The most bytes meta believes one disk reports (1 PiB): sums over many disks cannot overflow.
const MAX_DISK_BYTES: u64 = 1 << 50;

/// A heartbeat with every size clamped to what a disk or extent can hold, so that arithmetic on them
/// (placement, rebalance plans, verify) cannot overflow whatever a server reports.
fn sanitized(req: &v1::HeartbeatRequest) -> v1::HeartbeatRequest {
    let mut req = req.clone();
    req.interval_ms = req.interval_ms.clamp(100, 3_600_000);
    for d in &mut req.disks {
        d.capacity_bytes = d.capacity_bytes.min(MAX_DISK_BYTES);
        d.used_bytes = d.used_bytes.min(MAX_DISK_BYTES);
        d.free_bytes = d.free_bytes.min(d.capacity_bytes);
        d.trash_bytes = d.trash_bytes.min(MAX_DISK_BYTES);
    }
    for e in &mut req.extents {
        e.capacity = e.capacity.min(hoard_types::MAX_EXTENT_CAPACITY);
        e.data_len = e.data_len.min(e.capacity);
    }
    req
}

/// What meta answers a heartbeat.
pub struct HeartbeatAnswer {
    pub cluster_id: String,
    pub retire: Vec<v1::ExtentRef>,
    pub adopt_disks: Vec<String>,
}

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

pub struct MetaState {
    engine: Arc<dyn KvEngine>,
    cfg: MetaConfig,
    cell: Mutex<Cell>,
    /// Taken around every write of cell rows, so that rows reach the engine in the order in which they
    /// were changed in memory.
    persist: Mutex<()>,
    commits: Mutex<Option<mpsc::Sender<CommitJob>>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    ops: Arc<dyn VolumeOps>,
    pub(crate) index_rebuild: crate::rebuild_index::IndexRebuildJob,
    pub(crate) verify_job: crate::verify::VerifyJob,
}

fn location_of(row: &BlockRow) -> BlockLocation {
    BlockLocation {
        volume: row.volume,
        offset: row.offset,
        frag_len: row.frag_len as u64,
        block_len: row.block_len as u64,
        crcs: row.crcs.clone(),
    }
}

impl MetaState {
    /// Loads the cell tables and starts the block committer.
    pub fn open(
        engine: Arc<dyn KvEngine>,
        cfg: MetaConfig,
        ops: Arc<dyn VolumeOps>,
    ) -> Result<Arc<MetaState>, MetaError> {
        let mut cell = Cell::default();
        match engine.get(Cf::Config, KEY_CLUSTER_ID)? {
            Some(id) => cell.cluster_id = String::from_utf8_lossy(&id).into_owned(),
            None => {
                cell.cluster_id = hoard_types::random_id("cell");
                let mut b = WriteBatch::default();
                b.put(Cf::Config, KEY_CLUSTER_ID, cell.cluster_id.as_bytes());
                engine.write(b, true)?;
                tracing::info!(cluster = %cell.cluster_id, "new metadata tier");
            }
        }
        cell.next_volume = match engine.get(Cf::Config, KEY_NEXT_VOLUME)? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v.try_into().expect("8 bytes")),
            _ => 1,
        };
        let mut err = None;
        engine.scan(Cf::Volumes, b"", &mut |k, v| {
            match (
                k.try_into().map(u64::from_be_bytes),
                decode::<VolumeRow>("volumes", v),
            ) {
                (Ok(id), Ok(row)) => {
                    cell.volumes.insert(id, row);
                }
                (_, Err(e)) => err = Some(e),
                (Err(_), _) => {
                    err = Some(MetaError::Corrupt {
                        table: "volumes".into(),
                        problem: "bad key".into(),
                    })
                }
            }
            true
        })?;
        engine.scan(Cf::Disks, b"", &mut |k, v| {
            match decode::<DiskRow>("disks", v) {
                Ok(row) => {
                    cell.disks
                        .insert(String::from_utf8_lossy(k).into_owned(), row);
                }
                Err(e) => err = Some(e),
            }
            true
        })?;
        engine.scan(Cf::Nodes, b"", &mut |k, v| {
            match decode::<NodeRow>("nodes", v) {
                Ok(row) => {
                    cell.nodes
                        .insert(String::from_utf8_lossy(k).into_owned(), row);
                }
                Err(e) => err = Some(e),
            }
            true
        })?;
        engine.scan(Cf::Repair, b"", &mut |k, v| {
            match crate::repair::RepairKey::parse(k) {
                Some(crate::repair::RepairKey::Rebuild(id)) => {
                    match decode::<crate::records::RepairRow>("repair", v) {
                        Ok(row) => {
                            cell.repairs.insert(id, row);
                        }
                        Err(e) => err = Some(e),
                    }
                }
                Some(crate::repair::RepairKey::Move(id)) => {
                    match decode::<crate::records::MoveRow>("repair", v) {
                        Ok(row) => {
                            cell.moves.insert(id, row);
                        }
                        Err(e) => err = Some(e),
                    }
                }
                Some(crate::repair::RepairKey::Range(vol, member, off)) => {
                    match decode::<crate::records::RangeRow>("repair", v) {
                        Ok(row) => {
                            cell.ranges.insert((vol, member, off), row);
                        }
                        Err(e) => err = Some(e),
                    }
                }
                None => {
                    err = Some(MetaError::Corrupt {
                        table: "repair".into(),
                        problem: "bad key".into(),
                    })
                }
            }
            true
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        cell.knobs = match engine.get(Cf::Config, crate::repair::KEY_KNOBS)? {
            Some(b) => decode("config", &b)?,
            None => crate::repair::default_knobs(),
        };
        if let Some(b) = engine.get(Cf::Config, crate::moves::KEY_REBALANCE)? {
            cell.rebalance = decode("config", &b)?;
        }
        if let Some(v) = engine.get(Cf::Config, b"next_move")?
            && v.len() == 8
        {
            cell.next_move = u64::from_be_bytes(v.try_into().expect("8 bytes"));
        }
        cell.next_move = cell
            .next_move
            .max(cell.moves.keys().next_back().copied().unwrap_or(0));
        cell.scrub_knobs = match engine.get(Cf::Config, crate::scrub::KEY_SCRUB_KNOBS)? {
            Some(b) => decode("config", &b)?,
            None => crate::scrub::default_knobs(),
        };
        if let Some(b) = engine.get(Cf::Config, crate::repair::KEY_COUNTERS)? {
            cell.counters = decode("config", &b)?;
        }
        // Volume ids are never reused, even if the counter row was lost.
        if let Some((&max, _)) = cell.volumes.iter().next_back() {
            cell.next_volume = cell.next_volume.max(max.saturating_add(1));
        }
        let (tx, rx) = mpsc::channel();
        let state = Arc::new(MetaState {
            engine,
            cfg,
            cell: Mutex::new(cell),
            persist: Mutex::new(()),
            commits: Mutex::new(Some(tx)),
            committer: Mutex::new(None),
            ops,
            index_rebuild: Default::default(),
            verify_job: Default::default(),
        });
        let weak = Arc::downgrade(&state);
        let handle = std::thread::Builder::new()
            .name("meta-committer".into())
            .spawn(move || committer_loop(weak, rx))
            .map_err(|e| MetaError::Engine(format!("spawn committer: {e}")))?;
        *state.committer.lock() = Some(handle);
        Ok(state)
    }

    /// Stops the committer after it has answered every queued commit.
    pub fn shutdown(&self) {
        self.commits.lock().take();
        if let Some(h) = self.committer.lock().take() {
            let _ = h.join();
        }
    }

    pub(crate) fn cell_lock(&self) -> parking_lot::MutexGuard<'_, Cell> {
        self.cell.lock()
    }

    pub fn config(&self) -> &MetaConfig {
        &self.cfg
    }

    pub fn cluster_id(&self) -> String {
        self.cell.lock().cluster_id.clone()
    }

    pub fn engine(&self) -> &Arc<dyn KvEngine> {
        &self.engine
    }

    /// Changes cell rows in memory and writes the rows that `f` put into the batch, in change order.
    pub(crate) fn mutate_cell<R>(
        &self,
        sync: bool,
        f: impl FnOnce(&mut Cell, &mut WriteBatch) -> R,
    ) -> Result<R, MetaError> {
        let _order = self.persist.lock();
        let mut batch = WriteBatch::default();
        let r = {
            let mut cell = self.cell.lock();
            f(&mut cell, &mut batch)
        };
        if !batch.is_empty() {
            self.engine.write(batch, sync)?;
        }
        Ok(r)
    }

    // ---- block index ----

    /// Live locations of `hashes`; `None` for absent or deleted ones.
    pub fn lookup(
        &self,
        hashes: &[BlockHash],
    ) -> Result<Vec<Option<(BlockLocation, u64)>>, MetaError> {
        let keys: Vec<&[u8]> = hashes.iter().map(|h| h.as_bytes().as_slice()).collect();
        let vals = self.engine.multi_get(Cf::Blocks, &keys)?;
        vals.into_iter()
            .map(|v| match v {
                None => Ok(None),
                Some(b) => {
                    let row: BlockRow = decode("blocks", &b)?;
                    Ok((row.state == BLOCK_LIVE).then(|| (location_of(&row), row.created_unix_ms)))
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
            let cell = self.cell.lock();
            let vol = cell
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
            state: BLOCK_LIVE,
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

    /// One group commit: existence checks, one synced batch, answers.
    fn commit_batch(&self, jobs: Vec<CommitJob>) {
        let started = std::time::Instant::now();
        let keys: Vec<&[u8]> = jobs.iter().map(|j| j.hash.as_bytes().as_slice()).collect();
        let existing = match self.engine.multi_get(Cf::Blocks, &keys) {
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
                .and_then(|b| decode::<BlockRow>("blocks", &b).ok())
                .filter(|r| r.state == BLOCK_LIVE);
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
        let res = {
            let _order = self.persist.lock();
            {
                let mut cell = self.cell.lock();
                for (vid, (n, bytes)) in &deltas {
                    if let Some(v) = cell.volumes.get_mut(vid) {
                        v.blocks += n;
                        v.bytes += bytes;
                        batch.put(Cf::Volumes, vid.to_be_bytes().to_vec(), encode(v));
                    }
                }
            }
            if batch.is_empty() {
                Ok(())
            } else {
                self.engine.write(batch, true)
            }
        };
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

    // ---- nodes and disks ----

    /// [`MetaState::heartbeat`] for a heartbeat from the network: a node id already bound to another
    /// address, or a disk already served by another node, is taken over only when that node no longer
    /// answers there as itself (a restart on a new address, a disk moved to another server). So no
    /// heartbeat can take a live node's name or another live node's disk; the refusal names both.
    pub async fn heartbeat_checked(
        &self,
        req: &v1::HeartbeatRequest,
    ) -> Result<HeartbeatAnswer, MetaError> {
        let req = &sanitized(req);
        // Addresses to ask, and what each should answer to keep its claim.
        let mut probes: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        {
            let cell = self.cell.lock();
            if let Some(n) = cell.nodes.get(&req.node_id)
                && n.address != req.address
                && !n.address.is_empty()
            {
                probes
                    .entry(n.address.clone())
                    .or_insert_with(|| (req.node_id.clone(), Vec::new()));
            }
            for d in &req.disks {
                let Some(row) = cell.disks.get(&d.disk_id) else {
                    continue;
                };
                if row.node_id == req.node_id {
                    continue;
                }
                if let Some(owner) = cell.nodes.get(&row.node_id)
                    && !owner.address.is_empty()
                    && owner.address != req.address
                {
                    probes
                        .entry(owner.address.clone())
                        .or_insert_with(|| (row.node_id.clone(), Vec::new()))
                        .1
                        .push(d.disk_id.clone());
                }
            }
        }
        if probes.is_empty() {
            return self.heartbeat(req);
        }
        let answers = futures::future::join_all(probes.keys().map(|addr| {
            let fut = self.ops.whois(addr.clone());
            async move { fut.await.ok() }
        }))
        .await;
        let mut taken_disks: Vec<String> = Vec::new();
        for ((addr, (owner, disks)), answer) in probes.iter().zip(answers) {
            let Some(who) = answer.filter(|w| &w.node_id == owner) else {
                continue;
            };
            if owner == &req.node_id {
                metrics::counter!("hoard_meta_heartbeats_refused_total", "why" => "address")
                    .increment(1);
                return Err(MetaError::Conflict(format!(
                    "node {owner} is alive at {addr}: a heartbeat from {} cannot take its name",
                    req.address
                )));
            }
            taken_disks.extend(disks.iter().filter(|d| who.disks.contains(d)).cloned());
        }
        if taken_disks.is_empty() {
            return self.heartbeat(req);
        }
        metrics::counter!("hoard_meta_heartbeats_refused_total", "why" => "disk")
            .increment(taken_disks.len() as u64);
        tracing::warn!(
            node = %req.node_id,
            address = %req.address,
            disks = ?taken_disks,
            "heartbeat lists disks another live node serves; they are ignored"
        );
        let mut req = req.clone();
        req.disks.retain(|d| !taken_disks.contains(&d.disk_id));
        req.extents.retain(|e| !taken_disks.contains(&e.disk_id));
        self.heartbeat(&req)
    }

    /// Records a volume server's heartbeat: its address, labels and disks. Answers the cluster id and
    /// the reported extents that a newer generation has replaced.
    pub fn heartbeat(&self, req: &v1::HeartbeatRequest) -> Result<HeartbeatAnswer, MetaError> {
        if req.node_id.is_empty() {
            return Err(MetaError::Invalid("heartbeat without node id".into()));
        }
        let now = now_ms();
        self.mutate_cell(false, |cell, b| {
            // What a heartbeat reports never moves meta's counters: ids are meta's own. A volume id
            // found on a disk that meta does not know is never handed out (see `next_volume_id`), and
            // the disk is held until an operator rebuilds the index from it or declares it empty.
            let mut adopt = Vec::new();
            let node = NodeRow {
                address: req.address.clone(),
                labels: req.labels.clone(),
                last_heartbeat_unix_ms: now,
                interval_ms: req.interval_ms,
            };
            let known = cell.nodes.get(&req.node_id).map(|n| n.address.clone());
            if known.as_deref() != Some(req.address.as_str()) {
                tracing::info!(node = %req.node_id, address = %req.address, "volume server registered");
            }
            b.put(Cf::Nodes, req.node_id.as_bytes(), encode(&node));
            cell.nodes.insert(req.node_id.clone(), node);
            for d in &req.disks {
                cell.suspect.remove(&d.disk_id);
                let declared_empty = cell.disks.get(&d.disk_id).is_some_and(|r| r.declared_empty);
                let draining = cell.disks.get(&d.disk_id).is_some_and(|r| r.draining);
                let unknown = req
                    .extents
                    .iter()
                    .filter(|e| e.disk_id == d.disk_id)
                    .filter(|e| e.extent.as_ref().is_some_and(|x| !cell.volumes.contains_key(&x.volume)))
                    .count();
                let foreign = !d.cluster_id.is_empty() && d.cluster_id != cell.cluster_id;
                let hold = if declared_empty {
                    if foreign {
                        adopt.push(d.disk_id.clone());
                    }
                    String::new()
                } else if foreign {
                    format!(
                        "labelled for cluster {}, this is {}: run rebuild-index, or declare the disk empty",
                        d.cluster_id, cell.cluster_id
                    )
                } else if unknown > 0 {
                    format!(
                        "holds {unknown} extent(s) of volumes this metadata tier does not know: run rebuild-index, or declare the disk empty"
                    )
                } else {
                    String::new()
                };
                let row = DiskRow {
                    node_id: req.node_id.clone(),
                    path: d.path.clone(),
                    state: d.state.clone(),
                    capacity_bytes: d.capacity_bytes,
                    used_bytes: d.used_bytes,
                    free_bytes: d.free_bytes,
                    extents: d.extents,
                    hold,
                    declared_empty,
                    cluster_id: d.cluster_id.clone(),
                    draining,
                    trash_bytes: d.trash_bytes,
                };
                b.put(Cf::Disks, d.disk_id.as_bytes(), encode(&row));
                cell.disks.insert(d.disk_id.clone(), row);
                if let Some(s) = &d.scrub {
                    cell.scrub.insert(d.disk_id.clone(), s.clone());
                }
            }
            // Only what meta knows to be superseded: an extent of a volume meta has never heard of is
            // left alone (meta may have lost its data; the disks are then the truth).
            let retire = req
                .extents
                .iter()
                .filter_map(|e| e.extent)
                .filter(|e| match cell.volumes.get(&e.volume) {
                    None => false,
                    Some(v) if v.state == STATE_RETIRED => true,
                    Some(v) => v.members.get(e.member as usize).is_some_and(|m| {
                        m.generation > e.generation
                            || (e.generation > m.generation && !Self::in_flight(cell, e))
                    }),
                })
                .collect();
            cell.in_service.insert(req.node_id.clone(), req.extents.clone());
            HeartbeatAnswer {
                cluster_id: cell.cluster_id.clone(),
                retire,
                adopt_disks: adopt,
            }
        })
    }

    /// Whether a rebuild or move still in progress is writing this generation of the member. A newer
    /// generation than meta's that nothing is writing was left by a rebuild or move that was abandoned
    /// (or put in service just before its commit failed): it holds space and will never serve.
    fn in_flight(cell: &Cell, e: &v1::ExtentRef) -> bool {
        let rebuilding = cell.repairs.get(&e.volume).is_some_and(|r| {
            r.outputs
                .iter()
                .any(|o| o.member == e.member && o.generation == e.generation)
        });
        rebuilding
            || cell.moves.values().any(|mv| {
                mv.volume == e.volume
                    && mv.member == e.member
                    && mv.generation == e.generation
                    && (mv.state == "pending" || mv.state == "running")
            })
    }

    pub(crate) fn node_up(&self, node: &NodeRow, now: u64) -> bool {
        now.saturating_sub(node.last_heartbeat_unix_ms)
            <= self.cfg.heartbeat_grace.as_millis() as u64
    }

    /// Disks that may take a new member now.
    /// Places `count` members beside `existing` on candidate disks passing `keep`. Disks a frontend
    /// just reported failing are avoided when possible, and used when nothing else fits: the report
    /// is a hint, the heartbeat is the truth.
    pub(crate) fn place_on(
        &self,
        cell: &Cell,
        now: u64,
        existing: &[Candidate],
        count: usize,
        per_node_cap: Option<usize>,
        keep: impl Fn(&Candidate) -> bool,
    ) -> Result<(Vec<Candidate>, Vec<usize>), placement::PlacementError> {
        let all: Vec<Candidate> = self
            .candidates(cell, now)
            .into_iter()
            .filter(|c| keep(c))
            .collect();
        let trusted: Vec<Candidate> = all
            .iter()
            .filter(|c| !cell.suspect.contains(&c.disk_id))
            .cloned()
            .collect();
        match placement::place_more(existing, &trusted, count, per_node_cap) {
            Ok(p) => Ok((trusted, p)),
            Err(e) if trusted.len() == all.len() => Err(e),
            Err(_) => placement::place_more(existing, &all, count, per_node_cap).map(|p| (all, p)),
        }
    }

    /// Bytes a disk holds or has promised: its used bytes, plus the room its members of open volumes may
    /// still fill.
    pub(crate) fn committed_bytes(&self, cell: &Cell, disk: &str) -> u64 {
        let d = match cell.disks.get(disk) {
            Some(d) => d,
            None => return 0,
        };
        let open = cell
            .volumes
            .values()
            .filter(|v| v.state == STATE_OPEN || v.state == STATE_CREATING)
            .flat_map(|v| v.members.iter())
            .filter(|m| m.disk_id == disk)
            .count() as u64;
        d.used_bytes
            .saturating_add(open.saturating_mul(self.cfg.extent_capacity))
    }

    /// Healthy disks of live nodes that are not held, whatever their fill.
    fn healthy_disks<'a>(
        &self,
        cell: &'a Cell,
        now: u64,
    ) -> impl Iterator<Item = (&'a String, &'a DiskRow)> {
        cell.disks.iter().filter(move |(_, d)| {
            d.state == "ok"
                && d.hold.is_empty()
                && !d.draining
                && cell
                    .nodes
                    .get(&d.node_id)
                    .is_some_and(|n| self.node_up(n, now))
        })
    }

    /// Whether the cell lacks room rather than disks: enough healthy disks, too few below high water.
    pub(crate) fn full_reason(&self, cell: &Cell, now: u64, width: usize) -> Option<String> {
        let healthy = self.healthy_disks(cell, now).count();
        let roomy = self.candidates(cell, now).len();
        (healthy >= width && roomy < width).then(|| {
            format!(
                "the cell is full: {healthy} healthy disks, {roomy} below the high-water mark of {:.0}% with room for a {} extent; add capacity or delete data",
                self.cfg.high_water * 100.0,
                crate::scrub::human(self.cfg.extent_capacity)
            )
        })
    }

    pub(crate) fn candidates(&self, cell: &Cell, now: u64) -> Vec<Candidate> {
        let mut members: HashMap<&str, u32> = HashMap::new();
        for v in cell.volumes.values().filter(|v| v.state != STATE_RETIRED) {
            for m in &v.members {
                *members.entry(m.disk_id.as_str()).or_default() += 1;
            }
        }
        self.healthy_disks(cell, now)
            .filter(|(id, d)| {
                let after = self
                    .committed_bytes(cell, id)
                    .saturating_add(self.cfg.extent_capacity);
                d.free_bytes >= self.cfg.extent_capacity
                    && (d.capacity_bytes == 0
                        || after as f64 <= self.cfg.high_water * d.capacity_bytes as f64)
            })
            .filter_map(|(id, d)| {
                let node = cell.nodes.get(&d.node_id)?;
                Some(Candidate {
                    disk_id: id.clone(),
                    node_id: d.node_id.clone(),
                    zone: node.labels.get("zone").cloned().unwrap_or_default(),
                    rack: node.labels.get("rack").cloned().unwrap_or_default(),
                    free_bytes: d.free_bytes,
                    members: members.get(id.as_str()).copied().unwrap_or(0),
                })
            })
            .collect()
    }

    // ---- volumes ----

    pub(crate) fn volume_info(
        &self,
        cell: &Cell,
        id: VolumeId,
        row: &VolumeRow,
        now: u64,
    ) -> v1::VolumeInfo {
        let members = row
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let node_id = cell
                    .disks
                    .get(&m.disk_id)
                    .map(|d| d.node_id.clone())
                    .unwrap_or_default();
                let node = cell.nodes.get(&node_id);
                let state = match node {
                    _ if m.state != "ok" => m.state.clone(),
                    Some(n) if self.node_up(n, now) => "ok".to_string(),
                    _ => "down".to_string(),
                };
                v1::MemberInfo {
                    index: i as u32,
                    disk_id: m.disk_id.clone(),
                    address: node.map(|n| n.address.clone()).unwrap_or_default(),
                    node_id,
                    generation: m.generation,
                    state,
                }
            })
            .collect();
        v1::VolumeInfo {
            id,
            k: row.k,
            m: row.m,
            state: row.state.clone(),
            members,
            capacity: row.capacity,
            blocks: row.blocks,
            bytes: row.bytes,
            lease_holder: row.lease_holder.clone(),
            lease_epoch: row.lease_epoch,
            seal_reason: row.seal_reason.clone(),
            violations: Vec::new(),
        }
    }

    pub fn volume(&self, id: VolumeId) -> Result<v1::VolumeInfo, MetaError> {
        let cell = self.cell.lock();
        let row = cell.volumes.get(&id).ok_or(MetaError::NoVolume(id))?;
        Ok(self.volume_info(&cell, id, row, now_ms()))
    }

    pub fn volumes(&self, ids: &[VolumeId]) -> Vec<v1::VolumeInfo> {
        let cell = self.cell.lock();
        let now = now_ms();
        ids.iter()
            .filter_map(|id| {
                cell.volumes
                    .get(id)
                    .map(|r| self.volume_info(&cell, *id, r, now))
            })
            .collect()
    }

    /// Grants `holder` a write lease on an open volume, creating a volume when none is free.
    pub async fn acquire_volume(
        &self,
        holder: &str,
        exclude: &[VolumeId],
    ) -> Result<(v1::VolumeInfo, u64), MetaError> {
        if holder.is_empty() {
            return Err(MetaError::Invalid("lease request without holder".into()));
        }
        let lease_ms = self.cfg.lease.as_millis() as u64;
        // An open volume whose lease is free and whose members are all reachable.
        let granted = self.mutate_cell(true, |cell, b| {
            let now = now_ms();
            let pick = cell.volumes.iter().find_map(|(id, v)| {
                let free = v.lease_holder.is_empty() || v.lease_expires_unix_ms < now;
                let healthy = v.members.iter().all(|m| {
                    m.state == "ok"
                        && !cell.suspect.contains(&m.disk_id)
                        && cell
                            .disks
                            .get(&m.disk_id)
                            .and_then(|d| cell.nodes.get(&d.node_id))
                            .is_some_and(|n| self.node_up(n, now))
                });
                (v.state == STATE_OPEN && free && healthy && !exclude.contains(id)).then_some(*id)
            })?;
            let v = cell.volumes.get_mut(&pick).expect("picked above");
            v.lease_holder = holder.to_string();
            v.lease_epoch += 1;
            v.lease_expires_unix_ms = now + lease_ms;
            b.put(Cf::Volumes, pick.to_be_bytes().to_vec(), encode(v));
            let row = v.clone();
            Some((self.volume_info(cell, pick, &row, now), row.lease_epoch))
        })?;
        if let Some(g) = granted {
            tracing::info!(
                volume = g.0.id,
                holder,
                epoch = g.1,
                "lease granted on open volume"
            );
            return Ok(g);
        }
        self.create_volume(holder).await
    }

    async fn create_volume(&self, holder: &str) -> Result<(v1::VolumeInfo, u64), MetaError> {
        let geometry = self.cfg.geometry;
        let width = geometry.width() as usize;
        let mut avoid: Vec<String> = Vec::new();
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let planned = self.mutate_cell(true, |cell, b| {
                let now = now_ms();
                let cap = self
                    .cfg
                    .node_failure_domain
                    .then_some(geometry.m.max(1) as usize);
                let (cands, chosen) = match self
                    .place_on(cell, now, &[], width, cap, |c| !avoid.contains(&c.disk_id))
                {
                    Ok(p) => p,
                    Err(e) => {
                        return Err(match self.full_reason(cell, now, width) {
                            Some(why) => MetaError::Full(why),
                            None => e.into(),
                        });
                    }
                };
                let id = Self::next_volume_id(cell)?;
                cell.next_volume = id
                    .checked_add(1)
                    .ok_or_else(|| MetaError::Full("every volume id has been used".into()))?;
                b.put(
                    Cf::Config,
                    KEY_NEXT_VOLUME,
                    cell.next_volume.to_be_bytes().to_vec(),
                );
                let row = VolumeRow {
                    k: geometry.k,
                    m: geometry.m,
                    state: STATE_CREATING.into(),
                    members: chosen
                        .iter()
                        .map(|&i| MemberRow {
                            disk_id: cands[i].disk_id.clone(),
                            generation: 1,
                            state: "ok".into(),
                        })
                        .collect(),
                    capacity: self.cfg.extent_capacity,
                    created_unix_ms: now,
                    ..Default::default()
                };
                b.put(Cf::Volumes, id.to_be_bytes().to_vec(), encode(&row));
                let info = self.volume_info(cell, id, &row, now);
                // A fresh id: no row is ever overwritten by a new volume.
                match cell.volumes.entry(id) {
                    std::collections::btree_map::Entry::Vacant(e) => e.insert(row),
                    std::collections::btree_map::Entry::Occupied(_) => {
                        return Err(MetaError::Corrupt {
                            table: "volumes".into(),
                            problem: format!("volume id {id} allocated twice"),
                        });
                    }
                };
                Ok::<_, MetaError>(info)
            })??;
            let creates = planned.members.iter().map(|m| {
                let req = v1::CreateExtentRequest {
                    extent: Some(v1::ExtentRef {
                        volume: planned.id,
                        member: m.index,
                        generation: m.generation,
                    }),
                    disk_id: m.disk_id.clone(),
                    k: geometry.k,
                    m: geometry.m,
                    capacity: self.cfg.extent_capacity,
                };
                let fut = self.ops.create_extent(m.address.clone(), req);
                let disk = m.disk_id.clone();
                async move { fut.await.map_err(|e| (disk, e)) }
            });
            let failures: Vec<(String, String)> = futures::future::join_all(creates)
                .await
                .into_iter()
                .filter_map(Result::err)
                .collect();
            let lease_ms = self.cfg.lease.as_millis() as u64;
            let id = planned.id;
            if failures.is_empty() {
                let out = self.mutate_cell(true, |cell, b| {
                    let now = now_ms();
                    let v = cell.volumes.get_mut(&id).expect("created above");
                    v.state = STATE_OPEN.into();
                    v.lease_holder = holder.to_string();
                    v.lease_epoch = 1;
                    v.lease_expires_unix_ms = now + lease_ms;
                    b.put(Cf::Volumes, id.to_be_bytes().to_vec(), encode(v));
                    let row = v.clone();
                    (self.volume_info(cell, id, &row, now), 1)
                })?;
                tracing::info!(volume = id, holder, "created volume");
                metrics::counter!("hoard_meta_volumes_created_total").increment(1);
                return Ok(out);
            }
            last_err = failures
                .iter()
                .map(|(d, e)| format!("disk {d}: {e}"))
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!(volume = id, "volume creation failed: {last_err}");
            avoid.extend(failures.into_iter().map(|(d, _)| d));
            self.mutate_cell(true, |cell, b| {
                if let Some(v) = cell.volumes.get_mut(&id) {
                    v.state = STATE_RETIRED.into();
                    v.seal_reason = format!("creation failed: {last_err}");
                    b.put(Cf::Volumes, id.to_be_bytes().to_vec(), encode(v));
                }
            })?;
        }
        Err(MetaError::CreateFailed(last_err))
    }

    /// The lowest volume id from the counter on that no volume row holds and no volume server
    /// reports an extent of: ids are never reused, also when a disk holds a volume this metadata tier
    /// has forgotten.
    fn next_volume_id(cell: &Cell) -> Result<VolumeId, MetaError> {
        let reported: std::collections::HashSet<VolumeId> = cell
            .in_service
            .values()
            .flatten()
            .filter_map(|e| e.extent.as_ref().map(|x| x.volume))
            .collect();
        let mut id = cell.next_volume;
        while cell.volumes.contains_key(&id) || reported.contains(&id) {
            id = id
                .checked_add(1)
                .ok_or_else(|| MetaError::Full("every volume id has been used".into()))?;
        }
        Ok(id)
    }

    /// Extends (or, with `release`, gives up) a lease. False when the lease is no longer the holder's.
    pub fn renew_lease(
        &self,
        holder: &str,
        id: VolumeId,
        epoch: u64,
        release: bool,
    ) -> Result<bool, MetaError> {
        let lease_ms = self.cfg.lease.as_millis() as u64;
        self.mutate_cell(false, |cell, b| {
            let now = now_ms();
            let Some(v) = cell.volumes.get_mut(&id) else {
                return false;
            };
            if v.state != STATE_OPEN || v.lease_holder != holder || v.lease_epoch != epoch {
                return false;
            }
            if release {
                v.lease_holder.clear();
                v.lease_expires_unix_ms = 0;
            } else {
                v.lease_expires_unix_ms = now + lease_ms;
            }
            b.put(Cf::Volumes, id.to_be_bytes().to_vec(), encode(v));
            !release
        })
    }

    /// Seals a volume after a failure or when it is full. Sealed volumes never take writes again.
    pub fn report_volume(
        &self,
        id: VolumeId,
        member: Option<u32>,
        kind: &str,
        detail: &str,
    ) -> Result<(), MetaError> {
        self.report_problem(id, member, kind, detail, 0, &[])
    }

    /// Records a problem with a volume. A corrupt fragment is queued for range repair (the member is
    /// otherwise fine); any other failure seals an open volume and keeps new members off the disk until
    /// its node heartbeats again.
    pub fn report_problem(
        &self,
        id: VolumeId,
        member: Option<u32>,
        kind: &str,
        detail: &str,
        offset: u64,
        hash: &[u8],
    ) -> Result<(), MetaError> {
        if kind == "corrupt" {
            let Some(member) = member else {
                return Err(MetaError::Invalid("corrupt report without member".into()));
            };
            let fresh = self.mutate_cell(true, |cell, b| {
                if !cell.volumes.contains_key(&id) {
                    return Err(MetaError::NoVolume(id));
                }
                let key = (id, member, offset);
                if cell.ranges.contains_key(&key) {
                    return Ok(false);
                }
                let row = crate::records::RangeRow {
                    hash: hash.to_vec(),
                    reported_unix_ms: now_ms(),
                };
                b.put(
                    Cf::Repair,
                    crate::repair::RepairKey::Range(id, member, offset).encode(),
                    encode(&row),
                );
                cell.ranges.insert(key, row);
                Ok(true)
            })??;
            if fresh {
                tracing::warn!(
                    volume = id,
                    member,
                    offset,
                    detail,
                    "corrupt fragment queued for range repair"
                );
                metrics::counter!("hoard_repair_ranges_reported_total").increment(1);
            }
            return Ok(());
        }
        let sealed = self.mutate_cell(true, |cell, b| {
            let v = cell.volumes.get_mut(&id).ok_or(MetaError::NoVolume(id))?;
            let disk = member
                .and_then(|m| v.members.get(m as usize))
                .map(|m| m.disk_id.clone());
            if kind != "full"
                && let Some(d) = disk
            {
                cell.suspect.insert(d);
            }
            let v = cell.volumes.get_mut(&id).expect("looked up above");
            if v.state != STATE_OPEN {
                return Ok(false);
            }
            v.state = STATE_SEALED.into();
            v.lease_holder.clear();
            v.seal_reason = match member {
                Some(m) => format!("{kind} (member {m}): {detail}"),
                None => format!("{kind}: {detail}"),
            };
            b.put(Cf::Volumes, id.to_be_bytes().to_vec(), encode(v));
            Ok::<_, MetaError>(true)
        })??;
        match (kind, sealed) {
            ("full", _) => tracing::info!(volume = id, "volume full, sealed"),
            (_, true) => tracing::warn!(
                volume = id,
                ?member,
                kind,
                detail,
                "volume sealed after a reported problem"
            ),
            (_, false) => tracing::debug!(
                volume = id,
                ?member,
                kind,
                detail,
                "problem reported on a sealed volume"
            ),
        }
        Ok(())
    }

    /// The whole cell, for status pages and admin commands.
    pub fn cluster_status(&self) -> v1::ClusterStatusResponse {
        let cell = self.cell.lock();
        let now = now_ms();
        let mut members_per_disk: HashMap<&str, u32> = HashMap::new();
        for v in cell.volumes.values() {
            if v.state == STATE_RETIRED {
                continue;
            }
            for m in &v.members {
                *members_per_disk.entry(m.disk_id.as_str()).or_default() += 1;
            }
        }
        let nodes = cell
            .nodes
            .iter()
            .map(|(id, n)| v1::NodeInfo {
                node_id: id.clone(),
                address: n.address.clone(),
                labels: n.labels.clone(),
                last_heartbeat_unix_ms: n.last_heartbeat_unix_ms,
                state: if self.node_up(n, now) { "up" } else { "down" }.into(),
            })
            .collect();
        let disks = cell
            .disks
            .iter()
            .map(|(id, d)| v1::DiskStatus {
                disk: Some(v1::DiskInfo {
                    disk_id: id.clone(),
                    path: d.path.clone(),
                    capacity_bytes: d.capacity_bytes,
                    used_bytes: d.used_bytes,
                    free_bytes: d.free_bytes,
                    trash_bytes: d.trash_bytes,
                    state: if d.state != "ok" {
                        d.state.clone()
                    } else if !d.hold.is_empty() {
                        format!("held: {}", d.hold)
                    } else if d.draining {
                        match members_per_disk.get(id.as_str()).copied().unwrap_or(0) {
                            0 => "drained".to_string(),
                            n => format!("draining ({n} members left)"),
                        }
                    } else {
                        d.state.clone()
                    },
                    extents: d.extents,
                    cluster_id: d.cluster_id.clone(),
                    scrub: cell.scrub.get(id).cloned(),
                }),
                node_id: d.node_id.clone(),
                members: members_per_disk.get(id.as_str()).copied().unwrap_or(0),
            })
            .collect();
        let every_disk: Vec<Candidate> = cell
            .disks
            .keys()
            .filter_map(|d| candidate_of(&cell, d))
            .collect();
        let volumes: Vec<v1::VolumeInfo> = cell
            .volumes
            .iter()
            .map(|(id, v)| {
                let mut info = self.volume_info(&cell, *id, v, now);
                if v.state != STATE_RETIRED && self.cfg.node_failure_domain {
                    let members: Vec<Candidate> = v
                        .members
                        .iter()
                        .filter(|m| m.state == MEMBER_OK)
                        .filter_map(|m| candidate_of(&cell, &m.disk_id))
                        .collect();
                    info.violations = placement::violations(&members, &every_disk, v.m as usize);
                }
                info
            })
            .collect();
        v1::ClusterStatusResponse {
            cluster_id: cell.cluster_id.clone(),
            nodes,
            disks,
            blocks: cell.volumes.values().map(|v| v.blocks).sum(),
            bytes: cell.volumes.values().map(|v| v.bytes).sum(),
            volumes,
        }
    }
}

impl Drop for MetaState {
    fn drop(&mut self) {
        self.commits.lock().take();
    }
}

fn committer_loop(state: std::sync::Weak<MetaState>, rx: mpsc::Receiver<CommitJob>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < 1024 {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let Some(state) = state.upgrade() else {
            return;
        };
        state.commit_batch(jobs);
    }
}

/// Encodes a value for tests and tools outside this module.
pub fn encode_row<M: prost::Message>(m: &M) -> Vec<u8> {
    records::encode(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{FakeOps, cell};

    fn loc(volume: VolumeId, offset: u64, len: u64) -> BlockLocation {
        let g = Geometry::DEFAULT;
        BlockLocation {
            volume,
            offset,
            frag_len: g.frag_len(len),
            block_len: len,
            crcs: vec![0; 9],
        }
    }

    #[tokio::test]
    async fn acquire_creates_a_placed_volume_and_leases_it() {
        let (state, ops) = cell(4, 3);
        let (info, epoch) = state.acquire_volume("fe-1", &[]).await.unwrap();
        assert_eq!(epoch, 1);
        assert_eq!(info.state, STATE_OPEN);
        assert_eq!(info.members.len(), 9);
        assert_eq!(ops.created.lock().len(), 9);
        // A second holder gets a different volume; the first volume's lease is taken.
        let (other, _) = state.acquire_volume("fe-2", &[]).await.unwrap();
        assert_ne!(other.id, info.id);
        // A released lease is granted again with a higher epoch.
        assert!(!state.renew_lease("fe-1", info.id, 1, true).unwrap());
        let (again, epoch) = state.acquire_volume("fe-3", &[]).await.unwrap();
        assert_eq!(again.id, info.id);
        assert_eq!(epoch, 2);
        assert!(!state.renew_lease("fe-1", info.id, 1, false).unwrap());
        assert!(state.renew_lease("fe-3", info.id, 2, false).unwrap());
    }

    #[tokio::test]
    async fn too_few_disks_is_unavailable_with_numbers() {
        let (state, _) = cell(2, 2);
        let err = state.acquire_volume("fe", &[]).await.unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::Unavailable);
        assert!(err.to_string().contains("need 9"), "{err}");
        assert!(err.to_string().contains("4 healthy"), "{err}");
    }

    #[tokio::test]
    async fn failed_extent_creation_retries_on_other_disks() {
        let (state, ops) = cell(5, 3);
        ops.broken.lock().insert("d0-0".into());
        ops.broken.lock().insert("d1-0".into());
        let (info, _) = state.acquire_volume("fe", &[]).await.unwrap();
        assert!(
            info.members
                .iter()
                .all(|m| m.disk_id != "d0-0" && m.disk_id != "d1-0")
        );
        assert!(info.id > 1, "the failed attempt's volume id is not reused");
    }

    #[tokio::test]
    async fn commit_is_insert_if_absent_and_counts() {
        let (state, _) = cell(4, 3);
        let (info, _) = state.acquire_volume("fe", &[]).await.unwrap();
        let h = BlockHash::of(b"one");
        assert_eq!(
            state.commit(h, loc(info.id, 0, 100)).await.unwrap(),
            CommitOutcome::Inserted
        );
        let again = state.commit(h, loc(info.id, 64, 100)).await.unwrap();
        assert_eq!(again, CommitOutcome::Exists(loc(info.id, 0, 100)));
        let found = state.lookup(&[h, BlockHash::of(b"two")]).unwrap();
        assert_eq!(found[0].as_ref().unwrap().0, loc(info.id, 0, 100));
        assert!(found[1].is_none());
        let v = state.volume(info.id).unwrap();
        assert_eq!((v.blocks, v.bytes), (1, 100));
        // Concurrent commits of distinct blocks all land.
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let s = Arc::clone(&state);
            tasks.push(tokio::spawn(async move {
                s.commit(
                    BlockHash::of(&i.to_le_bytes()),
                    loc(info.id, 128 + i * 64, 10),
                )
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), CommitOutcome::Inserted);
        }
        assert_eq!(state.volume(info.id).unwrap().blocks, 201);
    }

    #[tokio::test]
    async fn commit_rejects_bad_locations() {
        let (state, _) = cell(4, 3);
        let (info, _) = state.acquire_volume("fe", &[]).await.unwrap();
        let h = BlockHash::of(b"x");
        let mut bad = loc(info.id, 0, 100);
        bad.crcs.pop();
        assert!(matches!(
            state.commit(h, bad).await,
            Err(MetaError::Invalid(_))
        ));
        assert!(matches!(
            state.commit(h, loc(info.id + 100, 0, 100)).await,
            Err(MetaError::NoVolume(_))
        ));
        assert!(matches!(
            state.commit(h, loc(info.id, 1 << 20, 100)).await,
            Err(MetaError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn reported_volume_is_sealed_and_not_leased_again() {
        let (state, _) = cell(4, 3);
        let (info, _) = state.acquire_volume("fe", &[]).await.unwrap();
        state
            .report_volume(info.id, Some(2), "write_failed", "boom")
            .unwrap();
        assert_eq!(state.volume(info.id).unwrap().state, STATE_SEALED);
        assert!(!state.renew_lease("fe", info.id, 1, false).unwrap());
        let (next, _) = state.acquire_volume("fe", &[]).await.unwrap();
        assert_ne!(next.id, info.id);
    }

    #[tokio::test]
    async fn abandoned_newer_generations_are_retired_but_running_moves_are_not() {
        let (state, _) = cell(4, 3);
        let (info, _) = state.acquire_volume("fe", &[]).await.unwrap();
        let vid = info.id;
        let report = |generation: u64| v1::HeartbeatRequest {
            node_id: "n0".into(),
            address: "127.0.0.1:9000".into(),
            labels: Default::default(),
            interval_ms: 1000,
            disks: Vec::new(),
            extents: vec![v1::ExtentInfo {
                extent: Some(v1::ExtentRef {
                    volume: vid,
                    member: 0,
                    generation,
                }),
                ..Default::default()
            }],
        };
        let current = state.volume(vid).unwrap().members[0].generation;
        // The generation meta lists stays; a newer one nothing is writing goes to the trash.
        assert!(state.heartbeat(&report(current)).unwrap().retire.is_empty());
        let retire = state.heartbeat(&report(current + 5)).unwrap().retire;
        assert_eq!(retire.len(), 1);
        assert_eq!(retire[0].generation, current + 5);

        // A move that is copying member 0 writes a newer generation: that extent must stay.
        let disk = state.volume(vid).unwrap().members[0].disk_id.clone();
        assert!(state.drain(&[disk]).unwrap() > 0);
        let (_, tasks, _) = state.moves();
        let id = tasks
            .iter()
            .find(|t| t.volume == vid && t.member == 0)
            .unwrap()
            .id;
        let plan = state.start_move(id).unwrap();
        let writing = plan.outputs[0].generation;
        assert!(writing > current);
        assert!(state.heartbeat(&report(writing)).unwrap().retire.is_empty());
        // A failed attempt abandons what it wrote (the next attempt writes a new generation).
        state.fail_move(id, "test").unwrap();
        assert_eq!(state.heartbeat(&report(writing)).unwrap().retire.len(), 1);
    }

    #[tokio::test]
    async fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ops = Arc::new(FakeOps::default());
        let cfg = MetaConfig::default();
        let h = BlockHash::of(b"persist");
        let (vid, cluster) = {
            let engine = Arc::new(crate::engine::RocksEngine::open(dir.path()).unwrap());
            let state = MetaState::open(engine, cfg.clone(), ops.clone()).unwrap();
            for n in 0..4 {
                state
                    .heartbeat(&v1::HeartbeatRequest {
                        node_id: format!("n{n}"),
                        address: "a".into(),
                        labels: Default::default(),
                        extents: Vec::new(),
                        interval_ms: 1000,
                        disks: (0..3)
                            .map(|d| v1::DiskInfo {
                                disk_id: format!("d{n}{d}"),
                                state: "ok".into(),
                                free_bytes: 10 << 30,
                                capacity_bytes: 10 << 30,
                                ..Default::default()
                            })
                            .collect(),
                    })
                    .unwrap();
            }
            let (info, _) = state.acquire_volume("fe", &[]).await.unwrap();
            state.commit(h, loc(info.id, 0, 100)).await.unwrap();
            // A drain leaves planned moves in the repair table; they must load again.
            let disk = state.volume(info.id).unwrap().members[0].disk_id.clone();
            assert!(state.drain(&[disk]).unwrap() > 0);
            state.shutdown();
            (info.id, state.cluster_id())
        };
        let engine = Arc::new(crate::engine::RocksEngine::open(dir.path()).unwrap());
        let state = MetaState::open(engine, cfg, ops).unwrap();
        assert_eq!(state.cluster_id(), cluster);
        assert_eq!(
            state.lookup(&[h]).unwrap()[0].as_ref().unwrap().0.volume,
            vid
        );
        assert_eq!(state.volume(vid).unwrap().blocks, 1);
        let (_, tasks, _) = state.moves();
        assert_eq!(tasks.len(), 1, "the drain's move survives a restart");
        assert_eq!(tasks[0].volume, vid);
        let (next, epoch) = state.acquire_volume("fe2", &[]).await.unwrap();
        // The old lease has not expired yet, so a fresh volume with a new id is created.
        assert!(next.id > vid || epoch > 1);
    }
}
