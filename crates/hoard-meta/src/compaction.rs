//! Compaction: sealed volumes whose stored bytes are mostly dead (deleted past their grace) are emptied
//! and retired. Meta plans and referees; a compactor (in the repair daemon's process, with a
//! frontend's read and write paths) moves the bytes:
//!
//! 1. **Plan.** An index walk tallies every volume's live bytes, deleted bytes within their grace and
//!    deleted bytes past it. A sealed, whole volume that no repair or move holds, whose expired share
//!    reaches the threshold, is a donor; the sparsest first. One donor at a time; the blocks of
//!    successive donors fill the same open volumes, so donors are grouped into destinations by the
//!    normal write path.
//! 2. **Move.** The compactor lists the rows that point into the donor ([`Compaction::task`]; rows past
//!    their grace are dropped as they are listed), copies each block through the erasure-coded write
//!    path to an open volume and re-points its row with a compare-and-swap on the old location
//!    ([`Compaction::repoint`]): a row that changed meanwhile (re-put elsewhere, expired) is left alone
//!    and the copy is garbage. Listing again from the start finds only what is not moved yet, so a
//!    compactor killed at any point resumes by asking again.
//! 3. **Inspect and retire.** [`Compaction::finish`] waits until every commit begun before it is
//!    written (puts into the donor are refused while it is one), walks the whole index and retires
//!    the donor only if no row, in any state, points into it. Its extents then go to the volume
//!    servers' trash.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoard_types::state::{BlockState, MemberState, VolumeState};
use hoard_types::{BlockHash, BlockLocation, VolumeId};
use parking_lot::Mutex;

use crate::MetaError;
use crate::blocks::BlockIndex;
use crate::core::Core;
use crate::engine::Cf;
use crate::index_ops::{DeletePolicy, Op, Outcome};
use crate::rows::{BlockRow, CompactionRow};
use crate::schema::{self, ConfigKey, decode};

/// How often meta looks for a donor when none is being emptied (sooner when an operator asks).
const PLAN_EVERY: Duration = Duration::from_secs(30);

/// One volume's bytes by the state of the rows that point into it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub live: u64,
    /// Deleted, within their grace: moved with the live ones.
    pub grace: u64,
    /// Deleted, past their grace: what compaction reclaims.
    pub expired: u64,
}

impl Tally {
    /// The share of the volume's block bytes that compaction reclaims.
    pub fn reclaimable(&self) -> f64 {
        let total = self.live + self.grace + self.expired;
        if total == 0 {
            0.0
        } else {
            self.expired as f64 / total as f64
        }
    }
}

impl Tally {
    /// Counts one row of the volume at `now`.
    pub fn add(&mut self, r: &BlockRow, now: u64, policy: &DeletePolicy) {
        let len = u64::from(r.block_len);
        match r.state {
            BlockState::Live => self.live += len,
            BlockState::Deleted if policy.within_grace(r, now) => self.grace += len,
            BlockState::Deleted => self.expired += len,
        }
    }
}

/// What the compactor is to do next.
#[derive(Clone, Debug, Default)]
pub struct Task {
    /// 0: nothing to compact now (none qualifies, or compaction is paused).
    pub volume: VolumeId,
    /// Rows pointing into the donor, with whether each is deleted (within its grace).
    pub rows: Vec<(BlockHash, BlockLocation, bool)>,
    pub more: bool,
    pub bytes_per_sec: u64,
    pub concurrency: u32,
}

/// Compaction as an operator sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompactionStatus {
    pub knobs: CompactionRow,
    /// The donor's tally when it was picked, for the progress.
    pub candidates: Vec<(VolumeId, Tally)>,
}

/// Volumes over the threshold with their tallies, sparsest first.
type Candidates = Vec<(VolumeId, Tally)>;

pub struct Compaction {
    core: Arc<Core>,
    blocks: Arc<BlockIndex>,
    /// When the last planning walk ran, and what it found (for the status).
    planned: Mutex<(Option<Instant>, Candidates)>,
}

impl Compaction {
    pub(crate) fn new(core: Arc<Core>, blocks: Arc<BlockIndex>) -> Compaction {
        Compaction {
            core,
            blocks,
            planned: Mutex::new((None, Vec::new())),
        }
    }

    /// The knobs, the donor's progress and the counters.
    pub fn status(&self) -> CompactionStatus {
        CompactionStatus {
            knobs: self.core.lock().compaction.clone(),
            candidates: self.planned.lock().1.clone(),
        }
    }

    /// Changes the live knobs: `None` leaves one as it is.
    pub fn set_knobs(
        &self,
        paused: Option<bool>,
        bytes_per_sec: Option<u64>,
        concurrency: Option<u32>,
        threshold: Option<f64>,
    ) -> Result<CompactionRow, MetaError> {
        if let Some(t) = threshold
            && !(t > 0.0 && t <= 1.0)
        {
            return Err(MetaError::Invalid(format!(
                "threshold {t}: a share of a volume's bytes, above 0 and at most 1"
            )));
        }
        if concurrency == Some(0) || concurrency.is_some_and(|c| c > 64) {
            return Err(MetaError::Invalid(
                "concurrency must be 1 to 64 blocks at once".into(),
            ));
        }
        self.update(|c| {
            if let Some(p) = paused {
                c.paused = p;
            }
            if let Some(b) = bytes_per_sec {
                c.bytes_per_sec = b;
            }
            if let Some(n) = concurrency {
                c.concurrency = n;
            }
            if let Some(t) = threshold {
                c.threshold = t;
            }
        })
    }

    /// Asks for a planning round at the compactor's next request, and resumes a paused compaction.
    pub fn start(&self) -> Result<CompactionRow, MetaError> {
        self.update(|c| {
            c.paused = false;
            c.requested = true;
        })
    }

    /// Gives up the current donor (what was moved stays moved: every re-point was a swap) and pauses.
    pub fn cancel(&self) -> Result<CompactionRow, MetaError> {
        self.update(|c| {
            if c.donor != 0 {
                tracing::info!(volume = c.donor, "compaction of the volume cancelled");
            }
            c.donor = 0;
            c.paused = true;
            c.requested = false;
        })
    }

    fn update(&self, f: impl FnOnce(&mut CompactionRow)) -> Result<CompactionRow, MetaError> {
        self.core.mutate(true, |t, b| {
            f(&mut t.compaction);
            schema::put_config(b, ConfigKey::Compaction, &t.compaction);
            t.compaction.clone()
        })
    }

    /// Every row of the index, in hash order, with `visit` told each; stops when it returns false.
    fn walk(
        &self,
        from: &[u8],
        visit: impl FnMut(BlockHash, BlockRow) -> bool,
    ) -> Result<(), MetaError> {
        walk_rows(self.core.engine.as_ref(), from, visit)
    }

    /// Whether a volume may be emptied: sealed, every member ok, and no repair or move holds it.
    fn may_compact(&self, id: VolumeId) -> bool {
        let t = self.core.lock();
        let Some(v) = t.volumes.get(&id) else {
            return false;
        };
        v.state == VolumeState::Sealed
            && v.members.iter().all(|m| m.state == MemberState::Ok)
            && !t.repairs.contains_key(&id)
            && !t.ranges.keys().any(|(vol, _, _)| *vol == id)
            && !t
                .moves
                .values()
                .any(|m| m.volume == id && m.state.is_active())
    }

    /// Picks the next donor when none is being emptied and it is time to look; returns the donor.
    fn plan(&self) -> Result<VolumeId, MetaError> {
        let (donor, paused, requested, threshold) = {
            let t = self.core.lock();
            let c = &t.compaction;
            let dead: u64 = t
                .volumes
                .values()
                .filter(|v| v.state != VolumeState::Retired)
                .map(|v| v.dead_bytes)
                .sum();
            metrics::gauge!("hoard_dead_bytes").set(dead as f64);
            metrics::gauge!("hoard_compaction_donor").set(c.donor as f64);
            (c.donor, c.paused, c.requested, c.threshold)
        };
        if paused {
            return Ok(0);
        }
        if donor != 0 {
            if self.may_compact(donor) {
                return Ok(donor);
            }
            // Degraded, lost or being repaired meanwhile: repair has it; what moved stays moved.
            tracing::warn!(
                volume = donor,
                "compaction gives up the volume: it is no longer sealed and whole"
            );
            self.update(|c| c.donor = 0)?;
            return Ok(0);
        }
        let due = self
            .planned
            .lock()
            .0
            .is_none_or(|at| at.elapsed() >= PLAN_EVERY);
        if !requested && !due {
            return Ok(0);
        }
        let now = self.core.clock.now()?;
        let policy = self.core.cfg.delete;
        let mut tallies: BTreeMap<VolumeId, Tally> = BTreeMap::new();
        self.walk(&[], |_, r| {
            tallies.entry(r.volume).or_default().add(&r, now, &policy);
            true
        })?;
        let mut candidates: Vec<(VolumeId, Tally)> = tallies
            .into_iter()
            .filter(|(id, t)| {
                t.expired > 0 && t.reclaimable() >= threshold && self.may_compact(*id)
            })
            .collect();
        candidates.sort_by(|a, b| b.1.reclaimable().total_cmp(&a.1.reclaimable()));
        *self.planned.lock() = (Some(Instant::now()), candidates.clone());
        let picked = candidates.first().copied();
        self.update(|c| {
            c.requested = false;
            if let Some((id, t)) = picked {
                c.donor = id;
                c.donor_started_unix_ms = now;
                c.donor_total_bytes = t.live + t.grace;
                c.donor_moved_bytes = 0;
            }
        })?;
        if let Some((id, t)) = picked {
            tracing::info!(
                volume = id,
                live = t.live,
                grace = t.grace,
                expired = t.expired,
                "compaction picked a donor"
            );
        }
        Ok(picked.map_or(0, |(id, _)| id))
    }

    /// The next rows to move: those after `after` that point into the donor, at most `limit`. Rows
    /// past their grace are dropped as they are met.
    pub async fn task(&self, after: Option<BlockHash>, limit: usize) -> Result<Task, MetaError> {
        let volume = self.plan()?;
        let (bytes_per_sec, concurrency) = {
            let t = self.core.lock();
            (t.compaction.bytes_per_sec, t.compaction.concurrency.max(1))
        };
        let mut task = Task {
            volume,
            bytes_per_sec,
            concurrency,
            ..Task::default()
        };
        if volume == 0 {
            return Ok(task);
        }
        let now = self.core.clock.now()?;
        let policy = self.core.cfg.delete;
        let limit = limit.clamp(1, 4096);
        let mut expired = Vec::new();
        let from = after.map(|h| h.as_bytes().to_vec()).unwrap_or_default();
        self.walk(&from, |h, r| {
            if Some(h) == after || r.volume != volume {
                return true;
            }
            if policy.expired(&r, now) {
                let len = u64::from(r.block_len);
                expired.push((
                    h,
                    Op::Drop {
                        from: (r.volume, r.offset),
                    },
                    len,
                ));
                return true;
            }
            if task.rows.len() == limit {
                task.more = true;
                return false;
            }
            let deleted = r.state == BlockState::Deleted;
            task.rows.push((h, crate::blocks::location_of(&r), deleted));
            true
        })?;
        if !expired.is_empty() {
            let lens: Vec<u64> = expired.iter().map(|(_, _, len)| *len).collect();
            let ops = expired.into_iter().map(|(h, op, _)| (h, op)).collect();
            let outcomes = self.blocks.apply(ops).await?;
            let (mut dropped, mut bytes) = (0u64, 0u64);
            for (o, len) in outcomes.iter().zip(lens) {
                if *o == Outcome::Dropped {
                    dropped += 1;
                    bytes += len;
                }
            }
            metrics::counter!("hoard_compaction_dropped_blocks_total").increment(dropped);
            metrics::counter!("hoard_compaction_reclaimed_bytes_total").increment(bytes);
            self.update(|c| {
                c.dropped_blocks += dropped;
                c.reclaimed_bytes += bytes;
            })?;
        }
        Ok(task)
    }

    /// Re-points a moved block's row from `from` to `to` if it still points at `from`; false when it
    /// changed meanwhile (the copy at `to` is then garbage).
    pub async fn repoint(
        &self,
        hash: BlockHash,
        from: &BlockLocation,
        to: BlockLocation,
    ) -> Result<bool, MetaError> {
        let len = to.block_len;
        let outcome = self
            .blocks
            .apply(vec![(
                hash,
                Op::Repoint {
                    from: (from.volume, from.offset),
                    to,
                },
            )])
            .await?;
        let moved = outcome.first() == Some(&Outcome::Moved);
        if moved {
            metrics::counter!("hoard_compaction_moved_bytes_total").increment(len);
            metrics::counter!("hoard_compaction_moved_blocks_total").increment(1);
        }
        self.update(|c| {
            if moved {
                c.moved_blocks += 1;
                c.moved_bytes += len;
                if c.donor == from.volume {
                    c.donor_moved_bytes += len;
                }
            } else {
                c.stale_moves += 1;
            }
        })?;
        Ok(moved)
    }

    /// Rows that point into `volume`, in any state, counted by a walk of the whole index once every
    /// commit begun before this call is written.
    pub async fn rows_into(&self, volume: VolumeId) -> Result<u64, MetaError> {
        self.blocks.barrier().await?;
        let mut n = 0;
        self.walk(&[], |_, r| {
            if r.volume == volume {
                n += 1;
            }
            true
        })?;
        Ok(n)
    }

    /// The trash inspection of a donor: retired (its extents go to the trash) only when no row in any
    /// state points into it. Answers whether it was retired, and the rows still pointing in.
    pub async fn finish(&self, volume: VolumeId) -> Result<(bool, u64), MetaError> {
        if self.core.lock().compaction.donor != volume {
            return Err(MetaError::Conflict(format!(
                "volume {volume} is not the volume being compacted"
            )));
        }
        let remaining = self.rows_into(volume).await?;
        if remaining > 0 {
            tracing::info!(
                volume,
                remaining,
                "compaction: rows still point into the volume"
            );
            return Ok((false, remaining));
        }
        let retired = self.core.mutate(true, |t, b| {
            if t.compaction.donor != volume {
                return None;
            }
            let v = t.volumes.get_mut(&volume)?;
            v.state = VolumeState::Retired;
            v.seal_reason = "compacted".into();
            v.blocks = 0;
            v.bytes = 0;
            v.dead_blocks = 0;
            v.dead_bytes = 0;
            schema::put_volume(b, volume, v);
            let c = &mut t.compaction;
            c.donor = 0;
            c.volumes_compacted += 1;
            // The next donor, if any, at once: compaction goes on while volumes qualify.
            c.requested = true;
            schema::put_config(b, ConfigKey::Compaction, c);
            Some(())
        })?;
        match retired {
            Some(()) => {
                tracing::info!(
                    volume,
                    "compaction retired the volume: no row points into it"
                );
                metrics::counter!("hoard_compaction_volumes_total").increment(1);
                Ok((true, 0))
            }
            None => Err(MetaError::Conflict(format!(
                "volume {volume} stopped being compacted"
            ))),
        }
    }

    /// The donor, if one is being emptied: puts into it are refused.
    pub(crate) fn donor_of(core: &Core) -> VolumeId {
        core.lock().compaction.donor
    }
}

/// Every row of the block index from `from`, in hash order, with `visit` told each; stops when it
/// returns false. A row that does not parse ends the walk with its error.
pub(crate) fn walk_rows(
    engine: &dyn crate::engine::KvEngine,
    from: &[u8],
    mut visit: impl FnMut(BlockHash, BlockRow) -> bool,
) -> Result<(), MetaError> {
    let mut err = None;
    engine.scan(Cf::Blocks, from, &mut |k, v| {
        let parsed = BlockHash::from_slice(k)
            .map_err(|e| MetaError::Corrupt {
                table: "blocks".into(),
                problem: e.to_string(),
            })
            .and_then(|h| Ok((h, decode::<BlockRow>(v)?)));
        match parsed {
            Ok((h, r)) => visit(h, r),
            Err(e) => {
                err = Some(e);
                false
            }
        }
    })?;
    err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use hoard_types::Geometry;

    use super::*;
    use crate::state::MetaConfig;
    use crate::testutil::cell_on;

    fn location(volume: VolumeId, n: u64) -> BlockLocation {
        let g = Geometry::DEFAULT;
        BlockLocation {
            volume,
            offset: n * 4096,
            frag_len: g.frag_len(1000),
            block_len: 1000,
            crcs: vec![n as u32; g.width() as usize],
        }
    }

    #[tokio::test]
    async fn a_donor_is_retired_only_once_no_row_points_into_it() {
        let wall = Arc::new(AtomicU64::new(1_000_000_000));
        let w = Arc::clone(&wall);
        let cfg = MetaConfig {
            extent_capacity: 1 << 20,
            delete: DeletePolicy {
                reference_window: Duration::from_secs(60),
                assert_refresh: Duration::from_secs(1),
                delete_grace: Duration::from_secs(600),
            },
            ..Default::default()
        };
        let (state, _) = cell_on(
            Arc::new(crate::MemEngine::new()),
            cfg,
            Arc::new(move || {
                let t = w.load(Ordering::SeqCst);
                (t, t)
            }),
            3,
            3,
        );
        let (donor, _) = state.volumes().acquire("t", &[]).await.unwrap();
        let (dest, _) = state.volumes().acquire("t", &[donor.id]).await.unwrap();
        let hashes: Vec<BlockHash> = (0..4u64).map(|i| BlockHash::of(&i.to_le_bytes())).collect();
        for (i, h) in hashes.iter().enumerate() {
            state
                .blocks()
                .commit(*h, location(donor.id, i as u64))
                .await
                .unwrap();
        }
        let c = state.compaction();
        c.core
            .mutate(true, |t, b| {
                let v = t.volumes.get_mut(&donor.id).unwrap();
                v.state = VolumeState::Sealed;
                schema::put_volume(b, donor.id, v);
            })
            .unwrap();
        // Three of four deleted, and past their grace: the donor is over the threshold.
        wall.fetch_add(120_000, Ordering::SeqCst);
        let token = state.blocks().delete_token().unwrap();
        let out = state.blocks().delete(&hashes[1..], token).await.unwrap();
        assert!(out.iter().all(|o| *o == Outcome::Deleted), "{out:?}");
        wall.fetch_add(700_000, Ordering::SeqCst);
        c.start().unwrap();
        let task = c.task(None, 100).await.unwrap();
        assert_eq!(task.volume, donor.id);
        assert_eq!(
            task.rows.len(),
            1,
            "the expired rows are dropped, the live one listed"
        );
        assert_eq!(task.rows[0].0, hashes[0]);
        // A put into the donor now is refused: the inspection must not miss a row written later.
        let refused = state
            .blocks()
            .commit(BlockHash::of(b"late"), location(donor.id, 9))
            .await;
        assert!(
            matches!(refused, Err(MetaError::Conflict(_))),
            "{refused:?}"
        );
        // The live row still points in: the inspection refuses to retire the donor.
        assert_eq!(c.finish(donor.id).await.unwrap(), (false, 1));
        assert_eq!(c.core.lock().volumes[&donor.id].state, VolumeState::Sealed);
        // Moved (a swap on the old location), the donor is empty and retired.
        let from = task.rows[0].1.clone();
        assert!(
            c.repoint(hashes[0], &from, location(dest.id, 0))
                .await
                .unwrap()
        );
        // A second swap from the old location finds the row moved: the copy would be garbage.
        assert!(
            !c.repoint(hashes[0], &from, location(dest.id, 1))
                .await
                .unwrap()
        );
        assert_eq!(c.finish(donor.id).await.unwrap(), (true, 0));
        let t = c.core.lock();
        assert_eq!(t.volumes[&donor.id].state, VolumeState::Retired);
        assert_eq!(t.compaction.donor, 0);
        assert_eq!(t.compaction.dropped_blocks, 3);
        drop(t);
        let rows = state.blocks().rows(&hashes).unwrap();
        assert_eq!(rows[0].as_ref().unwrap().volume, dest.id);
        assert!(rows[1..].iter().all(Option::is_none));
    }
}
