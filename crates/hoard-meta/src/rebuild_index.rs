//! Rebuilding the block index and the volume table from the disks alone, after the metadata tier was
//! lost.
//!
//! Every volume server reports the extents it holds with each heartbeat (volume, member, generation,
//! geometry, capacity). For each volume this metadata tier does not know, the members are taken from the
//! newest generation found per member index, the block records from the `.idx` of surviving members
//! (they are the same in every member), and each block is accepted only if `k` fragments that check
//! against their crc32c decode to bytes whose BLAKE3 is the block's key. Blocks of puts that were never
//! acknowledged may come back or not; none comes back wrong.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use hoard_erasure::Codec;
use hoard_proto::v1;
use hoard_types::{BlockHash, BlockLocation, Geometry, VolumeId, now_ms};
use parking_lot::Mutex;

use crate::MetaError;
use crate::engine::Cf;
use crate::records::{MemberRow, VolumeRow, encode};
use crate::state::{CommitOutcome, MEMBER_LOST, MEMBER_OK, MetaState, STATE_SEALED};

/// The highest member generation rebuild-index believes a disk about: far more rebuilds than a volume
/// ever sees, far below the top of the range.
const MAX_RESTORED_GENERATION: u64 = 1 << 48;

/// Progress and result of a rebuild.
#[derive(Clone, Debug, Default)]
pub struct IndexRebuild {
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

/// The job's shared state, owned by the metadata tier.
#[derive(Default)]
pub struct IndexRebuildJob {
    status: Mutex<IndexRebuild>,
}

impl IndexRebuildJob {
    pub fn status(&self) -> IndexRebuild {
        self.status.lock().clone()
    }
}

struct Found {
    address: String,
    info: v1::ExtentInfo,
}

impl MetaState {
    /// Starts rebuilding the index from the disks; fails when a rebuild is running already.
    pub fn start_rebuild_index(self: &Arc<Self>) -> Result<(), MetaError> {
        {
            let mut st = self.index_rebuild.status.lock();
            if st.running {
                return Err(MetaError::Invalid(
                    "an index rebuild is running already".into(),
                ));
            }
            *st = IndexRebuild {
                running: true,
                started_unix_ms: now_ms(),
                ..Default::default()
            };
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let res = me.rebuild_index().await;
            let mut st = me.index_rebuild.status.lock();
            if let Err(e) = res {
                tracing::error!("index rebuild failed: {e}");
                st.errors.push(e.to_string());
            }
            st.running = false;
            st.finished_unix_ms = now_ms();
            tracing::info!(
                volumes = st.volumes_restored,
                accepted = st.blocks_accepted,
                rejected = st.blocks_rejected,
                "index rebuild finished"
            );
        });
        Ok(())
    }

    pub fn index_rebuild_status(&self) -> IndexRebuild {
        self.index_rebuild.status()
    }

    fn progress(&self, f: impl FnOnce(&mut IndexRebuild)) {
        f(&mut self.index_rebuild.status.lock());
    }

    async fn rebuild_index(self: &Arc<Self>) -> Result<(), MetaError> {
        // What the volume servers hold, from their last heartbeats.
        let (found, labels, has_volumes) = {
            let cell = self.cell_lock();
            let mut found: BTreeMap<VolumeId, Vec<Found>> = BTreeMap::new();
            for (node, extents) in &cell.in_service {
                let address = cell
                    .nodes
                    .get(node)
                    .map(|n| n.address.clone())
                    .unwrap_or_default();
                for e in extents {
                    if let Some(r) = &e.extent
                        && !cell.volumes.contains_key(&r.volume)
                    {
                        found.entry(r.volume).or_default().push(Found {
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
        // Take the disks' cluster id when this tier starts from nothing.
        if let Some((id, _)) = labels.iter().max_by_key(|(_, n)| **n) {
            let id = id.clone();
            let changed = self.mutate_cell(true, |cell, b| {
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
                b.put(Cf::Config, b"cluster_id".to_vec(), id.as_bytes().to_vec());
                Ok(true)
            })??;
            if changed {
                tracing::warn!(cluster = %id, "metadata tier takes the cluster id found on the disks");
                self.progress(|s| s.cluster_id_adopted = id.clone());
            }
        }
        self.progress(|s| s.volumes_total = found.len() as u64);
        let clients = hoard_proto::VolumeClients::default();
        for (volume, extents) in found {
            match self.restore_volume(volume, &extents, &clients).await {
                Ok(()) => self.progress(|s| s.volumes_restored += 1),
                Err(e) => {
                    tracing::warn!(volume, "volume not restored: {e}");
                    self.progress(|s| s.errors.push(format!("volume {volume}: {e}")));
                }
            }
            self.progress(|s| s.volumes_done += 1);
        }
        Ok(())
    }

    async fn restore_volume(
        self: &Arc<Self>,
        volume: VolumeId,
        extents: &[Found],
        clients: &hoard_proto::VolumeClients,
    ) -> Result<(), MetaError> {
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
                || f.info
                    .extent
                    .as_ref()
                    .is_none_or(|x| x.generation == 0 || x.generation > MAX_RESTORED_GENERATION)
        }) {
            return Err(MetaError::Invalid(format!(
                "the extent on disk {} disagrees with the others (geometry {}+{}, capacity {}, {:?})",
                f.info.disk_id, f.info.k, f.info.m, f.info.capacity, f.info.extent
            )));
        }
        // The newest generation of each member.
        let mut members: Vec<Option<&Found>> = vec![None; width];
        for f in extents {
            let r = f.info.extent.as_ref().expect("filtered above");
            let Some(slot) = members.get_mut(r.member as usize) else {
                continue;
            };
            let newer = slot.is_none_or(|cur| {
                cur.info.extent.as_ref().map(|x| x.generation).unwrap_or(0) < r.generation
            });
            if newer {
                *slot = Some(f);
            }
        }
        let row = VolumeRow {
            k: g.k,
            m: g.m,
            state: STATE_SEALED.into(),
            members: members
                .iter()
                .map(|m| match m {
                    Some(f) => MemberRow {
                        disk_id: f.info.disk_id.clone(),
                        generation: f.info.extent.as_ref().map(|x| x.generation).unwrap_or(0),
                        state: MEMBER_OK.into(),
                    },
                    None => MemberRow {
                        disk_id: String::new(),
                        generation: 0,
                        state: MEMBER_LOST.into(),
                    },
                })
                .collect(),
            capacity: first.capacity,
            seal_reason: "restored from disks by rebuild-index".into(),
            created_unix_ms: now_ms(),
            generation_seq: extents
                .iter()
                .filter_map(|f| f.info.extent.as_ref().map(|x| x.generation))
                .max()
                .unwrap_or(1),
            ..Default::default()
        };
        self.mutate_cell(true, |cell, b| {
            if cell.volumes.contains_key(&volume) {
                return;
            }
            b.put(Cf::Volumes, volume.to_be_bytes().to_vec(), encode(&row));
            cell.volumes.insert(volume, row.clone());
            if volume >= cell.next_volume {
                // An id restored from the disks is this tier's own from now on.
                cell.next_volume = volume.saturating_add(1);
                b.put(
                    Cf::Config,
                    b"next_volume".to_vec(),
                    cell.next_volume.to_be_bytes().to_vec(),
                );
            }
        })?;
        let sources: Vec<(u32, u64, String)> = members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                m.map(|f| {
                    (
                        i as u32,
                        f.info.extent.as_ref().map(|x| x.generation).unwrap_or(0),
                        f.address.clone(),
                    )
                })
            })
            .collect();
        // The records, from up to two members (a damaged slot in one is filled from the other).
        let mut records: BTreeMap<u64, v1::BlockRecord> = BTreeMap::new();
        let mut read = 0;
        for (member, generation, address) in &sources {
            let Ok(mut c) = clients.get(address) else {
                continue;
            };
            let stream = c
                .read_index(v1::ReadIndexRequest {
                    extent: Some(v1::ExtentRef {
                        volume,
                        member: *member,
                        generation: *generation,
                    }),
                })
                .await;
            let Ok(stream) = stream else { continue };
            let mut stream = stream.into_inner();
            while let Some(Ok(msg)) = stream.next().await {
                for r in msg.records {
                    records.entry(r.offset).or_insert(r);
                }
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
                let (me, codec, sources) =
                    (Arc::clone(self), Arc::clone(&codec), Arc::clone(&sources));
                async move {
                    me.restore_block(volume, g, r, &codec, &sources, clients)
                        .await
                }
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
        clients: &hoard_proto::VolumeClients,
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
            let Ok(mut c) = clients.get(address) else {
                continue;
            };
            let got = c
                .read_fragment(v1::ReadFragmentRequest {
                    extent: Some(v1::ExtentRef {
                        volume,
                        member: *member,
                        generation: *generation,
                    }),
                    offset: r.offset,
                    frag_len: r.frag_len,
                    expected_crc: r.crcs[*member as usize],
                    hash: r.hash.clone(),
                })
                .await;
            if let Ok(f) = got {
                frags[*member as usize] = Some(f.into_inner().fragment);
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
        self.commit(
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
