//! Failure repair: the repair queue, rebuild plans and their commits, range repairs, and the live
//! repair knobs.
//!
//! The volume table is the queue: the health check ([`crate::health`]) marks members lost, and a volume
//! stays in the queue until a rebuilt member is committed in its place. A planned rebuild is recorded in
//! the `repair` table with the new members' disks and generations, so that a restarted repair daemon
//! finds it and a generation is never handed out twice.

use std::sync::Arc;

use hoard_proto::v1;
use hoard_types::state::{MemberState, RangeOutcome, VolumeState};
use hoard_types::{VolumeId, now_ms};

use crate::MetaError;
use crate::core::{Core, Tables};
use crate::engine::Cf;
use crate::health;
use crate::placement::Candidate;
use crate::room;
use crate::rows::{KnobsRow, RepairOutputRow, RepairRow, VolumeRow};
use crate::schema::{self, ConfigKey, RepairKey, encode};
use crate::views::volume_info;

pub struct Repair {
    core: Arc<Core>,
}

impl Repair {
    pub(crate) fn new(core: Arc<Core>) -> Repair {
        Repair { core }
    }

    /// Gauges derived from the cell tables.
    pub fn publish_metrics(&self) {
        let cell = self.cell_snapshot_counts();
        for (state, n) in &cell.by_state {
            metrics::gauge!("hoard_meta_volumes", "state" => state.as_str()).set(*n as f64);
        }
        metrics::gauge!("hoard_repair_volumes_degraded").set(cell.degraded as f64);
        metrics::gauge!("hoard_repair_volumes_lost").set(cell.lost as f64);
        for (p, n) in cell.queue_by_priority.iter().enumerate().skip(1) {
            metrics::gauge!("hoard_repair_queue_volumes", "priority" => p.to_string())
                .set(*n as f64);
        }
        metrics::gauge!("hoard_repair_rebuild_rate_bytes_per_second").set(cell.rate);
        metrics::gauge!("hoard_repair_rebuilt_bytes").set(cell.bytes_rebuilt as f64);
        metrics::gauge!("hoard_repair_ranges_queued").set(cell.ranges_queued as f64);
        metrics::gauge!("hoard_repair_oldest_degraded_seconds").set(cell.oldest_degraded_secs);
        metrics::gauge!("hoard_repair_paused").set(if cell.paused { 1.0 } else { 0.0 });
        self.publish_cell_metrics();
    }

    /// Gauges of nodes, disks and totals, for dashboards and alerts.
    fn publish_cell_metrics(&self) {
        let cell = self.core.lock();
        let now = now_ms();
        let (mut up, mut down) = (0u64, 0u64);
        for n in cell.nodes.values() {
            if health::node_up(&self.core.cfg, n, now) {
                up += 1;
            } else {
                down += 1;
            }
        }
        metrics::gauge!("hoard_meta_nodes", "state" => "up").set(up as f64);
        metrics::gauge!("hoard_meta_nodes", "state" => "down").set(down as f64);
        for (id, d) in &cell.disks {
            let labels = [("disk", id.clone()), ("node", d.node_id.clone())];
            metrics::gauge!("hoard_disk_used_bytes", &labels).set(d.used_bytes as f64);
            metrics::gauge!("hoard_disk_trash_bytes", &labels).set(d.trash_bytes as f64);
            metrics::gauge!("hoard_disk_capacity_bytes", &labels).set(d.capacity_bytes as f64);
            // Whichever is fuller: the disk's extents, or its filesystem (something else may fill it).
            let fill = if d.capacity_bytes == 0 {
                0.0
            } else {
                let cap = d.capacity_bytes as f64;
                (d.used_bytes as f64 / cap)
                    .max(1.0 - d.free_bytes.min(d.capacity_bytes) as f64 / cap)
            };
            metrics::gauge!("hoard_disk_fill_ratio", &labels).set(fill);
            metrics::gauge!("hoard_disk_failed", &labels).set(if d.health.is_ok() {
                0.0
            } else {
                1.0
            });
            metrics::gauge!("hoard_disk_slow", &labels).set(if cell.slow.contains_key(id) {
                1.0
            } else {
                0.0
            });
        }
        metrics::gauge!("hoard_meta_blocks")
            .set(cell.volumes.values().map(|v| v.blocks).sum::<u64>() as f64);
        metrics::gauge!("hoard_meta_stored_bytes")
            .set(cell.volumes.values().map(|v| v.bytes).sum::<u64>() as f64);
    }

    /// Volumes with lost members, most at risk first, and the knobs.
    pub fn repair_queue(&self) -> v1::RepairQueueResponse {
        let cell = self.core.lock();
        let now = now_ms();
        let mut tasks: Vec<v1::RepairTask> = cell
            .volumes
            .iter()
            .filter(|(_, v)| v.state != VolumeState::Retired)
            .filter_map(|(id, v)| {
                let lost = v.lost_members();
                if lost.is_empty() {
                    return None;
                }
                let repair = cell.repairs.get(id);
                Some(v1::RepairTask {
                    volume: *id,
                    unrecoverable: lost.len() as u32 > v.m,
                    lost,
                    plan: repair.map(|r| self.plan_message(&cell, *id, v, r, now)),
                    done_bytes: repair.map(|r| r.done_bytes).unwrap_or(0),
                    total_bytes: repair.map(|r| r.total_bytes).unwrap_or(0),
                    degraded_since_unix_ms: v.degraded_since_unix_ms,
                })
            })
            .collect();
        tasks.sort_by(|a, b| {
            b.lost
                .len()
                .cmp(&a.lost.len())
                .then(a.degraded_since_unix_ms.cmp(&b.degraded_since_unix_ms))
                .then(a.volume.cmp(&b.volume))
        });
        let ranges = cell
            .ranges
            .iter()
            .map(|(&(volume, member, offset), r)| v1::RangeTask {
                volume,
                member,
                offset,
                hash: r.hash.clone().into(),
                reported_unix_ms: r.reported_unix_ms,
            })
            .collect();
        v1::RepairQueueResponse {
            knobs: Some(knobs_message(&cell.knobs)),
            tasks,
            ranges,
        }
    }

    /// Ends a range repair task.
    pub fn range_done(
        &self,
        id: VolumeId,
        member: u32,
        offset: u64,
        outcome: &RangeOutcome,
    ) -> Result<(), MetaError> {
        self.core.mutate(true, |cell, b| {
            if cell.ranges.remove(&(id, member, offset)).is_some() {
                b.delete(Cf::Repair, RepairKey::Range(id, member, offset).encode());
                if *outcome == RangeOutcome::Repaired {
                    cell.counters.ranges_repaired += 1;
                    schema::put_config(b, ConfigKey::RepairCounters, &cell.counters);
                }
            }
        })?;
        if *outcome == RangeOutcome::Repaired {
            metrics::counter!("hoard_repair_ranges_repaired_total").increment(1);
            tracing::info!(volume = id, member, offset, "range repaired");
        } else {
            tracing::info!(volume = id, member, offset, %outcome, "range task closed");
        }
        Ok(())
    }

    fn plan_message(
        &self,
        cell: &Tables,
        id: VolumeId,
        v: &VolumeRow,
        r: &RepairRow,
        now: u64,
    ) -> v1::RepairPlan {
        let info = volume_info(cell, &self.core.cfg, id, v, now);
        let address_of = |disk: &str| {
            cell.disks
                .get(disk)
                .and_then(|d| cell.nodes.get(&d.node_id))
                .map(|n| n.address.clone())
                .unwrap_or_default()
        };
        let sources = r
            .sources
            .iter()
            .filter_map(|&i| info.members.get(i as usize))
            .map(|m| v1::RebuildSource {
                member: m.index,
                generation: m.generation,
                address: m.address.clone(),
            })
            .collect();
        let outputs: Vec<v1::RebuildOutput> = r
            .outputs
            .iter()
            .map(|o| v1::RebuildOutput {
                member: o.member,
                generation: o.generation,
                disk_id: o.disk_id.clone(),
                address: address_of(&o.disk_id),
            })
            .collect();
        v1::RepairPlan {
            volume: id,
            k: v.k,
            m: v.m,
            capacity: v.capacity,
            sources,
            runner: outputs
                .first()
                .map(|o| o.address.clone())
                .unwrap_or_default(),
            outputs,
            started_unix_ms: r.started_unix_ms,
            session: r.session.clone(),
        }
    }

    /// Plans (or returns the recorded plan for) rebuilding a volume's lost members.
    pub fn plan_repair(&self, id: VolumeId, avoid: &[String]) -> Result<v1::RepairPlan, MetaError> {
        self.core.mutate(true, |cell, b| {
            let now = now_ms();
            let v = cell.volumes.get(&id).ok_or(MetaError::NoVolume(id))?;
            if let Some(r) = cell.repairs.get(&id) {
                return Ok(self.plan_message(cell, id, v, r, now));
            }
            let lost = v.lost_members();
            if lost.is_empty() {
                return Err(MetaError::Invalid(format!("volume {id} has no lost member")));
            }
            if lost.len() as u32 > v.m {
                return Err(MetaError::Invalid(format!(
                    "volume {id} lost {} members, more than its {} parity: nothing to rebuild from",
                    lost.len(),
                    v.m
                )));
            }
            let cfg = &self.core.cfg;
            let live = |disk: &str| {
                cell.disks
                    .get(disk)
                    .is_some_and(|d| d.health.is_ok() && health::disk_node_up(cell, cfg, d, now))
            };
            let sources: Vec<u32> = v
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| m.state == MemberState::Ok && live(&m.disk_id) && !cell.suspect.contains(&m.disk_id))
                .map(|(i, _)| i as u32)
                .collect();
            if sources.len() < v.k as usize {
                return Err(MetaError::Invalid(format!(
                    "volume {id} has {} reachable members, needs {} to rebuild",
                    sources.len(),
                    v.k
                )));
            }
            let used: Vec<&str> = v.members.iter().map(|m| m.disk_id.as_str()).collect();
            let existing: Vec<Candidate> = v
                .members
                .iter()
                .filter(|m| m.state == MemberState::Ok)
                .filter_map(|m| room::candidate_of(cell, &m.disk_id))
                .collect();
            let per_node = self.core.cfg
                .node_failure_domain
                .then_some(v.m.max(1) as usize);
            let (cands, chosen) = room::place_on(cell, &self.core.cfg, now, &existing, lost.len(), per_node, |c| {
                !used.contains(&c.disk_id.as_str()) && !avoid.contains(&c.disk_id)
            })?;
            let v = cell.volumes.get_mut(&id).expect("looked up above");
            let outputs: Vec<RepairOutputRow> = lost
                .iter()
                .zip(&chosen)
                .map(|(&member, &c)| {
                    // Generations meta hands out stay far below the top of the range (restored ones
                    // are bounded by rebuild-index), so this never saturates in practice.
                    v.generation_seq = v
                        .generation_seq
                        .max(v.members.iter().map(|m| m.generation).max().unwrap_or(0))
                        .saturating_add(1);
                    RepairOutputRow {
                        member,
                        generation: v.generation_seq,
                        disk_id: cands[c].disk_id.clone(),
                    }
                })
                .collect();
            // Use sources in a stable order, data members first: reads of data members need no
            // decoding anyway, and any k will do.
            let row = RepairRow {
                outputs,
                sources,
                started_unix_ms: now,
                ..Default::default()
            };
            schema::put_volume(b, id, v);
            b.put(Cf::Repair, RepairKey::Rebuild(id).encode(), encode(&row));
            let v = v.clone();
            let plan = self.plan_message(cell, id, &v, &row, now);
            cell.repairs.insert(id, row);
            tracing::info!(
                volume = id,
                targets = ?plan.outputs.iter().map(|o| (o.member, o.disk_id.clone())).collect::<Vec<_>>(),
                "repair planned"
            );
            Ok(plan)
        })?
    }

    /// Records progress of a running rebuild. False when the plan is no longer current.
    pub fn repair_progress(
        &self,
        id: VolumeId,
        session: &str,
        done: u64,
        total: u64,
    ) -> Result<bool, MetaError> {
        self.core.mutate(false, |cell, b| {
            let Some(r) = cell.repairs.get_mut(&id) else {
                return false;
            };
            r.session = session.to_string();
            r.done_bytes = done;
            r.total_bytes = total;
            b.put(Cf::Repair, RepairKey::Rebuild(id).encode(), encode(&*r));
            true
        })
    }

    /// Puts the rebuilt members in service under their new generations, in one atomic write.
    pub fn commit_repair(
        &self,
        id: VolumeId,
        outputs: &[v1::RebuildOutput],
        bytes: u64,
    ) -> Result<(), MetaError> {
        let window = self.core.mutate(true, |cell, b| {
            let now = now_ms();
            let r = cell.repairs.get(&id).ok_or_else(|| {
                MetaError::Invalid(format!("no repair of volume {id} is planned"))
            })?;
            let same = r.outputs.len() == outputs.len()
                && r.outputs.iter().zip(outputs).all(|(a, o)| {
                    a.member == o.member && a.generation == o.generation && a.disk_id == o.disk_id
                });
            if !same {
                return Err(MetaError::Invalid(format!(
                    "commit of volume {id} does not match its planned repair"
                )));
            }
            let v = cell.volumes.get_mut(&id).ok_or(MetaError::NoVolume(id))?;
            for o in outputs {
                let m = v
                    .members
                    .get_mut(o.member as usize)
                    .ok_or_else(|| MetaError::Invalid(format!("no member {}", o.member)))?;
                m.disk_id = o.disk_id.clone();
                m.generation = o.generation;
                m.state = MemberState::Ok;
            }
            let window = health::settle_state(v, now);
            if window.is_some() {
                v.seal_reason.clear();
            }
            schema::put_volume(b, id, v);
            b.delete(Cf::Repair, RepairKey::Rebuild(id).encode());
            cell.repairs.remove(&id);
            cell.counters.bytes_rebuilt = cell.counters.bytes_rebuilt.saturating_add(bytes);
            cell.counters.volumes_repaired += 1;
            schema::put_config(b, ConfigKey::RepairCounters, &cell.counters);
            cell.recent.push_back((now, bytes));
            while cell.recent.front().is_some_and(|(t, _)| now - t > 60_000) {
                cell.recent.pop_front();
            }
            Ok(window)
        })??;
        if let Some(w) = window {
            metrics::histogram!("hoard_repair_window_of_vulnerability_seconds")
                .record(w.as_secs_f64());
        }
        metrics::counter!("hoard_repair_bytes_total").increment(bytes);
        metrics::counter!("hoard_repair_volumes_total").increment(1);
        tracing::info!(volume = id, bytes, "repair committed");
        self.publish_metrics();
        Ok(())
    }

    /// Drops a planned repair.
    pub fn abort_repair(&self, id: VolumeId, reason: &str) -> Result<(), MetaError> {
        self.core.mutate(true, |cell, b| {
            if cell.repairs.remove(&id).is_some() {
                b.delete(Cf::Repair, RepairKey::Rebuild(id).encode());
            }
        })?;
        tracing::warn!(volume = id, "repair aborted: {reason}");
        Ok(())
    }

    pub fn set_knobs(&self, req: &v1::SetRepairKnobsRequest) -> Result<v1::RepairKnobs, MetaError> {
        if req.concurrency == Some(0) {
            return Err(MetaError::Invalid("concurrency must be at least 1".into()));
        }
        self.core.mutate(true, |cell, b| {
            if let Some(p) = req.paused {
                cell.knobs.paused = p;
            }
            if let Some(r) = req.bytes_per_sec {
                cell.knobs.bytes_per_sec = r;
            }
            if let Some(c) = req.concurrency {
                cell.knobs.concurrency = c;
            }
            schema::put_config(b, ConfigKey::RepairKnobs, &cell.knobs);
            tracing::info!(knobs = ?cell.knobs, "repair knobs changed");
            knobs_message(&cell.knobs)
        })
    }

    pub fn repair_status(&self) -> v1::RepairStatusResponse {
        let queue = self.repair_queue();
        let counts = self.cell_snapshot_counts();
        v1::RepairStatusResponse {
            knobs: queue.knobs,
            tasks: queue.tasks,
            ranges: queue.ranges,
            ranges_repaired_total: counts.ranges_repaired,
            bytes_rebuilt_total: counts.bytes_rebuilt,
            rate_bytes_per_sec: counts.rate,
            degraded_volumes: counts.degraded,
            lost_volumes: counts.lost,
            volumes_repaired_total: counts.volumes_repaired,
        }
    }

    fn cell_snapshot_counts(&self) -> Counts {
        let mut cell = self.core.lock();
        let now = now_ms();
        while cell.recent.front().is_some_and(|(t, _)| now - t > 60_000) {
            cell.recent.pop_front();
        }
        let mut c = Counts::default();
        let mut by_state = std::collections::BTreeMap::new();
        for v in cell.volumes.values() {
            *by_state.entry(v.state).or_insert(0u64) += 1;
            let lost = v.lost_members().len();
            if lost > 0 && v.state != VolumeState::Retired {
                if lost as u32 > v.m {
                    c.lost += 1;
                } else {
                    c.degraded += 1;
                }
                if c.queue_by_priority.len() <= lost {
                    c.queue_by_priority.resize(lost + 1, 0);
                }
                c.queue_by_priority[lost] += 1;
            }
        }
        // Report every priority up to m, so that an emptied priority reads 0 rather than stale.
        let max_m = cell
            .volumes
            .values()
            .map(|v| v.m as usize)
            .max()
            .unwrap_or(0);
        if c.queue_by_priority.len() <= max_m {
            c.queue_by_priority.resize(max_m + 1, 0);
        }
        for s in [
            VolumeState::Open,
            VolumeState::Sealed,
            VolumeState::Degraded,
            VolumeState::Lost,
            VolumeState::Retired,
        ] {
            by_state.entry(s).or_insert(0);
        }
        c.by_state = by_state.into_iter().collect();
        let bytes: u64 = cell
            .recent
            .iter()
            .fold(0u64, |a, (_, b)| a.saturating_add(*b));
        c.rate = bytes as f64 / 60.0;
        c.bytes_rebuilt = cell.counters.bytes_rebuilt;
        c.volumes_repaired = cell.counters.volumes_repaired;
        c.ranges_repaired = cell.counters.ranges_repaired;
        c.ranges_queued = cell.ranges.len() as u64;
        c.paused = cell.knobs.paused;
        c.oldest_degraded_secs = cell
            .volumes
            .values()
            .filter(|v| v.degraded_since_unix_ms > 0 && v.state != VolumeState::Retired)
            .map(|v| now.saturating_sub(v.degraded_since_unix_ms) as f64 / 1000.0)
            .fold(0.0, f64::max);
        c
    }
}

#[derive(Default)]
struct Counts {
    by_state: Vec<(VolumeState, u64)>,
    degraded: u32,
    lost: u32,
    queue_by_priority: Vec<u64>,
    rate: f64,
    bytes_rebuilt: u64,
    volumes_repaired: u64,
    ranges_repaired: u64,
    ranges_queued: u64,
    paused: bool,
    oldest_degraded_secs: f64,
}

fn knobs_message(k: &KnobsRow) -> v1::RepairKnobs {
    v1::RepairKnobs {
        paused: k.paused,
        bytes_per_sec: k.bytes_per_sec,
        concurrency: k.concurrency,
    }
}
