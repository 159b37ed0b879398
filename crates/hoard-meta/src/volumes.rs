//! Volumes for writers: write leases on open volumes, creating volumes (placement, then one extent per
//! member), and the problems writers and readers report (a full volume, a failed member, a corrupt
//! fragment).

use std::collections::HashSet;
use std::sync::Arc;

use hoard_proto::v1;
use hoard_types::state::{MemberState, ProblemKind, VolumeState};
use hoard_types::{ExtentId, VolumeId, now_ms};

use crate::MetaError;
use crate::core::{Core, Tables};
use crate::engine::Cf;
use crate::health;
use crate::room;
use crate::rows::{MemberRow, RangeRow, VolumeRow};
use crate::schema::{self, ConfigKey, RepairKey, encode};
use crate::views::volume_info;

/// A problem a frontend reports with a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub volume: VolumeId,
    /// The member at fault, if any.
    pub member: Option<u32>,
    pub kind: ProblemKind,
    pub detail: String,
    /// For a corrupt fragment: its offset in the member and the block's hash.
    pub offset: u64,
    pub hash: Vec<u8>,
}

pub struct Volumes {
    core: Arc<Core>,
}

impl Volumes {
    pub(crate) fn new(core: Arc<Core>) -> Volumes {
        Volumes { core }
    }

    pub fn volume(&self, id: VolumeId) -> Result<v1::VolumeInfo, MetaError> {
        let t = self.core.lock();
        let row = t.volumes.get(&id).ok_or(MetaError::NoVolume(id))?;
        Ok(volume_info(&t, &self.core.cfg, id, row, now_ms()))
    }

    pub fn volumes(&self, ids: &[VolumeId]) -> Vec<v1::VolumeInfo> {
        let t = self.core.lock();
        let now = now_ms();
        ids.iter()
            .filter_map(|id| {
                t.volumes
                    .get(id)
                    .map(|r| volume_info(&t, &self.core.cfg, *id, r, now))
            })
            .collect()
    }

    /// Grants `holder` a write lease on an open volume, creating a volume when none is free.
    pub async fn acquire(
        &self,
        holder: &str,
        exclude: &[VolumeId],
    ) -> Result<(v1::VolumeInfo, u64), MetaError> {
        if holder.is_empty() {
            return Err(MetaError::Invalid("lease request without holder".into()));
        }
        let cfg = &self.core.cfg;
        let lease_ms = cfg.lease.as_millis() as u64;
        // An open volume whose lease is free and whose members are all reachable.
        let granted = self.core.mutate(true, |t, b| {
            let now = now_ms();
            let pick = t.volumes.iter().find_map(|(id, v)| {
                let free = v.lease_holder.is_empty() || v.lease_expires_unix_ms < now;
                let healthy = v
                    .members
                    .iter()
                    .all(|m| health::member_writable(t, cfg, m, now));
                (v.state == VolumeState::Open && free && healthy && !exclude.contains(id))
                    .then_some(*id)
            })?;
            let v = t.volumes.get_mut(&pick).expect("picked above");
            v.lease_holder = holder.to_string();
            v.lease_epoch += 1;
            v.lease_expires_unix_ms = now + lease_ms;
            schema::put_volume(b, pick, v);
            let row = v.clone();
            Some((volume_info(t, cfg, pick, &row, now), row.lease_epoch))
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
        self.create(holder).await
    }

    async fn create(&self, holder: &str) -> Result<(v1::VolumeInfo, u64), MetaError> {
        let cfg = &self.core.cfg;
        let geometry = cfg.geometry;
        let width = geometry.width() as usize;
        let mut avoid: Vec<String> = Vec::new();
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let planned = self.core.mutate(true, |t, b| {
                let now = now_ms();
                let cap = cfg
                    .node_failure_domain
                    .then_some(geometry.m.max(1) as usize);
                let (cands, chosen) = match room::place_on(t, cfg, now, &[], width, cap, |c| {
                    !avoid.contains(&c.disk_id)
                }) {
                    Ok(p) => p,
                    Err(e) => {
                        return Err(match room::full_reason(t, cfg, now, width) {
                            Some(why) => MetaError::Full(why),
                            None => e.into(),
                        });
                    }
                };
                let id = next_volume_id(t)?;
                t.next_volume = id
                    .checked_add(1)
                    .ok_or_else(|| MetaError::Full("every volume id has been used".into()))?;
                schema::put_counter(b, ConfigKey::NextVolume, t.next_volume);
                let row = VolumeRow {
                    k: geometry.k,
                    m: geometry.m,
                    state: VolumeState::Creating,
                    members: chosen
                        .iter()
                        .map(|&i| MemberRow {
                            disk_id: cands[i].disk_id.clone(),
                            generation: 1,
                            state: MemberState::Ok,
                        })
                        .collect(),
                    capacity: cfg.extent_capacity,
                    created_unix_ms: now,
                    ..Default::default()
                };
                schema::put_volume(b, id, &row);
                let info = volume_info(t, cfg, id, &row, now);
                // A fresh id: no row is ever overwritten by a new volume.
                match t.volumes.entry(id) {
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
                    extent: Some(
                        ExtentId {
                            volume: planned.id,
                            member: m.index,
                            generation: m.generation,
                        }
                        .into(),
                    ),
                    disk_id: m.disk_id.clone(),
                    k: geometry.k,
                    m: geometry.m,
                    capacity: cfg.extent_capacity,
                };
                let fut = self.core.ops.create_extent(m.address.clone(), req);
                let disk = m.disk_id.clone();
                async move { fut.await.map_err(|e| (disk, e)) }
            });
            let failures: Vec<(String, String)> = futures::future::join_all(creates)
                .await
                .into_iter()
                .filter_map(Result::err)
                .collect();
            let lease_ms = cfg.lease.as_millis() as u64;
            let id = planned.id;
            if failures.is_empty() {
                let out = self.core.mutate(true, |t, b| {
                    let now = now_ms();
                    let v = t.volumes.get_mut(&id).expect("created above");
                    v.state = VolumeState::Open;
                    v.lease_holder = holder.to_string();
                    v.lease_epoch = 1;
                    v.lease_expires_unix_ms = now + lease_ms;
                    schema::put_volume(b, id, v);
                    let row = v.clone();
                    (volume_info(t, cfg, id, &row, now), 1)
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
            self.core.mutate(true, |t, b| {
                if let Some(v) = t.volumes.get_mut(&id) {
                    v.state = VolumeState::Retired;
                    v.seal_reason = format!("creation failed: {last_err}");
                    schema::put_volume(b, id, v);
                }
            })?;
        }
        Err(MetaError::CreateFailed(last_err))
    }

    /// Extends (or, with `release`, gives up) a lease. False when the lease is no longer the holder's.
    pub fn renew_lease(
        &self,
        holder: &str,
        id: VolumeId,
        epoch: u64,
        release: bool,
    ) -> Result<bool, MetaError> {
        let lease_ms = self.core.cfg.lease.as_millis() as u64;
        self.core.mutate(false, |t, b| {
            let now = now_ms();
            let Some(v) = t.volumes.get_mut(&id) else {
                return false;
            };
            if v.state != VolumeState::Open || v.lease_holder != holder || v.lease_epoch != epoch {
                return false;
            }
            if release {
                v.lease_holder.clear();
                v.lease_expires_unix_ms = 0;
            } else {
                v.lease_expires_unix_ms = now + lease_ms;
            }
            schema::put_volume(b, id, v);
            !release
        })
    }

    /// Records a problem with a volume. A corrupt fragment is queued for range repair (the member is
    /// otherwise fine); any other failure seals an open volume and, unless the volume was merely full,
    /// keeps new members off the disk until its node heartbeats again.
    pub fn report(&self, p: &Problem) -> Result<(), MetaError> {
        let id = p.volume;
        if p.kind == ProblemKind::Corrupt {
            let Some(member) = p.member else {
                return Err(MetaError::Invalid("corrupt report without member".into()));
            };
            let fresh = self.core.mutate(true, |t, b| {
                if !t.volumes.contains_key(&id) {
                    return Err(MetaError::NoVolume(id));
                }
                let key = (id, member, p.offset);
                if t.ranges.contains_key(&key) {
                    return Ok(false);
                }
                let row = RangeRow {
                    hash: p.hash.clone(),
                    reported_unix_ms: now_ms(),
                };
                b.put(
                    Cf::Repair,
                    RepairKey::Range(id, member, p.offset).encode(),
                    encode(&row),
                );
                t.ranges.insert(key, row);
                Ok(true)
            })??;
            if fresh {
                tracing::warn!(
                    volume = id,
                    member,
                    offset = p.offset,
                    detail = p.detail,
                    "corrupt fragment queued for range repair"
                );
                metrics::counter!("hoard_repair_ranges_reported_total").increment(1);
            }
            return Ok(());
        }
        let sealed = self.core.mutate(true, |t, b| {
            let v = t.volumes.get(&id).ok_or(MetaError::NoVolume(id))?;
            let disk = p
                .member
                .and_then(|m| v.members.get(m as usize))
                .map(|m| m.disk_id.clone());
            if p.kind != ProblemKind::Full
                && let Some(d) = disk
            {
                // A server that does not answer fails every disk it serves.
                if p.kind == ProblemKind::Unreachable
                    && let Some(node) = t.disks.get(&d).map(|r| r.node_id.clone())
                {
                    let on_node: Vec<String> = t
                        .disks
                        .iter()
                        .filter(|(_, r)| r.node_id == node)
                        .map(|(id, _)| id.clone())
                        .collect();
                    t.suspect.extend(on_node);
                }
                t.suspect.insert(d);
            }
            let v = t.volumes.get_mut(&id).expect("looked up above");
            if v.state != VolumeState::Open {
                return Ok(false);
            }
            v.state = VolumeState::Sealed;
            v.lease_holder.clear();
            v.seal_reason = match p.member {
                Some(m) => format!("{} (member {m}): {}", p.kind, p.detail),
                None => format!("{}: {}", p.kind, p.detail),
            };
            schema::put_volume(b, id, v);
            Ok::<_, MetaError>(true)
        })??;
        match (p.kind, sealed) {
            (ProblemKind::Full, _) => tracing::info!(volume = id, "volume full, sealed"),
            (_, true) => tracing::warn!(
                volume = id,
                member = ?p.member,
                kind = %p.kind,
                detail = p.detail,
                "volume sealed after a reported problem"
            ),
            (_, false) => tracing::debug!(
                volume = id,
                member = ?p.member,
                kind = %p.kind,
                detail = p.detail,
                "problem reported on a sealed volume"
            ),
        }
        Ok(())
    }
}

/// The lowest volume id from the counter on that no volume row holds and no volume server reports an
/// extent of: ids are never reused, also when a disk holds a volume this metadata tier has forgotten.
fn next_volume_id(t: &Tables) -> Result<VolumeId, MetaError> {
    let reported: HashSet<VolumeId> = t
        .in_service
        .values()
        .flatten()
        .map(|e| e.id.volume)
        .collect();
    let mut id = t.next_volume;
    while t.volumes.contains_key(&id) || reported.contains(&id) {
        id = id
            .checked_add(1)
            .ok_or_else(|| MetaError::Full("every volume id has been used".into()))?;
    }
    Ok(id)
}
