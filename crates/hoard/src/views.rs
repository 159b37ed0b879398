//! The cell's state as the operator API's types ([`hoard_admin::api`]), shared by `/api/v1`, `/status`
//! and the status page.

use std::collections::BTreeMap;

use hoard_admin::api::*;
use hoard_meta::MetaState;
use hoard_meta::rebuild_index::IndexRebuildReport;
use hoard_meta::verify::VerifyReport;
use hoard_proto::v1;
use hoard_types::state::MoveState;

pub fn disk(d: &v1::DiskStatus) -> DiskView {
    let info = d.disk.clone().unwrap_or_default();
    DiskView {
        id: info.disk_id,
        node: d.node_id.clone(),
        path: info.path,
        state: info.state,
        capacity_bytes: info.capacity_bytes,
        used_bytes: info.used_bytes,
        free_bytes: info.free_bytes,
        trash_bytes: info.trash_bytes,
        members: d.members,
        slow: info.slow,
        sync_ms: info.sync_ms,
    }
}

pub fn node(n: &v1::NodeInfo) -> NodeView {
    NodeView {
        id: n.node_id.clone(),
        address: n.address.clone(),
        state: n.state.clone(),
        labels: n.labels.clone().into_iter().collect(),
        last_heartbeat_unix_ms: n.last_heartbeat_unix_ms,
    }
}

pub fn volume(v: &v1::VolumeInfo) -> VolumeView {
    VolumeView {
        id: v.id,
        state: v.state.clone(),
        geometry: format!("{}+{}", v.k, v.m),
        blocks: v.blocks,
        bytes: v.bytes,
        dead_blocks: v.dead_blocks,
        dead_bytes: v.dead_bytes,
        capacity: v.capacity,
        lease_holder: v.lease_holder.clone(),
        seal_reason: v.seal_reason.clone(),
        violations: v.violations.clone(),
        members: v
            .members
            .iter()
            .map(|m| MemberView {
                index: m.index,
                disk: m.disk_id.clone(),
                node: m.node_id.clone(),
                generation: m.generation,
                state: m.state.clone(),
            })
            .collect(),
    }
}

/// Compaction's knobs, progress (with an ETA at the rate so far) and counters.
pub fn compaction(m: &MetaState) -> CompactionView {
    let st = m.compaction().status();
    let c = &st.knobs;
    let dead_bytes = m
        .cluster_status()
        .volumes
        .iter()
        .filter(|v| v.state != "retired")
        .map(|v| v.dead_bytes)
        .sum();
    let eta_seconds = (c.donor != 0 && c.donor_moved_bytes > 0).then(|| {
        let elapsed_ms = hoard_types::now_ms()
            .saturating_sub(c.donor_started_unix_ms)
            .max(1);
        let left = c.donor_total_bytes.saturating_sub(c.donor_moved_bytes);
        (left as f64 * elapsed_ms as f64 / c.donor_moved_bytes as f64 / 1000.0).ceil() as u64
    });
    CompactionView {
        paused: c.paused,
        bytes_per_sec: c.bytes_per_sec,
        concurrency: c.concurrency,
        threshold: c.threshold,
        donor: c.donor,
        donor_started_unix_ms: c.donor_started_unix_ms,
        donor_total_bytes: c.donor_total_bytes,
        donor_moved_bytes: c.donor_moved_bytes,
        eta_seconds,
        moved_blocks_total: c.moved_blocks,
        moved_bytes_total: c.moved_bytes,
        dropped_blocks_total: c.dropped_blocks,
        reclaimed_bytes_total: c.reclaimed_bytes,
        volumes_compacted_total: c.volumes_compacted,
        stale_moves_total: c.stale_moves,
        dead_bytes,
        candidates: st
            .candidates
            .iter()
            .map(|(id, t)| CompactionCandidate {
                volume: *id,
                live_bytes: t.live,
                grace_bytes: t.grace,
                expired_bytes: t.expired,
            })
            .collect(),
    }
}

/// The whole cell: nodes, disks, volumes, repair and scrub.
pub fn cell(m: &MetaState) -> CellStatus {
    let s = m.cluster_status();
    let mut volumes_by_state = BTreeMap::<String, u64>::new();
    for v in &s.volumes {
        *volumes_by_state.entry(v.state.clone()).or_default() += 1;
    }
    CellStatus {
        cluster_id: s.cluster_id.clone(),
        blocks: s.blocks,
        bytes: s.bytes,
        volumes_by_state,
        nodes: s.nodes.iter().map(node).collect(),
        disks: s.disks.iter().map(disk).collect(),
        volumes: s.volumes.iter().map(volume).collect(),
        repair: repair(&m.repair().repair_status()),
        scrub: scrub(&m.scrub().knobs(), &m.scrub().status()),
    }
}

pub fn repair(r: &v1::RepairStatusResponse) -> RepairStatus {
    let knobs = r.knobs.unwrap_or_default();
    let now = hoard_types::now_ms();
    let eta = |t: &v1::RepairTask| -> Option<f64> {
        (r.rate_bytes_per_sec > 0.0 && t.total_bytes > t.done_bytes)
            .then(|| (t.total_bytes - t.done_bytes) as f64 / r.rate_bytes_per_sec)
    };
    RepairStatus {
        paused: knobs.paused,
        bytes_per_sec: knobs.bytes_per_sec,
        concurrency: knobs.concurrency,
        degraded_volumes: r.degraded_volumes,
        lost_volumes: r.lost_volumes,
        bytes_rebuilt_total: r.bytes_rebuilt_total,
        volumes_repaired_total: r.volumes_repaired_total,
        ranges_repaired_total: r.ranges_repaired_total,
        ranges: r
            .ranges
            .iter()
            .map(|t| RangeView {
                volume: t.volume,
                member: t.member,
                offset: t.offset,
                hash: t.hash.iter().map(|b| format!("{b:02x}")).collect(),
                reported_unix_ms: t.reported_unix_ms,
            })
            .collect(),
        rate_bytes_per_sec: r.rate_bytes_per_sec,
        queue: r
            .tasks
            .iter()
            .map(|t| RepairTaskView {
                volume: t.volume,
                priority: t.lost.len() as u64,
                lost_members: t.lost.clone(),
                state: if t.unrecoverable {
                    "unrecoverable"
                } else if t.plan.is_some() {
                    "running"
                } else {
                    "queued"
                }
                .to_string(),
                done_bytes: t.done_bytes,
                total_bytes: t.total_bytes,
                eta_seconds: eta(t),
                degraded_for_seconds: now.saturating_sub(t.degraded_since_unix_ms) / 1000,
                targets: t.plan.as_ref().map(|p| {
                    p.outputs
                        .iter()
                        .map(|o| TargetView {
                            member: o.member,
                            disk: o.disk_id.clone(),
                            generation: o.generation,
                        })
                        .collect()
                }),
            })
            .collect(),
    }
}

pub fn scrub(k: &v1::ScrubKnobs, disks: &[(String, String, v1::ScrubStatus)]) -> ScrubView {
    let now = hoard_types::now_ms();
    ScrubView {
        paused: k.paused,
        bytes_per_sec: k.bytes_per_sec,
        interval_secs: k.interval_secs,
        start_requested_unix_ms: k.start_requested_unix_ms,
        bad_ranges: disks.iter().map(|(_, _, s)| s.bad_ranges).sum(),
        disks: disks
            .iter()
            .map(|(id, node, s)| ScrubDiskView {
                disk: id.clone(),
                node: node.clone(),
                state: if s.state.is_empty() {
                    "unknown".to_string()
                } else {
                    s.state.clone()
                },
                pass_started_unix_ms: s.pass_started_unix_ms,
                last_pass_completed_unix_ms: s.last_pass_completed_unix_ms,
                pass_age_seconds: (s.last_pass_completed_unix_ms > 0)
                    .then(|| now.saturating_sub(s.last_pass_completed_unix_ms) / 1000),
                bytes_done: s.bytes_done,
                bytes_total: s.bytes_total,
                bad_ranges: s.bad_ranges,
                last_pass_bad_ranges: s.last_pass_bad_ranges,
                index_damage: s.index_damage,
                last_pass_index_damage: s.last_pass_index_damage,
            })
            .collect(),
    }
}

pub fn verify(r: VerifyReport) -> VerifyView {
    VerifyView {
        running: r.running,
        started_unix_ms: r.started_unix_ms,
        finished_unix_ms: r.finished_unix_ms,
        entries: r.entries,
        live: r.live,
        entries_per_sec: r.entries_per_sec,
        problems_total: r.problems_total,
        by_kind: r.by_kind,
        problems: r.problems,
        cancelled: r.cancelled,
    }
}

pub fn index_rebuild(s: IndexRebuildReport) -> IndexRebuildView {
    IndexRebuildView {
        running: s.running,
        started_unix_ms: s.started_unix_ms,
        finished_unix_ms: s.finished_unix_ms,
        cluster_id_adopted: s.cluster_id_adopted,
        volumes_total: s.volumes_total,
        volumes_done: s.volumes_done,
        volumes_restored: s.volumes_restored,
        records_seen: s.records_seen,
        blocks_accepted: s.blocks_accepted,
        blocks_already_known: s.blocks_already_known,
        blocks_rejected: s.blocks_rejected,
        errors: s.errors,
    }
}

pub fn move_task(t: &v1::MoveTask) -> MoveView {
    MoveView {
        id: t.id,
        volume: t.volume,
        member: t.member,
        from_disk: t.from_disk.clone(),
        to_disk: t.to_disk.clone(),
        bytes: t.bytes,
        state: t.state.clone(),
        reason: t.reason.clone(),
        done_bytes: t.done_bytes,
        error: t.error.clone(),
    }
}

/// Moves by state, bytes done of the moves not dropped, the open moves and the drains.
pub fn rebalance(m: &MetaState) -> RebalanceView {
    let (job, moves, drains) = m.moves().moves();
    let mut moves_by_state = BTreeMap::<String, u64>::new();
    let (mut bytes_done, mut bytes_total) = (0u64, 0u64);
    let state_of = |t: &v1::MoveTask| t.state.parse::<MoveState>().ok();
    for t in &moves {
        *moves_by_state.entry(t.state.clone()).or_default() += 1;
        match state_of(t) {
            Some(MoveState::Dropped) => {}
            Some(MoveState::Done) => {
                bytes_total += t.bytes;
                bytes_done += t.bytes;
            }
            _ => {
                bytes_total += t.bytes;
                bytes_done += t.done_bytes;
            }
        }
    }
    RebalanceView {
        state: job.state.to_string(),
        paused: job.paused,
        tolerance_pct: job.tolerance_pct,
        moves_by_state,
        bytes_done,
        bytes_total,
        moves: moves
            .iter()
            .filter(|t| !matches!(state_of(t), Some(MoveState::Done | MoveState::Dropped)))
            .map(move_task)
            .collect(),
        drains: drains
            .into_iter()
            .map(|(disk, drained, members_left)| DrainView {
                disk,
                drained,
                members_left,
            })
            .collect(),
    }
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

/// The trash ledger, for the admin API.
pub fn trash(m: &MetaState) -> TrashView {
    let s = m.trash().status();
    let r = &s.summary;
    TrashView {
        halted: r.halted.clone(),
        halted_unix_ms: r.halted_unix_ms,
        entries: s.entries,
        bytes: s.bytes,
        cleared: s.cleared,
        cleared_bytes: s.cleared_bytes,
        clearances_total: r.last_clearance,
        unlinks_total: r.unlinks,
        unlinks_without_clearance_total: r.unlinks_without_clearance,
        violations_total: r.violations,
        inspections_total: r.inspections,
        last_inspection_unix_ms: r.last_inspection_unix_ms,
        waiting: s
            .waiting
            .iter()
            .map(|e| TrashEntryView {
                node_id: e.node_id.clone(),
                disk_id: e.disk_id.clone(),
                name: e.name.clone(),
                extent: if e.identified {
                    format!("{}/{} gen {}", e.volume, e.member, e.generation)
                } else {
                    String::new()
                },
                trashed_unix_ms: e.trashed_unix_ms,
                bytes: e.bytes,
                waiting: e.waiting.clone(),
            })
            .collect(),
    }
}
