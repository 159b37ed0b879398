//! Who is alive, in one place: when a node counts as up, when a disk may take members, and the health
//! check that marks members lost and settles each volume's state. Every other module asks these.

use std::sync::Arc;
use std::time::Duration;

use hoard_types::now_ms;
use hoard_types::state::{MemberHealth, MemberState, VolumeState};

use crate::MetaError;
use crate::core::{Core, MetaConfig, Tables};
use crate::rows::{DiskRow, MemberRow, NodeRow, VolumeRow};
use crate::schema;

/// Whether a node has been heard from within the grace period.
pub(crate) fn node_up(cfg: &MetaConfig, node: &NodeRow, now: u64) -> bool {
    now.saturating_sub(node.last_heartbeat_unix_ms) <= cfg.heartbeat_grace.as_millis() as u64
}

/// Whether the node serving `disk` is up.
pub(crate) fn disk_node_up(t: &Tables, cfg: &MetaConfig, disk: &DiskRow, now: u64) -> bool {
    t.nodes
        .get(&disk.node_id)
        .is_some_and(|n| node_up(cfg, n, now))
}

/// Whether a disk may take new members, whatever its fill: healthy, not held, not draining, its node up.
pub(crate) fn disk_usable(t: &Tables, cfg: &MetaConfig, disk: &DiskRow, now: u64) -> bool {
    disk.health.is_ok() && disk.hold.is_empty() && !disk.draining && disk_node_up(t, cfg, disk, now)
}

/// What readers see of a member: its stored state, and whether its node is heard from.
pub(crate) fn member_health(t: &Tables, cfg: &MetaConfig, m: &MemberRow, now: u64) -> MemberHealth {
    let up = t
        .disks
        .get(&m.disk_id)
        .is_some_and(|d| disk_node_up(t, cfg, d, now));
    MemberHealth::of(m.state, up)
}

/// Whether a writer can count on a member now: readable, its disk not reported failing, and its node
/// heard from lately.
pub(crate) fn member_writable(t: &Tables, cfg: &MetaConfig, m: &MemberRow, now: u64) -> bool {
    member_health(t, cfg, m, now).is_ok()
        && !t.suspect.contains(&m.disk_id)
        && !t
            .disks
            .get(&m.disk_id)
            .is_some_and(|d| node_late(t, &d.node_id, now))
}

/// Whether a node has missed three heartbeats (and at least 3 s): long before its grace runs out it
/// is likely stopped or cut off, and new members (and new leases) go elsewhere when they can.
pub(crate) fn node_late(t: &Tables, node: &str, now: u64) -> bool {
    t.nodes.get(node).is_some_and(|n| {
        let since = n.last_heartbeat_unix_ms.max(t.started_unix_ms);
        now.saturating_sub(since) > n.interval_ms.saturating_mul(3).max(3_000)
    })
}

/// The state a volume should be in, given its lost members; the window of vulnerability when it just
/// became whole again.
pub(crate) fn settle_state(v: &mut VolumeRow, now: u64) -> Option<Duration> {
    let lost = v.lost_members().len() as u32;
    let mut healed = None;
    if lost > 0 {
        if v.degraded_since_unix_ms == 0 {
            v.degraded_since_unix_ms = now;
        }
        v.lease_holder.clear();
        v.state = if lost > v.m {
            VolumeState::Lost
        } else {
            VolumeState::Degraded
        };
        if v.seal_reason.is_empty() {
            v.seal_reason = format!("{lost} member(s) lost");
        }
    } else {
        if v.degraded_since_unix_ms != 0 {
            healed = Some(Duration::from_millis(
                now.saturating_sub(v.degraded_since_unix_ms),
            ));
            v.degraded_since_unix_ms = 0;
        }
        if matches!(v.state, VolumeState::Degraded | VolumeState::Lost) {
            v.state = VolumeState::Sealed;
        }
    }
    healed
}

/// Whether a node has been silent past the grace while this meta ran. Silence while meta itself was
/// down is not counted: after a restart every node has a fresh grace to be heard from, so that a long
/// meta outage does not set off a rebuild of every member.
fn silent_past_grace(t: &Tables, cfg: &MetaConfig, node: &NodeRow, now: u64) -> bool {
    let since = node.last_heartbeat_unix_ms.max(t.started_unix_ms);
    now.saturating_sub(since) > cfg.heartbeat_grace.as_millis() as u64
}

/// Why a member is lost now, if it is: its disk unknown or failed, or its node silent past the grace
/// (counted while meta runs).
fn why_lost(t: &Tables, cfg: &MetaConfig, m: &MemberRow, now: u64) -> Option<String> {
    let Some(d) = t.disks.get(&m.disk_id) else {
        return Some("disk unknown".to_string());
    };
    if !d.health.is_ok() {
        return Some(format!("disk {}: {}", m.disk_id, d.health));
    }
    match t.nodes.get(&d.node_id) {
        None => Some(format!("node {} unknown", d.node_id)),
        Some(n) if silent_past_grace(t, cfg, n, now) => Some(format!(
            "node {} silent for {} s",
            d.node_id,
            now.saturating_sub(n.last_heartbeat_unix_ms) / 1000
        )),
        Some(_) => None,
    }
}

/// The health check: marks members lost whose node has been silent past the grace period or whose
/// disk failed, brings back the members of a lost volume that return before anything was rebuilt, and
/// settles every volume's state.
pub struct Health {
    core: Arc<Core>,
}

impl Health {
    pub(crate) fn new(core: Arc<Core>) -> Health {
        Health { core }
    }

    /// One check of every volume. Runs every second, and at once when a disk reports failure.
    pub fn check(&self) -> Result<(), MetaError> {
        let cfg = &self.core.cfg;
        let changed = self.core.mutate(true, |t, b| {
            let now = now_ms();
            let mut changed = 0;
            let ids: Vec<_> = t.volumes.keys().copied().collect();
            for id in ids {
                let v = &t.volumes[&id];
                if !v.state.in_service() {
                    continue;
                }
                let before = v.clone();
                let mut v = v.clone();
                for m in v.members.iter_mut() {
                    if m.state != MemberState::Ok {
                        continue;
                    }
                    if let Some(why) = why_lost(t, cfg, m, now) {
                        tracing::warn!(volume = id, disk = %m.disk_id, "member lost: {why}");
                        m.state = MemberState::Lost;
                    }
                }
                // A lost volume whose members come back before anything was rebuilt is whole again:
                // the members were sealed when they went away and hold everything acknowledged.
                if v.state == VolumeState::Lost && !t.repairs.contains_key(&id) {
                    for m in v
                        .members
                        .iter_mut()
                        .filter(|m| m.state == MemberState::Lost)
                    {
                        if why_lost(t, cfg, m, now).is_none() {
                            tracing::info!(volume = id, disk = %m.disk_id, "lost member is back");
                            m.state = MemberState::Ok;
                        }
                    }
                }
                if v.state == VolumeState::Open && !v.lost_members().is_empty() {
                    v.seal_reason = "member lost".into();
                }
                if let Some(window) = settle_state(&mut v, now) {
                    metrics::histogram!("hoard_repair_window_of_vulnerability_seconds")
                        .record(window.as_secs_f64());
                }
                if v != before {
                    schema::put_volume(b, id, &v);
                    t.volumes.insert(id, v);
                    changed += 1;
                }
            }
            changed
        })?;
        if changed > 0 {
            tracing::debug!(changed, "volume health changed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::KvEngine;
    use crate::testutil::cell_on;

    fn lost_members(state: &crate::MetaState) -> usize {
        state
            .cluster_status()
            .volumes
            .iter()
            .flat_map(|v| &v.members)
            .filter(|m| m.state == "lost")
            .count()
    }

    #[tokio::test]
    async fn a_meta_outage_longer_than_the_grace_loses_no_member() {
        let engine: Arc<dyn KvEngine> = Arc::new(crate::MemEngine::new());
        let cfg = MetaConfig {
            extent_capacity: 1 << 20,
            heartbeat_grace: Duration::from_millis(400),
            ..Default::default()
        };
        let clock = || crate::clock::MetaClock::system();
        let (state, _) = cell_on(Arc::clone(&engine), cfg.clone(), clock(), 3, 3);
        state.volumes().acquire("t", &[]).await.unwrap();
        state.health().check().unwrap();
        assert_eq!(lost_members(&state), 0);
        state.shutdown();
        drop(state);
        // Meta is down for longer than the grace; the volume servers were fine all along.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (state, _) = cell_on(Arc::clone(&engine), cfg, clock(), 0, 0);
        state.health().check().unwrap();
        assert_eq!(
            lost_members(&state),
            0,
            "meta's own outage is not the nodes' silence"
        );
        // Silent past a whole grace while meta runs: now they are lost.
        tokio::time::sleep(Duration::from_millis(600)).await;
        state.health().check().unwrap();
        assert_eq!(lost_members(&state), 9);
    }
}
