//! JSON renderings of the cell's state, shared by `/status` and `--json` output.

use hoard_proto::v1;
use serde_json::{Value, json};

pub fn disk(d: &v1::DiskStatus) -> Value {
    let info = d.disk.clone().unwrap_or_default();
    json!({
        "id": info.disk_id,
        "node": d.node_id,
        "path": info.path,
        "state": info.state,
        "capacity_bytes": info.capacity_bytes,
        "used_bytes": info.used_bytes,
        "free_bytes": info.free_bytes,
        "trash_bytes": info.trash_bytes,
        "members": d.members,
    })
}

pub fn node(n: &v1::NodeInfo) -> Value {
    json!({
        "id": n.node_id,
        "address": n.address,
        "state": n.state,
        "labels": n.labels,
        "last_heartbeat_unix_ms": n.last_heartbeat_unix_ms,
    })
}

pub fn volume(v: &v1::VolumeInfo) -> Value {
    json!({
        "id": v.id,
        "state": v.state,
        "geometry": format!("{}+{}", v.k, v.m),
        "blocks": v.blocks,
        "bytes": v.bytes,
        "capacity": v.capacity,
        "lease_holder": v.lease_holder,
        "seal_reason": v.seal_reason,
        "violations": v.violations,
        "members": v.members.iter().map(|m| json!({
            "index": m.index,
            "disk": m.disk_id,
            "node": m.node_id,
            "generation": m.generation,
            "state": m.state,
        })).collect::<Vec<_>>(),
    })
}

pub fn cluster(s: &v1::ClusterStatusResponse) -> Value {
    let mut by_state = serde_json::Map::new();
    for v in &s.volumes {
        let n = by_state.entry(v.state.clone()).or_insert(json!(0));
        *n = json!(n.as_u64().unwrap_or(0) + 1);
    }
    json!({
        "cluster_id": s.cluster_id,
        "blocks": s.blocks,
        "bytes": s.bytes,
        "volumes_by_state": by_state,
        "nodes": s.nodes.iter().map(node).collect::<Vec<_>>(),
        "disks": s.disks.iter().map(disk).collect::<Vec<_>>(),
        "volumes": s.volumes.iter().map(volume).collect::<Vec<_>>(),
    })
}

pub fn repair(r: &v1::RepairStatusResponse) -> Value {
    let knobs = r.knobs.unwrap_or_default();
    let now = hoard_types::now_ms();
    let eta = |t: &v1::RepairTask| -> Option<f64> {
        (r.rate_bytes_per_sec > 0.0 && t.total_bytes > t.done_bytes)
            .then(|| (t.total_bytes - t.done_bytes) as f64 / r.rate_bytes_per_sec)
    };
    json!({
        "paused": knobs.paused,
        "bytes_per_sec": knobs.bytes_per_sec,
        "concurrency": knobs.concurrency,
        "degraded_volumes": r.degraded_volumes,
        "lost_volumes": r.lost_volumes,
        "bytes_rebuilt_total": r.bytes_rebuilt_total,
        "volumes_repaired_total": r.volumes_repaired_total,
        "ranges_repaired_total": r.ranges_repaired_total,
        "ranges": r.ranges.iter().map(|t| json!({
            "volume": t.volume, "member": t.member, "offset": t.offset,
            "hash": hex_of(&t.hash), "reported_unix_ms": t.reported_unix_ms,
        })).collect::<Vec<_>>(),
        "rate_bytes_per_sec": r.rate_bytes_per_sec,
        "queue": r.tasks.iter().map(|t| json!({
            "volume": t.volume,
            "priority": t.lost.len(),
            "lost_members": t.lost,
            "state": if t.unrecoverable { "unrecoverable" } else if t.plan.is_some() { "running" } else { "queued" },
            "done_bytes": t.done_bytes,
            "total_bytes": t.total_bytes,
            "eta_seconds": eta(t),
            "degraded_for_seconds": now.saturating_sub(t.degraded_since_unix_ms) / 1000,
            "targets": t.plan.as_ref().map(|p| p.outputs.iter().map(|o| json!({
                "member": o.member, "disk": o.disk_id, "generation": o.generation,
            })).collect::<Vec<_>>()),
        })).collect::<Vec<_>>(),
    })
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn scrub(k: &v1::ScrubKnobs, disks: &[(String, String, v1::ScrubStatus)]) -> Value {
    let now = hoard_types::now_ms();
    json!({
        "paused": k.paused,
        "bytes_per_sec": k.bytes_per_sec,
        "interval_secs": k.interval_secs,
        "start_requested_unix_ms": k.start_requested_unix_ms,
        "bad_ranges": disks.iter().map(|(_, _, s)| s.bad_ranges).sum::<u64>(),
        "disks": disks.iter().map(|(id, node, s)| json!({
            "disk": id,
            "node": node,
            "state": if s.state.is_empty() { "unknown" } else { s.state.as_str() },
            "pass_started_unix_ms": s.pass_started_unix_ms,
            "last_pass_completed_unix_ms": s.last_pass_completed_unix_ms,
            "pass_age_seconds": (s.last_pass_completed_unix_ms > 0)
                .then(|| now.saturating_sub(s.last_pass_completed_unix_ms) / 1000),
            "bytes_done": s.bytes_done,
            "bytes_total": s.bytes_total,
            "bad_ranges": s.bad_ranges,
            "last_pass_bad_ranges": s.last_pass_bad_ranges,
            "index_damage": s.index_damage,
            "last_pass_index_damage": s.last_pass_index_damage,
        })).collect::<Vec<_>>(),
    })
}

/// Bytes of all files under a directory.
pub fn dir_bytes(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub fn move_task(t: &v1::MoveTask) -> Value {
    json!({
        "id": t.id, "volume": t.volume, "member": t.member, "from_disk": t.from_disk,
        "to_disk": t.to_disk, "bytes": t.bytes, "state": t.state, "reason": t.reason,
        "done_bytes": t.done_bytes, "error": t.error,
    })
}
