//! Volume servers and their disks: heartbeats in, the node and disk tables, what each server says it
//! holds, and operators declaring a held disk empty.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hoard_proto::v1;
use hoard_types::state::{DiskHealth, VolumeState};
use hoard_types::{ExtentId, MAX_EXTENT_CAPACITY, now_ms};

use crate::MetaError;
use crate::core::{Core, Tables};
use crate::engine::Cf;
pub use crate::rows::ReportedExtent;
use crate::rows::{DiskRow, NodeRow};
use crate::schema::encode;

/// The most bytes meta believes one disk reports (1 PiB): sums over many disks cannot overflow.
const MAX_DISK_BYTES: u64 = 1 << 50;

/// A disk as its volume server reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportedDisk {
    pub disk_id: String,
    pub path: String,
    pub health: DiskHealth,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub extents: u32,
    /// The cluster in the disk's label; empty until the disk first joined one.
    pub cluster_id: String,
    pub scrub: Option<v1::ScrubStatus>,
    pub trash_bytes: u64,
    /// Its server finds its synced writes slow ([`crate::core::Tables::slow`]).
    pub slow: bool,
    pub sync_ms: u32,
}

/// A volume server's heartbeat, checked: every size clamped to what a disk or extent can hold (so
/// that sums over them cannot overflow), every disk state parsed, every extent named.
#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    pub node_id: String,
    pub address: String,
    pub labels: HashMap<String, String>,
    pub disks: Vec<ReportedDisk>,
    pub extents: Vec<ReportedExtent>,
    /// How often the server beats.
    pub interval_ms: u64,
    /// What the trash of its healthy disks holds.
    pub trash: Vec<crate::trash::ReportedTrash>,
    /// Disks whose trash was listed only in part.
    pub trash_truncated: Vec<String>,
}

impl TryFrom<&v1::HeartbeatRequest> for Heartbeat {
    type Error = MetaError;

    fn try_from(req: &v1::HeartbeatRequest) -> Result<Heartbeat, MetaError> {
        if req.node_id.is_empty() {
            return Err(MetaError::Invalid("heartbeat without node id".into()));
        }
        let disks = req
            .disks
            .iter()
            .map(|d| {
                let capacity_bytes = d.capacity_bytes.min(MAX_DISK_BYTES);
                Ok(ReportedDisk {
                    disk_id: d.disk_id.clone(),
                    path: d.path.clone(),
                    health: d.state.parse().map_err(|e| {
                        MetaError::Invalid(format!("heartbeat: disk {}: {e}", d.disk_id))
                    })?,
                    capacity_bytes,
                    used_bytes: d.used_bytes.min(MAX_DISK_BYTES),
                    free_bytes: d.free_bytes.min(capacity_bytes),
                    extents: d.extents,
                    cluster_id: d.cluster_id.clone(),
                    scrub: d.scrub.clone(),
                    trash_bytes: d.trash_bytes.min(MAX_DISK_BYTES),
                    slow: d.slow,
                    sync_ms: d.sync_ms,
                })
            })
            .collect::<Result<_, MetaError>>()?;
        let extents = req
            .extents
            .iter()
            .filter_map(|e| {
                let capacity = e.capacity.min(MAX_EXTENT_CAPACITY);
                Some(ReportedExtent {
                    id: e.extent?.into(),
                    disk_id: e.disk_id.clone(),
                    data_len: e.data_len.min(capacity),
                    k: e.k,
                    m: e.m,
                    epoch: e.epoch,
                    capacity,
                    records: e.records,
                })
            })
            .collect();
        if req.trash.len() > crate::trash::MAX_REPORTED {
            return Err(MetaError::Invalid(format!(
                "heartbeat lists {} trash entries, more than {}",
                req.trash.len(),
                crate::trash::MAX_REPORTED
            )));
        }
        let trash = req
            .trash
            .iter()
            .map(crate::trash::ReportedTrash::parse)
            .collect::<Result<_, MetaError>>()?;
        Ok(Heartbeat {
            node_id: req.node_id.clone(),
            address: req.address.clone(),
            labels: req.labels.clone(),
            disks,
            extents,
            interval_ms: req.interval_ms.clamp(100, 3_600_000),
            trash,
            trash_truncated: req.trash_truncated.clone(),
        })
    }
}

/// What meta answers a heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub struct HeartbeatAnswer {
    pub cluster_id: String,
    /// Extents superseded by a newer generation elsewhere (or of retired volumes): to the trash.
    pub retire: Vec<ExtentId>,
    /// Held disks of another cluster that an operator declared empty: they take this cluster's id.
    pub adopt_disks: Vec<String>,
    /// The server's trash entries meta cleared for unlinking.
    pub clearances: Vec<v1::TrashClearance>,
    /// Non-empty: unlinks are halted cell-wide, and why.
    pub trash_halted: String,
}

pub struct Nodes {
    core: Arc<Core>,
}

impl Nodes {
    pub(crate) fn new(core: Arc<Core>) -> Nodes {
        Nodes { core }
    }

    /// [`Nodes::heartbeat`] for a heartbeat from the network: a node id already bound to another
    /// address, or a disk already served by another node, is taken over only when that node no longer
    /// answers there as itself (a restart on a new address, a disk moved to another server). So no
    /// heartbeat can take a live node's name or another live node's disk; the refusal names both.
    pub async fn heartbeat_checked(&self, hb: &Heartbeat) -> Result<HeartbeatAnswer, MetaError> {
        // Addresses to ask, and what each should answer to keep its claim.
        let mut probes: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        {
            let t = self.core.lock();
            if let Some(n) = t.nodes.get(&hb.node_id)
                && n.address != hb.address
                && !n.address.is_empty()
            {
                probes
                    .entry(n.address.clone())
                    .or_insert_with(|| (hb.node_id.clone(), Vec::new()));
            }
            for d in &hb.disks {
                let Some(row) = t.disks.get(&d.disk_id) else {
                    continue;
                };
                if row.node_id == hb.node_id {
                    continue;
                }
                if let Some(owner) = t.nodes.get(&row.node_id)
                    && !owner.address.is_empty()
                    && owner.address != hb.address
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
            return self.heartbeat(hb);
        }
        let answers = futures::future::join_all(probes.keys().map(|addr| {
            let fut = self.core.ops.whois(addr.clone());
            async move { fut.await.ok() }
        }))
        .await;
        let mut taken_disks: Vec<String> = Vec::new();
        for ((addr, (owner, disks)), answer) in probes.iter().zip(answers) {
            let Some(who) = answer.filter(|w| &w.node_id == owner) else {
                continue;
            };
            if owner == &hb.node_id {
                metrics::counter!("hoard_meta_heartbeats_refused_total", "why" => "address")
                    .increment(1);
                return Err(MetaError::Conflict(format!(
                    "node {owner} is alive at {addr}: a heartbeat from {} cannot take its name",
                    hb.address
                )));
            }
            taken_disks.extend(disks.iter().filter(|d| who.disks.contains(d)).cloned());
        }
        if taken_disks.is_empty() {
            return self.heartbeat(hb);
        }
        metrics::counter!("hoard_meta_heartbeats_refused_total", "why" => "disk")
            .increment(taken_disks.len() as u64);
        tracing::warn!(
            node = %hb.node_id,
            address = %hb.address,
            disks = ?taken_disks,
            "heartbeat lists disks another live node serves; they are ignored"
        );
        let mut hb = hb.clone();
        hb.disks.retain(|d| !taken_disks.contains(&d.disk_id));
        hb.extents.retain(|e| !taken_disks.contains(&e.disk_id));
        hb.trash.retain(|e| !taken_disks.contains(&e.disk_id));
        self.heartbeat(&hb)
    }

    /// Records a volume server's heartbeat: its address, labels and disks. Answers the cluster id and
    /// the reported extents that a newer generation has replaced.
    pub fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatAnswer, MetaError> {
        let now = now_ms();
        self.core.mutate(false, |t, b| {
            // What a heartbeat reports never moves meta's counters: ids are meta's own. A volume id
            // found on a disk that meta does not know is never handed out (see `next_volume_id`), and
            // the disk is held until an operator rebuilds the index from it or declares it empty.
            let mut adopt = Vec::new();
            let node = NodeRow {
                address: hb.address.clone(),
                labels: hb.labels.clone(),
                last_heartbeat_unix_ms: now,
                interval_ms: hb.interval_ms,
            };
            let known = t.nodes.get(&hb.node_id).map(|n| n.address.clone());
            if known.as_deref() != Some(hb.address.as_str()) {
                tracing::info!(node = %hb.node_id, address = %hb.address, "volume server registered");
            }
            b.put(Cf::Nodes, hb.node_id.as_bytes(), encode(&node));
            t.nodes.insert(hb.node_id.clone(), node);
            for d in &hb.disks {
                t.suspect.remove(&d.disk_id);
                if d.slow {
                    if t.slow.insert(d.disk_id.clone(), d.sync_ms).is_none() {
                        tracing::warn!(disk = %d.disk_id, node = %hb.node_id, sync_ms = d.sync_ms, "disk is slow: no new members go there");
                    }
                } else if t.slow.remove(&d.disk_id).is_some() {
                    tracing::info!(disk = %d.disk_id, node = %hb.node_id, sync_ms = d.sync_ms, "disk is no longer slow");
                }
                let declared_empty = t.disks.get(&d.disk_id).is_some_and(|r| r.declared_empty);
                let draining = t.disks.get(&d.disk_id).is_some_and(|r| r.draining);
                let unknown = hb
                    .extents
                    .iter()
                    .filter(|e| e.disk_id == d.disk_id && !t.volumes.contains_key(&e.id.volume))
                    .count();
                let foreign = !d.cluster_id.is_empty() && d.cluster_id != t.cluster_id;
                let hold = if declared_empty {
                    if foreign {
                        adopt.push(d.disk_id.clone());
                    }
                    String::new()
                } else if foreign {
                    format!(
                        "labelled for cluster {}, this is {}: run rebuild-index, or declare the disk empty",
                        d.cluster_id, t.cluster_id
                    )
                } else if unknown > 0 {
                    format!(
                        "holds {unknown} extent(s) of volumes this metadata tier does not know: run rebuild-index, or declare the disk empty"
                    )
                } else {
                    String::new()
                };
                let row = DiskRow {
                    node_id: hb.node_id.clone(),
                    path: d.path.clone(),
                    health: d.health.clone(),
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
                t.disks.insert(d.disk_id.clone(), row);
                if let Some(s) = &d.scrub {
                    t.scrub.insert(d.disk_id.clone(), s.clone());
                }
            }
            // Only what meta knows to be superseded: an extent of a volume meta has never heard of is
            // left alone (meta may have lost its data; the disks are then the truth).
            let retire = hb
                .extents
                .iter()
                .map(|e| e.id)
                .filter(|e| match t.volumes.get(&e.volume) {
                    None => false,
                    Some(v) if v.state == VolumeState::Retired => true,
                    Some(v) => v.members.get(e.member as usize).is_some_and(|m| {
                        m.generation > e.generation
                            || (e.generation > m.generation && !in_flight(t, e))
                    }),
                })
                .collect();
            t.in_service.insert(hb.node_id.clone(), hb.extents.clone());
            let (clearances, trash_halted) = crate::trash::referee(
                t,
                b,
                &hb.node_id,
                &hb.disks,
                &hb.trash,
                &hb.trash_truncated,
            );
            HeartbeatAnswer {
                cluster_id: t.cluster_id.clone(),
                retire,
                adopt_disks: adopt,
                clearances,
                trash_halted,
            }
        })
    }

    /// An operator declares a held disk's unknown contents abandoned: it may take new members, and a
    /// disk labelled for another cluster is relabelled for this one.
    pub fn declare_disk_empty(&self, disk_id: &str) -> Result<(), MetaError> {
        self.core.mutate(true, |t, b| {
            let d = t
                .disks
                .get_mut(disk_id)
                .ok_or_else(|| MetaError::NotFound(format!("no disk {disk_id}")))?;
            d.declared_empty = true;
            d.hold.clear();
            b.put(Cf::Disks, disk_id.as_bytes().to_vec(), encode(&*d));
            tracing::warn!(disk = disk_id, "disk declared empty by an operator");
            Ok(())
        })?
    }
}

/// Whether a rebuild or move still in progress is writing this generation of the member. A newer
/// generation than meta's that nothing is writing was left by a rebuild or move that was abandoned (or
/// put in service just before its commit failed): it holds space and will never serve.
pub(crate) fn in_flight(t: &Tables, e: &ExtentId) -> bool {
    let rebuilding = t.repairs.get(&e.volume).is_some_and(|r| {
        r.outputs
            .iter()
            .any(|o| o.member == e.member && o.generation == e.generation)
    });
    rebuilding
        || t.moves.values().any(|mv| {
            mv.volume == e.volume
                && mv.member == e.member
                && mv.generation == e.generation
                && mv.state.is_active()
        })
}
