//! Member moves: rebalance (bring every disk's fill within a tolerance of the mean) and drain (empty a
//! disk or a node before it is pulled).
//!
//! A move copies one member to another disk — no decoding: the target reads the member's own bytes and
//! checks every fragment against its record — and is committed in meta with a bumped generation in one
//! write; the old extent is then superseded and goes to the disk's trash. Moves are recorded in the
//! `repair` table, so a plan survives restarts of meta, of the daemon and of the servers involved.
//! Targets follow the placement rules; a member that is lost meanwhile is repair's business, and its
//! move is dropped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use hoard_proto::v1;
use hoard_types::state::{
    MemberHealth, MemberState, MoveReason, MoveState, RebalanceAction, RebalanceState, VolumeState,
};
use hoard_types::{VolumeId, now_ms};

use crate::MetaError;
use crate::core::{Core, Tables};
use crate::engine::{Cf, WriteBatch};
use crate::health;
use crate::placement::{self, Candidate};
use crate::room::{self, candidate_of};
use crate::rows::{MoveRow, RebalanceRow};
use crate::schema::{self, ConfigKey, encode, put_move, put_volume};
use crate::views::volume_info;

/// One planned move.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedMove {
    pub volume: VolumeId,
    pub member: u32,
    pub from_disk: String,
    pub to_disk: String,
    pub bytes: u64,
}

/// A disk's fill, for planning.
#[derive(Clone, Debug)]
pub struct DiskFill {
    pub disk: String,
    pub node: String,
    pub used: u64,
    pub capacity: u64,
}

impl DiskFill {
    fn fill(&self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            self.used as f64 / self.capacity as f64
        }
    }
}

pub struct Moves {
    core: Arc<Core>,
}

impl Moves {
    pub(crate) fn new(core: Arc<Core>) -> Moves {
        Moves { core }
    }

    /// Bytes each (volume, member) takes on its disk, from the volume servers' reports.
    fn member_sizes(cell: &Tables) -> HashMap<(VolumeId, u32), u64> {
        let mut out = HashMap::new();
        for extents in cell.in_service.values() {
            for e in extents {
                out.insert((e.id.volume, e.id.member), e.data_len.saturating_add(4096));
            }
        }
        out
    }

    /// Members that may move now: of sealed, whole volumes with no repair or move under way.
    fn movable(cell: &Tables, vid: VolumeId) -> bool {
        let busy = cell.repairs.contains_key(&vid)
            || cell
                .moves
                .values()
                .any(|m| m.volume == vid && m.state.is_active());
        cell.volumes.get(&vid).is_some_and(|v| {
            v.state == VolumeState::Sealed && v.members.iter().all(|m| m.state == MemberState::Ok)
        }) && !busy
    }

    /// A target disk for one member of `vid`, by the placement rules, among `allowed` disks.
    fn target_for(
        &self,
        cell: &Tables,
        vid: VolumeId,
        member: u32,
        allowed: &dyn Fn(&Candidate) -> bool,
    ) -> Option<String> {
        let v = cell.volumes.get(&vid)?;
        let disks: Vec<String> = v.members.iter().map(|m| m.disk_id.clone()).collect();
        self.target_among(cell, vid, member, &disks, allowed)
    }

    /// Like [`Self::target_for`], with the volume's members on `disks` (as a plan has them).
    fn target_among(
        &self,
        cell: &Tables,
        vid: VolumeId,
        member: u32,
        disks: &[String],
        allowed: &dyn Fn(&Candidate) -> bool,
    ) -> Option<String> {
        let v = cell.volumes.get(&vid)?;
        let others: Vec<Candidate> = disks
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u32 != member)
            .filter_map(|(_, d)| candidate_of(cell, d))
            .collect();
        // Neither a disk the plan puts a member on nor one that holds a member now: moves run in any
        // order, and a disk never holds two members of one volume, even for a moment.
        let used: HashSet<&str> = disks
            .iter()
            .map(|d| d.as_str())
            .chain(v.members.iter().map(|m| m.disk_id.as_str()))
            .collect();
        let cap = self
            .core
            .cfg
            .node_failure_domain
            .then_some(v.m.max(1) as usize);
        let (cands, chosen) =
            room::place_on(cell, &self.core.cfg, now_ms(), &others, 1, cap, |c| {
                !used.contains(c.disk_id.as_str()) && allowed(c)
            })
            .ok()?;
        Some(cands[chosen[0]].disk_id.clone())
    }

    /// The moves that bring every disk's fill within `tolerance_pct` points of the mean, without
    /// breaking placement. Pure: nothing is recorded.
    pub fn plan_rebalance(&self, tolerance_pct: f64) -> Vec<PlannedMove> {
        let cell = self.core.lock();
        let now = now_ms();
        let sizes = Self::member_sizes(&cell);
        let mut fills: BTreeMap<String, DiskFill> = self
            .candidates_all_fill(&cell, now)
            .into_iter()
            .map(|d| (d.disk.clone(), d))
            .collect();
        if fills.len() < 2 {
            return Vec::new();
        }
        let total_used: u64 = fills.values().fold(0u64, |a, d| a.saturating_add(d.used));
        let total_cap: u64 = fills
            .values()
            .fold(0u64, |a, d| a.saturating_add(d.capacity));
        if total_cap == 0 {
            return Vec::new();
        }
        let mean = total_used as f64 / total_cap as f64;
        let tol = tolerance_pct / 100.0;
        // Where members are, as planned so far.
        let mut placement: HashMap<(VolumeId, u32), String> = HashMap::new();
        for (vid, v) in &cell.volumes {
            for (i, m) in v.members.iter().enumerate() {
                placement.insert((*vid, i as u32), m.disk_id.clone());
            }
        }
        let mut moves: Vec<PlannedMove> = Vec::new();
        let mut moved: HashSet<(VolumeId, u32)> = HashSet::new();
        let mut stuck: HashSet<String> = HashSet::new();
        for _ in 0..10_000 {
            let hi = fills
                .values()
                .filter(|d| !stuck.contains(&d.disk))
                .max_by(|a, b| a.fill().total_cmp(&b.fill()))
                .cloned();
            let lo = fills
                .values()
                .min_by(|a, b| a.fill().total_cmp(&b.fill()))
                .cloned();
            let (Some(hi), Some(lo)) = (hi, lo) else {
                break;
            };
            if hi.fill() - mean <= tol && mean - lo.fill() <= tol {
                break;
            }
            // Largest member of the fullest disk that fits under the mean elsewhere.
            let mut members: Vec<(VolumeId, u32, u64)> = placement
                .iter()
                .filter(|(_, d)| **d == hi.disk)
                .filter(|((vid, m), _)| !moved.contains(&(*vid, *m)) && Self::movable(&cell, *vid))
                .map(|((vid, m), _)| (*vid, *m, sizes.get(&(*vid, *m)).copied().unwrap_or(0)))
                .filter(|(_, _, s)| *s > 0)
                .collect();
            members.sort_by_key(|(v, m, s)| (std::cmp::Reverse(*s), *v, *m));
            let mut done = false;
            for (vid, member, size) in members {
                let room = |d: &DiskFill| {
                    d.used.saturating_add(size) as f64 <= (mean + tol) * d.capacity as f64
                };
                let width = cell.volumes.get(&vid).map(|v| v.members.len()).unwrap_or(0) as u32;
                let planned: Vec<String> =
                    (0..width).map(|i| placement[&(vid, i)].clone()).collect();
                let Some(target) =
                    self.target_among(&cell, vid, member, &planned, &|c: &Candidate| {
                        c.disk_id != hi.disk
                            && fills
                                .get(&c.disk_id)
                                .is_some_and(|d| room(d) && d.fill() < hi.fill())
                    })
                else {
                    continue;
                };
                // Planned placement must stay valid with the moves before it.
                let mut after: Vec<Candidate> = Vec::new();
                if let Some(v) = cell.volumes.get(&vid) {
                    for i in 0..v.members.len() as u32 {
                        let disk = if i == member {
                            target.clone()
                        } else {
                            placement[&(vid, i)].clone()
                        };
                        after.extend(candidate_of(&cell, &disk));
                    }
                    let every: Vec<Candidate> = cell
                        .disks
                        .keys()
                        .filter_map(|d| candidate_of(&cell, d))
                        .collect();
                    if self.core.cfg.node_failure_domain
                        && !placement::violations(&after, &every, v.m as usize).is_empty()
                    {
                        continue;
                    }
                }
                if let Some(d) = fills.get_mut(&hi.disk) {
                    d.used = d.used.saturating_sub(size);
                }
                if let Some(d) = fills.get_mut(&target) {
                    d.used += size;
                }
                placement.insert((vid, member), target.clone());
                moved.insert((vid, member));
                moves.push(PlannedMove {
                    volume: vid,
                    member,
                    from_disk: hi.disk.clone(),
                    to_disk: target,
                    bytes: size,
                });
                done = true;
                break;
            }
            if !done {
                stuck.insert(hi.disk.clone());
            }
        }
        moves
    }

    /// Healthy disks with their fill (used bytes of sealed data as reported).
    fn candidates_all_fill(&self, cell: &Tables, now: u64) -> Vec<DiskFill> {
        cell.disks
            .iter()
            .filter(|(_, d)| health::disk_usable(cell, &self.core.cfg, d, now))
            .map(|(id, d)| DiskFill {
                disk: id.clone(),
                node: d.node_id.clone(),
                used: d.used_bytes,
                capacity: d.capacity_bytes,
            })
            .collect()
    }

    fn record_moves(
        &self,
        moves: Vec<PlannedMove>,
        reason: MoveReason,
    ) -> Result<usize, MetaError> {
        self.core.mutate(true, |cell, b| {
            let now = now_ms();
            let mut n = 0;
            for m in moves {
                let dup = cell
                    .moves
                    .values()
                    .any(|x| x.volume == m.volume && x.member == m.member && x.state.is_active());
                if dup {
                    continue;
                }
                cell.next_move += 1;
                let id = cell.next_move;
                let row = MoveRow {
                    volume: m.volume,
                    member: m.member,
                    from_disk: m.from_disk,
                    to_disk: m.to_disk,
                    bytes: m.bytes,
                    state: MoveState::Pending,
                    reason,
                    generation: 0,
                    session: String::new(),
                    done_bytes: 0,
                    error: String::new(),
                    created_unix_ms: now,
                    attempts: 0,
                };
                put_move(b, id, &row);
                cell.moves.insert(id, row);
                n += 1;
            }
            schema::put_counter(b, ConfigKey::NextMove, cell.next_move);
            n
        })
    }

    /// Records the rebalance plan's moves and lets the daemon run them.
    pub fn apply_rebalance(&self, tolerance_pct: f64) -> Result<usize, MetaError> {
        let moves = self.plan_rebalance(tolerance_pct);
        let n = self.record_moves(moves, MoveReason::Rebalance)?;
        self.core.mutate(true, |cell, b| {
            cell.rebalance = RebalanceRow {
                paused: false,
                state: if n > 0 {
                    RebalanceState::Running
                } else {
                    RebalanceState::Done
                },
                tolerance_pct,
                started_unix_ms: now_ms(),
            };
            schema::put_config(b, ConfigKey::Rebalance, &cell.rebalance);
        })?;
        tracing::info!(moves = n, tolerance_pct, "rebalance applied");
        Ok(n)
    }

    /// Pauses, resumes or cancels the moves (cancel drops the pending ones; running ones finish).
    pub fn rebalance_control(&self, action: RebalanceAction) -> Result<(), MetaError> {
        self.core.mutate(true, |cell, b| {
            match action {
                RebalanceAction::Pause => cell.rebalance.paused = true,
                RebalanceAction::Resume => cell.rebalance.paused = false,
                RebalanceAction::Cancel => {
                    for (id, m) in cell.moves.iter_mut() {
                        if m.state == MoveState::Pending && m.reason == MoveReason::Rebalance {
                            m.state = MoveState::Dropped;
                            m.error = "cancelled by an operator".into();
                            put_move(b, *id, m);
                        }
                    }
                    cell.rebalance.state = RebalanceState::Cancelled;
                }
            }
            schema::put_config(b, ConfigKey::Rebalance, &cell.rebalance);
        })
    }

    /// Starts draining disks: no new members there, open volumes with members there sealed, and a move
    /// recorded for every member on them.
    pub fn drain(&self, disks: &[String]) -> Result<usize, MetaError> {
        let planned = self.core.mutate(true, |cell, b| {
            for d in disks {
                let row = cell
                    .disks
                    .get_mut(d)
                    .ok_or_else(|| MetaError::NotFound(format!("no disk {d}")))?;
                row.draining = true;
                b.put(Cf::Disks, d.as_bytes().to_vec(), encode(&*row));
            }
            // Writers must stop appending to members that are about to move.
            for (vid, v) in cell.volumes.iter_mut() {
                if v.state == VolumeState::Open
                    && v.members.iter().any(|m| disks.contains(&m.disk_id))
                {
                    v.state = VolumeState::Sealed;
                    v.lease_holder.clear();
                    v.seal_reason = "sealed for a drain".into();
                    put_volume(b, *vid, v);
                }
            }
            let mut planned = Vec::new();
            for (vid, v) in &cell.volumes {
                if v.state == VolumeState::Retired {
                    continue;
                }
                for (i, m) in v.members.iter().enumerate() {
                    if disks.contains(&m.disk_id) && m.state == MemberState::Ok {
                        planned.push(PlannedMove {
                            volume: *vid,
                            member: i as u32,
                            from_disk: m.disk_id.clone(),
                            to_disk: String::new(),
                            bytes: 0,
                        });
                    }
                }
            }
            Ok::<_, MetaError>(planned)
        })??;
        let sizes = Self::member_sizes(&self.core.lock());
        let planned = planned
            .into_iter()
            .map(|mut p| {
                p.bytes = sizes.get(&(p.volume, p.member)).copied().unwrap_or(0);
                p
            })
            .collect();
        let n = self.record_moves(planned, MoveReason::Drain)?;
        tracing::warn!(?disks, moves = n, "drain started");
        Ok(n)
    }

    /// Ends draining: the disks take new members again; pending drain moves off them are dropped.
    pub fn undrain(&self, disks: &[String]) -> Result<(), MetaError> {
        self.core.mutate(true, |cell, b| {
            for d in disks {
                if let Some(row) = cell.disks.get_mut(d) {
                    row.draining = false;
                    b.put(Cf::Disks, d.as_bytes().to_vec(), encode(&*row));
                }
            }
            for (id, m) in cell.moves.iter_mut() {
                if m.state == MoveState::Pending
                    && m.reason == MoveReason::Drain
                    && disks.contains(&m.from_disk)
                {
                    m.state = MoveState::Dropped;
                    m.error = "undrained".into();
                    put_move(b, *id, m);
                }
            }
        })
    }

    /// The disks of a node.
    pub fn disks_of_node(&self, node: &str) -> Vec<String> {
        let cell = self.core.lock();
        cell.disks
            .iter()
            .filter(|(_, d)| d.node_id == node)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Moves for the daemon: pending and running ones, oldest first.
    pub fn move_queue(&self) -> v1::MoveQueueResponse {
        let cell = self.core.lock();
        v1::MoveQueueResponse {
            moves: cell
                .moves
                .iter()
                .filter(|(_, m)| m.state.is_active())
                .map(|(id, m)| task(*id, m))
                .collect(),
            paused: cell.rebalance.paused,
        }
    }

    /// Every move, for status.
    pub fn moves(&self) -> (RebalanceRow, Vec<v1::MoveTask>, Vec<(String, bool, u32)>) {
        let cell = self.core.lock();
        let mut members: HashMap<&str, u32> = HashMap::new();
        for v in cell
            .volumes
            .values()
            .filter(|v| v.state != VolumeState::Retired)
        {
            for m in &v.members {
                *members.entry(m.disk_id.as_str()).or_default() += 1;
            }
        }
        let drains = cell
            .disks
            .iter()
            .filter(|(_, d)| d.draining)
            .map(|(id, _)| {
                let n = members.get(id.as_str()).copied().unwrap_or(0);
                (id.clone(), n == 0, n)
            })
            .collect();
        (
            cell.rebalance.clone(),
            cell.moves.iter().map(|(id, m)| task(*id, m)).collect(),
            drains,
        )
    }

    /// Starts one move: checks it still makes sense, picks a fresh target if needed, hands out the new
    /// generation, and answers the plan the daemon drives.
    pub fn start_move(&self, id: u64) -> Result<v1::RepairPlan, MetaError> {
        let now = now_ms();
        self.core.mutate(true, |cell, b| {
            let m = cell
                .moves
                .get(&id)
                .cloned()
                .ok_or_else(|| MetaError::NotFound(format!("no move {id}")))?;
            if !m.state.is_active() {
                return Err(MetaError::Invalid(format!("move {id} is {}", m.state)));
            }
            let drop_it = |cell: &mut Tables, b: &mut WriteBatch, why: &str| {
                let row = cell.moves.get_mut(&id).expect("present");
                row.state = MoveState::Dropped;
                row.error = why.into();
                put_move(b, id, row);
                MetaError::Invalid(format!("move {id} dropped: {why}"))
            };
            let Some(v) = cell.volumes.get(&m.volume) else {
                return Err(drop_it(cell, b, "volume gone"));
            };
            let Some(member) = v.members.get(m.member as usize) else {
                return Err(drop_it(cell, b, "member gone"));
            };
            if member.disk_id != m.from_disk || member.state != MemberState::Ok {
                return Err(drop_it(
                    cell,
                    b,
                    "member no longer on its disk (repaired or moved)",
                ));
            }
            if matches!(v.state, VolumeState::Degraded | VolumeState::Lost)
                || cell.repairs.contains_key(&m.volume)
            {
                return Err(MetaError::Invalid(format!(
                    "volume {} is under repair; move {id} waits",
                    m.volume
                )));
            }
            if v.state == VolumeState::Open {
                return Err(MetaError::Invalid(format!(
                    "volume {} is still open",
                    m.volume
                )));
            }
            // Keep the planned target if it still takes members; choose again otherwise.
            let cands: HashSet<String> = room::candidates(cell, &self.core.cfg, now)
                .into_iter()
                .map(|c| c.disk_id)
                .collect();
            let holds_member = |disk: &str| {
                cell.volumes[&m.volume]
                    .members
                    .iter()
                    .any(|x| x.disk_id == disk)
            };
            // A move that was running keeps its target (and generation) across restarts.
            let keep = m.generation != 0
                || (!m.to_disk.is_empty()
                    && cands.contains(&m.to_disk)
                    && !holds_member(&m.to_disk));
            let target = if keep {
                m.to_disk.clone()
            } else {
                match self.target_for(cell, m.volume, m.member, &|_| true) {
                    Some(t) => t,
                    None => {
                        return Err(MetaError::Invalid(format!(
                            "no disk can take volume {} member {} now",
                            m.volume, m.member
                        )));
                    }
                }
            };
            let v = cell.volumes.get_mut(&m.volume).expect("checked");
            let generation = if m.generation != 0 {
                m.generation
            } else {
                v.generation_seq = v
                    .generation_seq
                    .max(v.members.iter().map(|x| x.generation).max().unwrap_or(0))
                    .saturating_add(1);
                put_volume(b, m.volume, v);
                v.generation_seq
            };
            let row = cell.moves.get_mut(&id).expect("present");
            row.to_disk = target.clone();
            row.generation = generation;
            row.state = MoveState::Running;
            row.attempts += 1;
            put_move(b, id, row);
            let session = row.session.clone();
            let info = volume_info(
                cell,
                &self.core.cfg,
                m.volume,
                &cell.volumes[&m.volume],
                now,
            );
            let address = |disk: &str| {
                cell.disks
                    .get(disk)
                    .and_then(|d| cell.nodes.get(&d.node_id))
                    .map(|n| n.address.clone())
                    .unwrap_or_default()
            };
            let mut sources: Vec<v1::RebuildSource> = info
                .members
                .iter()
                .filter(|x| x.state == MemberHealth::Ok.as_str())
                .map(|x| v1::RebuildSource {
                    member: x.index,
                    generation: x.generation,
                    address: x.address.clone(),
                })
                .collect();
            // The member itself first: it is the one copied.
            sources.sort_by_key(|s| s.member != m.member);
            let output = v1::RebuildOutput {
                member: m.member,
                generation,
                disk_id: target.clone(),
                address: address(&target),
            };
            Ok(v1::RepairPlan {
                volume: m.volume,
                k: info.k,
                m: info.m,
                capacity: info.capacity,
                sources,
                runner: output.address.clone(),
                outputs: vec![output],
                started_unix_ms: now,
                session,
            })
        })?
    }

    pub fn move_progress(&self, id: u64, session: &str, done: u64) -> Result<bool, MetaError> {
        self.core.mutate(false, |cell, b| {
            let Some(m) = cell.moves.get_mut(&id) else {
                return false;
            };
            if m.state != MoveState::Running {
                return false;
            }
            m.session = session.into();
            m.done_bytes = done;
            put_move(b, id, m);
            true
        })
    }

    /// Puts the moved member in service on its new disk under its new generation, in one write.
    pub fn commit_move(&self, id: u64) -> Result<(), MetaError> {
        let (vid, member) = self.core.mutate(true, |cell, b| {
            let m = cell
                .moves
                .get(&id)
                .cloned()
                .ok_or_else(|| MetaError::NotFound(format!("no move {id}")))?;
            if m.state != MoveState::Running {
                return Err(MetaError::Invalid(format!("move {id} is {}", m.state)));
            }
            let v = cell
                .volumes
                .get_mut(&m.volume)
                .ok_or(MetaError::NoVolume(m.volume))?;
            let mem = v
                .members
                .get_mut(m.member as usize)
                .ok_or_else(|| MetaError::Invalid("no such member".into()))?;
            if mem.disk_id != m.from_disk {
                return Err(MetaError::Invalid(format!(
                    "volume {} member {} moved meanwhile",
                    m.volume, m.member
                )));
            }
            mem.disk_id = m.to_disk.clone();
            mem.generation = m.generation;
            mem.state = MemberState::Ok;
            put_volume(b, m.volume, v);
            let row = cell.moves.get_mut(&id).expect("present");
            row.state = MoveState::Done;
            row.done_bytes = row.done_bytes.max(row.bytes);
            put_move(b, id, row);
            // A rebalance whose moves are all done is done.
            let open = cell
                .moves
                .values()
                .any(|x| x.reason == MoveReason::Rebalance && x.state.is_active());
            if !open && cell.rebalance.state == RebalanceState::Running {
                cell.rebalance.state = RebalanceState::Done;
                schema::put_config(b, ConfigKey::Rebalance, &cell.rebalance);
            }
            Ok((m.volume, m.member))
        })??;
        metrics::counter!("hoard_rebalance_moves_total").increment(1);
        tracing::info!(volume = vid, member, move_id = id, "member moved");
        Ok(())
    }

    /// A move failed: retried later (up to three attempts), then left failed.
    pub fn fail_move(&self, id: u64, error: &str) -> Result<(), MetaError> {
        self.core.mutate(true, |cell, b| {
            if let Some(m) = cell.moves.get_mut(&id) {
                m.error = error.into();
                m.session.clear();
                if m.attempts >= 3 {
                    m.state = MoveState::Failed;
                } else {
                    m.state = MoveState::Pending;
                    // Choose a target again next time, with a new generation.
                    m.generation = 0;
                    m.to_disk.clear();
                }
                put_move(b, id, m);
            }
        })?;
        tracing::warn!(move_id = id, "move failed: {error}");
        Ok(())
    }
}

fn task(id: u64, m: &MoveRow) -> v1::MoveTask {
    v1::MoveTask {
        id,
        volume: m.volume,
        member: m.member,
        from_disk: m.from_disk.clone(),
        to_disk: m.to_disk.clone(),
        bytes: m.bytes,
        state: m.state.to_string(),
        reason: m.reason.to_string(),
        done_bytes: m.done_bytes,
        error: m.error.clone(),
    }
}
