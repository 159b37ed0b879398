//! What meta shows of its tables to other roles and to operators: volumes with their members'
//! addresses and health, and the whole cell. The wire messages are built here and in the service.

use std::collections::HashMap;

use hoard_proto::v1;
use hoard_types::state::{MemberState, NodeHealth, VolumeState};
use hoard_types::{VolumeId, now_ms};

use crate::core::{MetaConfig, Tables};
use crate::health;
use crate::placement::{self, Candidate};
use crate::room::candidate_of;
use crate::rows::VolumeRow;

/// A volume as readers and writers see it: members with their node's address and their health (a
/// stored `ok` member whose node is silent shows as `down`).
pub(crate) fn volume_info(
    t: &Tables,
    cfg: &MetaConfig,
    id: VolumeId,
    row: &VolumeRow,
    now: u64,
) -> v1::VolumeInfo {
    let members = row
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let node_id = t
                .disks
                .get(&m.disk_id)
                .map(|d| d.node_id.clone())
                .unwrap_or_default();
            v1::MemberInfo {
                index: i as u32,
                disk_id: m.disk_id.clone(),
                address: t
                    .nodes
                    .get(&node_id)
                    .map(|n| n.address.clone())
                    .unwrap_or_default(),
                node_id,
                generation: m.generation,
                state: health::member_health(t, cfg, m, now).to_string(),
            }
        })
        .collect();
    v1::VolumeInfo {
        id,
        k: row.k,
        m: row.m,
        state: row.state.to_string(),
        members,
        capacity: row.capacity,
        blocks: row.blocks,
        bytes: row.bytes,
        dead_blocks: row.dead_blocks,
        dead_bytes: row.dead_bytes,
        lease_holder: row.lease_holder.clone(),
        lease_epoch: row.lease_epoch,
        seal_reason: row.seal_reason.clone(),
        violations: Vec::new(),
    }
}

/// The whole cell, for status pages and admin commands.
pub(crate) fn cluster_status(t: &Tables, cfg: &MetaConfig) -> v1::ClusterStatusResponse {
    let now = now_ms();
    let mut members_per_disk: HashMap<&str, u32> = HashMap::new();
    for v in t
        .volumes
        .values()
        .filter(|v| v.state != VolumeState::Retired)
    {
        for m in &v.members {
            *members_per_disk.entry(m.disk_id.as_str()).or_default() += 1;
        }
    }
    let nodes = t
        .nodes
        .iter()
        .map(|(id, n)| v1::NodeInfo {
            node_id: id.clone(),
            address: n.address.clone(),
            labels: n.labels.clone(),
            last_heartbeat_unix_ms: n.last_heartbeat_unix_ms,
            state: if health::node_up(cfg, n, now) {
                NodeHealth::Up
            } else {
                NodeHealth::Down
            }
            .to_string(),
        })
        .collect();
    let disks = t
        .disks
        .iter()
        .map(|(id, d)| {
            let members = members_per_disk.get(id.as_str()).copied().unwrap_or(0);
            // For operators: a healthy disk that takes no members says why.
            let state = if !d.health.is_ok() {
                d.health.to_string()
            } else if !d.hold.is_empty() {
                format!("held: {}", d.hold)
            } else if d.draining && members == 0 {
                "drained".to_string()
            } else if d.draining {
                format!("draining ({members} members left)")
            } else if let Some(ms) = t.slow.get(id) {
                format!("slow: synced writes take {ms} ms; no new members")
            } else {
                d.health.to_string()
            };
            v1::DiskStatus {
                disk: Some(v1::DiskInfo {
                    disk_id: id.clone(),
                    path: d.path.clone(),
                    capacity_bytes: d.capacity_bytes,
                    used_bytes: d.used_bytes,
                    free_bytes: d.free_bytes,
                    trash_bytes: d.trash_bytes,
                    state,
                    extents: d.extents,
                    cluster_id: d.cluster_id.clone(),
                    scrub: t.scrub.get(id).cloned(),
                    slow: t.slow.contains_key(id),
                    sync_ms: t.slow.get(id).copied().unwrap_or(0),
                }),
                node_id: d.node_id.clone(),
                members,
            }
        })
        .collect();
    let every_disk: Vec<Candidate> = t.disks.keys().filter_map(|d| candidate_of(t, d)).collect();
    let volumes: Vec<v1::VolumeInfo> = t
        .volumes
        .iter()
        .map(|(id, v)| {
            let mut info = volume_info(t, cfg, *id, v, now);
            if v.state != VolumeState::Retired && cfg.node_failure_domain {
                let members: Vec<Candidate> = v
                    .members
                    .iter()
                    .filter(|m| m.state == MemberState::Ok)
                    .filter_map(|m| candidate_of(t, &m.disk_id))
                    .collect();
                info.violations = placement::violations(&members, &every_disk, v.m as usize);
            }
            info
        })
        .collect();
    v1::ClusterStatusResponse {
        cluster_id: t.cluster_id.clone(),
        nodes,
        disks,
        blocks: t.volumes.values().map(|v| v.blocks).sum(),
        bytes: t.volumes.values().map(|v| v.bytes).sum(),
        volumes,
    }
}
