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
