//! Member rebuild, run by the volume server that holds the first new member.
//!
//! Members of a volume are byte-aligned: the fragments of one block sit at the same offset in every
//! member. So the runner reads the same byte span from `k` surviving members, checks every source
//! fragment against the crc32c in the block records, reconstructs the lost members for the whole span in
//! one decode, checks every rebuilt fragment against its crc32c, and writes it at the same offset: locally
//! for members placed on this server, through `StageWrite` for members placed on other servers. All lost
//! members of a volume are rebuilt in one pass over the sources. Nothing enters service before
//! `FinishRebuild`, and a generation that was never committed in meta is never read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use hoard_erasure::Codec;
use hoard_proto::v1;
use hoard_types::ExtentId;
use hoard_types::{BlockHash, Geometry, VolumeId};
use parking_lot::Mutex;
use tokio_stream::StreamExt;

use crate::VolumeError;
use crate::extent::MemberFile;
use crate::format::BlockRecord;
use crate::staged::StagedExtent;
use crate::store::VolumeStore;

/// Largest span read from each source in one call.
const SPAN_BYTES: u64 = 8 << 20;

pub type Sessions = Mutex<HashMap<String, Arc<tokio::sync::Mutex<Session>>>>;

struct Output {
    member: u32,
    generation: u64,
    disk_id: String,
    address: String,
    local: Option<Arc<StagedExtent>>,
}

pub struct Session {
    volume: VolumeId,
    geometry: Geometry,
    capacity: u64,
    sources: Vec<v1::RebuildSource>,
    outputs: Vec<Output>,
    records: Vec<BlockRecord>,
    next: usize,
    done_bytes: u64,
    total_bytes: u64,
    good: Vec<BlockRecord>,
    unrecoverable: Vec<(BlockHash, u64)>,
    codec: Arc<Codec>,
    /// A move: the member whose own bytes are copied.
    copy_from: Option<u32>,
}

fn remote(e: impl std::fmt::Display) -> VolumeError {
    VolumeError::Internal(e.to_string())
}

/// The rebuild engine of one volume server: the sessions it runs, and its connections to peers.
pub struct Rebuilder {
    store: Arc<VolumeStore>,
    peers: hoard_net::VolumeClients,
    sessions: Sessions,
}

impl Rebuilder {
    pub fn new(store: Arc<VolumeStore>) -> Rebuilder {
        Rebuilder {
            store,
            peers: Default::default(),
            sessions: Default::default(),
        }
    }

    /// Starts a rebuild: gathers the block records from the sources and opens the staging extents.
    pub async fn begin_rebuild(
        &self,
        req: v1::BeginRebuildRequest,
    ) -> Result<v1::BeginRebuildResponse, VolumeError> {
        let geometry =
            Geometry::new(req.k, req.m).map_err(|e| VolumeError::BadRequest(e.to_string()))?;
        if req.copy_from.is_none() && req.sources.len() < req.k as usize {
            return Err(VolumeError::BadRequest(format!(
                "{} sources given, {} needed",
                req.sources.len(),
                req.k
            )));
        }
        if req.outputs.is_empty() {
            return Err(VolumeError::BadRequest("no member to rebuild".into()));
        }
        // Members and capacity are checked here, once: everything after indexes by them.
        for member in req
            .sources
            .iter()
            .map(|s| s.member)
            .chain(req.outputs.iter().map(|o| o.member))
            .chain(req.copy_from)
        {
            crate::wire::extent_shape(member, req.k, req.m, req.capacity)?;
        }
        // The records are the same in every member; gather them from two sources, so that a damaged
        // slot in one .idx is filled from the other.
        let mut by_offset: BTreeMap<u64, BlockRecord> = BTreeMap::new();
        let mut gathered = 0;
        for src in &req.sources {
            match self.read_index(req.volume, src).await {
                Ok((recs, bad)) => {
                    for r in recs {
                        by_offset.entry(r.offset).or_insert(r);
                    }
                    gathered += 1;
                    if gathered >= 2 || (gathered == 1 && bad == 0) {
                        break;
                    }
                }
                Err(e) => tracing::warn!(
                    volume = req.volume,
                    member = src.member,
                    "index read failed: {e}"
                ),
            }
        }
        if gathered == 0 {
            return Err(VolumeError::Internal(
                "no source answered with its index".into(),
            ));
        }
        let records: Vec<BlockRecord> = by_offset
            .into_values()
            .filter(|r| r.crcs.len() == geometry.width() as usize && r.end() <= req.capacity)
            .collect();
        let total_bytes: u64 = records.iter().map(|r| r.frag_len as u64).sum();
        let mut outputs = Vec::new();
        for o in &req.outputs {
            let local = if self.store.disks().iter().any(|d| d.id == o.disk_id) {
                let mf = MemberFile {
                    format: 1,
                    volume: req.volume,
                    member: o.member,
                    k: req.k,
                    m: req.m,
                    generation: o.generation,
                    epoch: 0,
                    capacity: req.capacity,
                    disk_id: o.disk_id.clone(),
                    created_unix_ms: hoard_types::now_ms(),
                };
                let store = Arc::clone(&self.store);
                Some(
                    tokio::task::spawn_blocking(move || store.stage(mf))
                        .await
                        .map_err(remote)??,
                )
            } else {
                None
            };
            outputs.push(Output {
                member: o.member,
                generation: o.generation,
                disk_id: o.disk_id.clone(),
                address: o.address.clone(),
                local,
            });
        }
        let session_id = hoard_types::random_id("rebuild");
        let session = Session {
            volume: req.volume,
            geometry,
            capacity: req.capacity,
            sources: req.sources,
            outputs,
            next: 0,
            done_bytes: 0,
            total_bytes,
            good: Vec::with_capacity(records.len()),
            unrecoverable: Vec::new(),
            records,
            codec: Arc::new(
                Codec::new(geometry).map_err(|e| VolumeError::Internal(e.to_string()))?,
            ),
            copy_from: req.copy_from,
        };
        let n = session.records.len() as u64;
        self.sessions.lock().insert(
            session_id.clone(),
            Arc::new(tokio::sync::Mutex::new(session)),
        );
        tracing::info!(volume = req.volume, session = %session_id, records = n, total_bytes, "rebuild started");
        Ok(v1::BeginRebuildResponse {
            session: session_id,
            records: n,
            total_bytes,
        })
    }

    async fn read_index(
        &self,
        volume: VolumeId,
        src: &v1::RebuildSource,
    ) -> Result<(Vec<BlockRecord>, u64), VolumeError> {
        let mut c = self
            .peers
            .get(&src.address)
            .map_err(VolumeError::Internal)?;
        let mut stream = c
            .read_index(v1::ReadIndexRequest {
                extent: Some(hoard_proto::convert::extent_ref(ExtentId {
                    volume,
                    member: src.member,
                    generation: src.generation,
                })),
            })
            .await
            .map_err(|s| remote(s.message()))?
            .into_inner();
        let mut out = Vec::new();
        let mut bad = 0;
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(|s| remote(s.message()))?;
            bad += msg.bad_slots;
            for r in &msg.records {
                out.push(crate::wire::record_from_wire(r)?);
            }
        }
        Ok((out, bad))
    }

    fn session(&self, id: &str) -> Result<Arc<tokio::sync::Mutex<Session>>, VolumeError> {
        self.sessions.lock().get(id).cloned().ok_or_else(|| {
            VolumeError::BadRequest(format!("no rebuild session {id} on this server"))
        })
    }

    /// Rebuilds the next records of a session, reading at most about `max_bytes` per source.
    pub async fn rebuild_step(
        &self,
        id: &str,
        max_bytes: u64,
    ) -> Result<v1::RebuildStepResponse, VolumeError> {
        let session = self.session(id)?;
        let mut s = session.lock().await;
        let mut budget = max_bytes.max(1);
        while s.next < s.records.len() && budget > 0 {
            // A batch of consecutive records spanning at most SPAN_BYTES (at least one record).
            let first = s.next;
            let lo = s.records[first].offset;
            let span_limit = SPAN_BYTES.min(budget);
            let mut last = first;
            while last + 1 < s.records.len() && s.records[last + 1].end() - lo <= span_limit {
                last += 1;
            }
            let hi = s.records[first..=last]
                .iter()
                .map(|r| r.end())
                .max()
                .unwrap_or(lo);
            self.rebuild_span(&mut s, first, last, lo, hi).await?;
            let bytes: u64 = s.records[first..=last]
                .iter()
                .map(|r| r.frag_len as u64)
                .sum();
            s.done_bytes += bytes;
            s.next = last + 1;
            budget = budget.saturating_sub(hi - lo);
            metrics::counter!("hoard_volume_rebuilt_bytes_total")
                .increment(bytes * s.outputs.len() as u64);
        }
        Ok(v1::RebuildStepResponse {
            done_bytes: s.done_bytes,
            total_bytes: s.total_bytes,
            finished: s.next >= s.records.len(),
            unrecoverable: s.unrecoverable.len() as u64,
        })
    }

    async fn read_span(
        &self,
        volume: VolumeId,
        src: &v1::RebuildSource,
        lo: u64,
        hi: u64,
    ) -> Result<Bytes, VolumeError> {
        let mut c = self
            .peers
            .get(&src.address)
            .map_err(VolumeError::Internal)?;
        let resp = c
            .read_range(v1::ReadRangeRequest {
                extent: Some(hoard_proto::convert::extent_ref(ExtentId {
                    volume,
                    member: src.member,
                    generation: src.generation,
                })),
                offset: lo,
                len: (hi - lo) as u32,
            })
            .await
            .map_err(|s| {
                remote(format!(
                    "member {} at {}: {}",
                    src.member,
                    src.address,
                    s.message()
                ))
            })?;
        Ok(resp.into_inner().data)
    }

    async fn rebuild_span(
        &self,
        s: &mut Session,
        first: usize,
        last: usize,
        lo: u64,
        hi: u64,
    ) -> Result<(), VolumeError> {
        if let Some(member) = s.copy_from {
            return self.copy_span(s, member, first, last, lo, hi).await;
        }
        let width = s.geometry.width() as usize;
        let k = s.geometry.k as usize;
        // Read the span from k sources at once; more only when some fragment fails its crc.
        let mut spans: Vec<Option<Bytes>> = vec![None; width];
        let mut next_source = 0;
        let mut have = 0;
        while have < k && next_source < s.sources.len() {
            let want = k - have;
            let batch: Vec<v1::RebuildSource> = s.sources[next_source..]
                .iter()
                .take(want)
                .cloned()
                .collect();
            next_source += batch.len();
            let reads = batch
                .iter()
                .map(|src| self.read_span(s.volume, src, lo, hi));
            for (src, r) in batch.iter().zip(futures::future::join_all(reads).await) {
                match r {
                    Ok(b) if b.len() as u64 == hi - lo => {
                        spans[src.member as usize] = Some(b);
                        have += 1;
                    }
                    Ok(b) => tracing::warn!(member = src.member, got = b.len(), "short span read"),
                    Err(e) => tracing::warn!(volume = s.volume, "span read failed: {e}"),
                }
            }
        }
        if have < k {
            return Err(VolumeError::Internal(format!(
                "only {have} of {k} sources readable for volume {} at {lo}..{hi}",
                s.volume
            )));
        }
        // Which records have all their source fragments intact.
        let mut intact = vec![true; last - first + 1];
        for (j, rec) in s.records[first..=last].iter().enumerate() {
            let a = (rec.offset - lo) as usize;
            let b = a + rec.frag_len as usize;
            for (m, span) in spans.iter().enumerate() {
                if let Some(span) = span
                    && crc32c::crc32c(&span[a..b]) != rec.crcs[m]
                {
                    intact[j] = false;
                }
            }
        }
        // One decode for the whole span: bytes at the same offset form one stripe column.
        let codec = Arc::clone(&s.codec);
        let outs: Vec<usize> = s.outputs.iter().map(|o| o.member as usize).collect();
        let spans_for_decode = spans.clone();
        let rebuilt = tokio::task::spawn_blocking(move || {
            let mut slots: Vec<Option<Vec<u8>>> = spans_for_decode
                .iter()
                .map(|s| s.as_ref().map(|b| b.to_vec()))
                .collect();
            codec.reconstruct(&mut slots, false).map(|_| {
                outs.iter()
                    .map(|&m| Bytes::from(slots[m].take().unwrap_or_default()))
                    .collect::<Vec<Bytes>>()
            })
        })
        .await
        .map_err(remote)?
        .map_err(|e| VolumeError::Internal(e.to_string()))?;

        // Records whose sources were damaged are rebuilt one by one from other members.
        let mut per_output: Vec<Vec<(u64, Bytes)>> = vec![Vec::new(); s.outputs.len()];
        for (j, whole) in intact.iter().enumerate() {
            let rec = s.records[first + j].clone();
            let a = (rec.offset - lo) as usize;
            let b = a + rec.frag_len as usize;
            let frags: Option<Vec<Bytes>> = if *whole {
                Some(rebuilt.iter().map(|r| r.slice(a..b)).collect())
            } else {
                self.rebuild_record(s, &rec).await
            };
            accept_record(s, &mut per_output, rec, frags);
        }
        self.write_outputs(s, per_output).await
    }

    /// Copies a span of one member's own bytes (a move), checking every fragment; a fragment that fails
    /// its crc is rebuilt from the other members instead.
    async fn copy_span(
        &self,
        s: &mut Session,
        member: u32,
        first: usize,
        last: usize,
        lo: u64,
        hi: u64,
    ) -> Result<(), VolumeError> {
        let src = s
            .sources
            .iter()
            .find(|x| x.member == member)
            .cloned()
            .ok_or_else(|| {
                VolumeError::BadRequest(format!("member {member} is not among the sources"))
            })?;
        let span = self.read_span(s.volume, &src, lo, hi).await?;
        if span.len() as u64 != hi - lo {
            return Err(VolumeError::Internal("short span read".into()));
        }
        let mut per_output: Vec<Vec<(u64, Bytes)>> = vec![Vec::new(); s.outputs.len()];
        for j in first..=last {
            let rec = s.records[j].clone();
            let a = (rec.offset - lo) as usize;
            let frag = span.slice(a..a + rec.frag_len as usize);
            let bytes = if crc32c::crc32c(&frag) == rec.crcs[member as usize] {
                Some(vec![frag])
            } else {
                self.rebuild_record(s, &rec).await
            };
            accept_record(s, &mut per_output, rec, bytes);
        }
        self.write_outputs(s, per_output).await
    }

    /// Writes verified fragments: locally, or to the member's server.
    async fn write_outputs(
        &self,
        s: &Session,
        per_output: Vec<Vec<(u64, Bytes)>>,
    ) -> Result<(), VolumeError> {
        for (o, frags) in s.outputs.iter().zip(per_output) {
            if frags.is_empty() {
                continue;
            }
            match &o.local {
                Some(staged) => {
                    let staged = Arc::clone(staged);
                    tokio::task::spawn_blocking(move || {
                        for (off, bytes) in frags {
                            staged.write_at(off, &bytes)?;
                        }
                        Ok::<_, VolumeError>(())
                    })
                    .await
                    .map_err(remote)??;
                }
                None => {
                    let mut c = self.peers.get(&o.address).map_err(VolumeError::Internal)?;
                    for (off, bytes) in frags {
                        c.stage_write(v1::StageWriteRequest {
                            extent: Some(hoard_proto::convert::extent_ref(ExtentId {
                                volume: s.volume,
                                member: o.member,
                                generation: o.generation,
                            })),
                            disk_id: o.disk_id.clone(),
                            k: s.geometry.k,
                            m: s.geometry.m,
                            capacity: s.capacity,
                            offset: off,
                            data: bytes,
                        })
                        .await
                        .map_err(|st| {
                            remote(format!("stage write to {}: {}", o.address, st.message()))
                        })?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Rebuilds one record's lost fragments from any k members whose fragment checks out.
    async fn rebuild_record(&self, s: &Session, rec: &BlockRecord) -> Option<Vec<Bytes>> {
        let width = s.geometry.width() as usize;
        let k = s.geometry.k as usize;
        let mut slots: Vec<Option<Vec<u8>>> = vec![None; width];
        let mut have = 0;
        for src in &s.sources {
            if have >= k {
                break;
            }
            if let Ok(b) = self.read_span(s.volume, src, rec.offset, rec.end()).await
                && crc32c::crc32c(&b) == rec.crcs[src.member as usize]
            {
                slots[src.member as usize] = Some(b.to_vec());
                have += 1;
            }
        }
        if have < k {
            return None;
        }
        s.codec.reconstruct(&mut slots, false).ok()?;
        Some(
            s.outputs
                .iter()
                .map(|o| Bytes::from(slots[o.member as usize].take().unwrap_or_default()))
                .collect(),
        )
    }

    /// Writes the records of every rebuilt member, syncs, and puts them in service.
    pub async fn finish_rebuild(&self, id: &str) -> Result<v1::FinishRebuildResponse, VolumeError> {
        let session = self.session(id)?;
        let s = session.lock().await;
        if s.next < s.records.len() {
            return Err(VolumeError::BadRequest(format!(
                "rebuild {id} is not finished: {} of {} records done",
                s.next,
                s.records.len()
            )));
        }
        let records = s.good.clone();
        for o in &s.outputs {
            match &o.local {
                Some(_) => {
                    let (store, recs, vol, member, generation) = (
                        Arc::clone(&self.store),
                        records.clone(),
                        s.volume,
                        o.member,
                        o.generation,
                    );
                    tokio::task::spawn_blocking(move || {
                        store.commit_staged(vol, member, generation, &recs)
                    })
                    .await
                    .map_err(remote)??;
                }
                None => {
                    let mut c = self.peers.get(&o.address).map_err(VolumeError::Internal)?;
                    if s.good.is_empty() {
                        // Nothing was written there yet: make sure the staging extent exists.
                        c.stage_write(v1::StageWriteRequest {
                            extent: Some(hoard_proto::convert::extent_ref(ExtentId {
                                volume: s.volume,
                                member: o.member,
                                generation: o.generation,
                            })),
                            disk_id: o.disk_id.clone(),
                            k: s.geometry.k,
                            m: s.geometry.m,
                            capacity: s.capacity,
                            offset: 0,
                            data: Bytes::new(),
                        })
                        .await
                        .map_err(|st| remote(st.message()))?;
                    }
                    c.stage_commit(v1::StageCommitRequest {
                        extent: Some(hoard_proto::convert::extent_ref(ExtentId {
                            volume: s.volume,
                            member: o.member,
                            generation: o.generation,
                        })),
                        records: records.iter().map(crate::wire::record_to_wire).collect(),
                    })
                    .await
                    .map_err(|st| {
                        remote(format!("stage commit on {}: {}", o.address, st.message()))
                    })?;
                }
            }
        }
        let resp = v1::FinishRebuildResponse {
            records: records.len() as u64,
            bytes: s.done_bytes * s.outputs.len() as u64,
            unrecoverable: s.unrecoverable.len() as u64,
        };
        drop(s);
        self.sessions.lock().remove(id);
        tracing::info!(session = id, records = resp.records, "rebuild finished");
        Ok(resp)
    }

    /// Range repair: rewrites one corrupt fragment of a member held here, decoded from k good fragments
    /// of the same block on the volume's other members. Answers whether anything was rewritten.
    pub async fn repair_fragment(
        &self,
        req: v1::RepairFragmentRequest,
    ) -> Result<bool, VolumeError> {
        let e = req
            .extent
            .ok_or_else(|| VolumeError::BadRequest("missing extent".into()))?;
        let record = crate::wire::record_from_wire(
            req.record
                .as_ref()
                .ok_or_else(|| VolumeError::BadRequest("missing record".into()))?,
        )?;
        let geometry =
            Geometry::new(req.k, req.m).map_err(|e| VolumeError::BadRequest(e.to_string()))?;
        let width = geometry.width() as usize;
        if record.crcs.len() != width || e.member as usize >= width {
            return Err(VolumeError::BadRequest(
                "record does not fit the geometry".into(),
            ));
        }
        if let Some(s) = req.sources.iter().find(|s| s.member as usize >= width) {
            return Err(VolumeError::BadRequest(format!(
                "source member {} does not fit geometry {geometry}",
                s.member
            )));
        }
        let extent = self.store.extent(e.volume, e.member)?;
        let (ext, rec) = (Arc::clone(&extent), record.clone());
        let fine = tokio::task::spawn_blocking(move || {
            ext.read_fragment(
                e.generation,
                rec.offset,
                rec.frag_len,
                rec.crcs[ext.member as usize],
            )
        })
        .await
        .map_err(remote)?;
        match fine {
            Ok(_) => return Ok(false),
            Err(VolumeError::Corrupt { .. }) => {}
            Err(other) => return Err(other),
        }
        let mut slots: Vec<Option<Vec<u8>>> = vec![None; width];
        let mut have = 0;
        for src in req.sources.iter().filter(|s| s.member != e.member) {
            if have >= geometry.k as usize {
                break;
            }
            let Ok(mut c) = self.peers.get(&src.address) else {
                continue;
            };
            let r = c
                .read_fragment(v1::ReadFragmentRequest {
                    extent: Some(hoard_proto::convert::extent_ref(ExtentId {
                        volume: e.volume,
                        member: src.member,
                        generation: src.generation,
                    })),
                    offset: record.offset,
                    frag_len: record.frag_len,
                    expected_crc: record.crcs[src.member as usize],
                    hash: Bytes::copy_from_slice(record.hash.as_bytes()),
                })
                .await;
            if let Ok(r) = r {
                slots[src.member as usize] = Some(r.into_inner().fragment.to_vec());
                have += 1;
            }
        }
        if have < geometry.k as usize {
            return Err(VolumeError::Internal(format!(
                "only {have} good fragments of block {} found, {} needed",
                record.hash.short(),
                geometry.k
            )));
        }
        let codec = Codec::new(geometry).map_err(|e| VolumeError::Internal(e.to_string()))?;
        let member = e.member as usize;
        let (ext, rec) = (extent, record);
        tokio::task::spawn_blocking(move || {
            // Only data slots need filling when the bad fragment is a data one.
            codec
                .reconstruct(&mut slots, member < geometry.k as usize)
                .map_err(|e| VolumeError::Internal(e.to_string()))?;
            let frag = slots[member].take().unwrap_or_default();
            ext.repair_fragment(e.generation, &rec, &frag)
        })
        .await
        .map_err(remote)??;
        Ok(true)
    }

    /// Drops a session and its local staging extents.
    pub async fn abort_rebuild(&self, id: &str) {
        let Some(session) = self.sessions.lock().remove(id) else {
            return;
        };
        let s = session.lock().await;
        for o in &s.outputs {
            if o.local.is_some() {
                self.store.drop_staged(s.volume, o.member, o.generation);
            }
        }
    }
}

/// Queues a record's fragments for the outputs when there is one per output and each matches its
/// crc in the record; otherwise notes the record as not recoverable. That is typically the tail of a
/// put that was never acknowledged (its fragments never reached every member): the caller checks
/// those against the block index.
fn accept_record(
    s: &mut Session,
    per_output: &mut [Vec<(u64, Bytes)>],
    rec: BlockRecord,
    frags: Option<Vec<Bytes>>,
) {
    match frags {
        Some(f)
            if f.len() == s.outputs.len()
                && f.iter()
                    .zip(&s.outputs)
                    .all(|(bytes, o)| crc32c::crc32c(bytes) == rec.crcs[o.member as usize]) =>
        {
            for (i, bytes) in f.into_iter().enumerate() {
                per_output[i].push((rec.offset, bytes));
            }
            s.good.push(rec);
        }
        _ => {
            tracing::warn!(volume = s.volume, offset = rec.offset, block = %rec.hash.short(), "record not recoverable");
            s.unrecoverable.push((rec.hash, rec.offset));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extent::Extent;
    use crate::store::VolumeStoreConfig;
    use hoard_proto::v1::volume_server::VolumeServer;

    const VOLUME: VolumeId = 3;
    const CAPACITY: u64 = 1 << 24;

    /// One volume server with one disk, serving gRPC on loopback.
    struct Server {
        store: Arc<VolumeStore>,
        addr: String,
    }

    async fn server(dir: &std::path::Path, name: &str) -> Server {
        let store = Arc::new(
            VolumeStore::open(&VolumeStoreConfig {
                node_id: name.into(),
                disks: vec![dir.join(name)],
                disk_capacity: Some(1 << 30),
            })
            .unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let svc = VolumeServer::new(crate::VolumeService::new(Arc::clone(&store)))
            .max_decoding_message_size(hoard_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(hoard_proto::MAX_MESSAGE_BYTES);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Server { store, addr }
    }

    fn member_file(store: &VolumeStore, member: u32, generation: u64) -> MemberFile {
        MemberFile {
            format: 1,
            volume: VOLUME,
            member,
            k: 2,
            m: 1,
            generation,
            epoch: 0,
            capacity: CAPACITY,
            disk_id: store.disks()[0].id.clone(),
            created_unix_ms: 0,
        }
    }

    /// A 2+1 volume on three servers holding `blocks`, and a fourth, empty server.
    async fn volume(dir: &std::path::Path, blocks: &[Bytes]) -> (Vec<Server>, Vec<Arc<Extent>>) {
        let mut servers = Vec::new();
        let mut extents = Vec::new();
        for i in 0..4u32 {
            let s = server(dir, &format!("n{i}")).await;
            if i < 3 {
                let e = s.store.create_extent(member_file(&s.store, i, 1)).unwrap();
                e.fence(1, 1).unwrap();
                extents.push(e);
            }
            servers.push(s);
        }
        let codec = Codec::new(Geometry::new(2, 1).unwrap()).unwrap();
        let mut offset = 0u64;
        for b in blocks {
            let stripe = codec.encode(b).unwrap();
            let align = hoard_types::fragment_align(stripe.frag_len as u64);
            offset = offset.div_ceil(align) * align;
            for (i, e) in extents.iter().enumerate() {
                let rec = BlockRecord::checked(
                    BlockHash::of(b),
                    offset,
                    stripe.frag_len as u32,
                    b.len() as u32,
                    stripe.crcs.clone(),
                )
                .unwrap();
                e.append(1, 1, rec, stripe.fragments[i].clone())
                    .await
                    .unwrap();
            }
            offset += stripe.frag_len as u64;
        }
        (servers, extents)
    }

    fn block(seed: u64, len: usize) -> Bytes {
        (0..len)
            .map(|i| ((i as u64 * 31 + seed * 7) % 251) as u8)
            .collect()
    }

    /// Rebuilds member 2 onto server 3 from members 0 and 1; answers the step's last reply.
    async fn rebuild_member_2(servers: &[Server]) -> (v1::RebuildStepResponse, Rebuilder) {
        let rebuilder = Rebuilder::new(Arc::clone(&servers[3].store));
        let sources = (0..3)
            .map(|i| v1::RebuildSource {
                member: i,
                generation: 1,
                address: servers[i as usize].addr.clone(),
            })
            .filter(|s| s.member != 2)
            .collect();
        let begun = rebuilder
            .begin_rebuild(v1::BeginRebuildRequest {
                volume: VOLUME,
                k: 2,
                m: 1,
                capacity: CAPACITY,
                sources,
                outputs: vec![v1::RebuildOutput {
                    member: 2,
                    generation: 2,
                    disk_id: servers[3].store.disks()[0].id.clone(),
                    address: servers[3].addr.clone(),
                }],
                copy_from: None,
            })
            .await
            .unwrap();
        let last = loop {
            let r = rebuilder
                .rebuild_step(&begun.session, 64 << 10)
                .await
                .unwrap();
            if r.finished {
                break r;
            }
        };
        rebuilder.finish_rebuild(&begun.session).await.unwrap();
        (last, rebuilder)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_member_is_rebuilt_from_the_others_fragment_for_fragment() {
        let dir = tempfile::tempdir().unwrap();
        let blocks: Vec<Bytes> = [100usize, 5000, 70_000, 300_000, 1]
            .iter()
            .enumerate()
            .map(|(i, &n)| block(i as u64, n))
            .collect();
        let (servers, extents) = volume(dir.path(), &blocks).await;
        let (last, _) = rebuild_member_2(&servers).await;
        assert_eq!(last.unrecoverable, 0);
        // The rebuilt member holds the original's records and, for each, the very same bytes.
        let rebuilt = servers[3].store.extent(VOLUME, 2).unwrap();
        assert_eq!(rebuilt.generation(), 2);
        assert_eq!(rebuilt.records(), blocks.len() as u64);
        let mut originals = Vec::new();
        extents[2]
            .for_each_record(|_, r| originals.push(r.clone()))
            .unwrap();
        for r in &originals {
            let want = extents[2]
                .read_fragment(1, r.offset, r.frag_len, r.crcs[2])
                .unwrap();
            let got = rebuilt
                .read_fragment(2, r.offset, r.frag_len, r.crcs[2])
                .unwrap();
            assert_eq!(got, want, "block at {}", r.offset);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_no_source_can_vouch_for_are_left_out_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let blocks: Vec<Bytes> = (0..4).map(|i| block(i, 10_000)).collect();
        let (servers, extents) = volume(dir.path(), &blocks).await;
        // Rot one fragment of the second block on member 0: with only members 0 and 1 as sources,
        // that record cannot be rebuilt to its crc from any k of them.
        let mut recs = Vec::new();
        extents[0]
            .for_each_record(|_, r| recs.push(r.clone()))
            .unwrap();
        let victim = &recs[1];
        use std::os::unix::fs::FileExt;
        let dat = std::fs::OpenOptions::new()
            .write(true)
            .open(crate::extent::dat_path(&extents[0].dir, 0))
            .unwrap();
        dat.write_all_at(&[0xff; 16], crate::format::DAT_HEADER_LEN + victim.offset)
            .unwrap();
        let (last, _) = rebuild_member_2(&servers).await;
        assert_eq!(last.unrecoverable, 1);
        let rebuilt = servers[3].store.extent(VOLUME, 2).unwrap();
        assert_eq!(
            rebuilt.records(),
            3,
            "the unrecoverable record was left out"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebuild_names_sources_and_members_that_do_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let s = server(dir.path(), "n0").await;
        let rebuilder = Rebuilder::new(Arc::clone(&s.store));
        let req = |member: u32| v1::BeginRebuildRequest {
            volume: VOLUME,
            k: 2,
            m: 1,
            capacity: CAPACITY,
            sources: vec![
                v1::RebuildSource {
                    member,
                    generation: 1,
                    address: s.addr.clone(),
                },
                v1::RebuildSource {
                    member: 1,
                    generation: 1,
                    address: s.addr.clone(),
                },
            ],
            outputs: vec![v1::RebuildOutput {
                member: 2,
                generation: 2,
                disk_id: s.store.disks()[0].id.clone(),
                address: s.addr.clone(),
            }],
            copy_from: None,
        };
        // A source member past the geometry is refused before anything indexes by it.
        let e = rebuilder.begin_rebuild(req(7)).await.unwrap_err();
        assert!(matches!(e, VolumeError::BadRequest(_)), "{e}");
        assert!(e.to_string().contains("member 7"), "{e}");
        // Unknown sessions are named.
        let e = rebuilder.rebuild_step("rebuild-none", 1).await.unwrap_err();
        assert!(e.to_string().contains("rebuild-none"), "{e}");
    }
}
