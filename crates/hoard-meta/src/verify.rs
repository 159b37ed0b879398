//! Verification of the block index: a walk over every row that checks it is well formed and that its
//! volume has every member in service at the generation meta lists — against what the volume servers
//! themselves reported in their last heartbeats. Volume-level findings are computed once per volume, so
//! the walk costs a decode and a few lookups per row. The walk is a worker
//! ([`hoard_runtime::Worker`]): a slice of the index per unit, so that it can be paused, resumed and
//! cancelled, with its progress in entries.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use hoard_runtime::{
    CancellationToken, Progress, Registry, Worker, WorkerError, WorkerHandle, WorkerState,
    WorkerStatus,
};
use hoard_types::state::{BlockState, MemberState, VolumeState};
use hoard_types::{Geometry, VolumeId, now_ms};
use parking_lot::Mutex;

use crate::MetaError;
use crate::core::Core;
use crate::engine::Cf;
use crate::health;
use crate::rows::BlockRow;
use crate::schema::decode;

/// Problems listed in full; beyond this only counted.
const MAX_LISTED: usize = 1000;

/// Index rows walked per unit of work.
const ROWS_PER_UNIT: usize = 65_536;

/// The worker's name.
pub const WORKER: &str = "verify";

#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub running: bool,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub entries: u64,
    pub live: u64,
    pub problems_total: u64,
    /// Count of problems by kind.
    pub by_kind: BTreeMap<String, u64>,
    /// The first problems found, one line each.
    pub problems: Vec<String>,
    pub entries_per_sec: f64,
    /// The walk was cancelled before its end.
    pub cancelled: bool,
}

impl VerifyReport {
    fn note(&mut self, kind: &str, line: String) {
        self.problems_total += 1;
        *self.by_kind.entry(kind.to_string()).or_default() += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(line);
        }
    }
}

/// A volume's standing, computed once per walk.
#[derive(Clone)]
struct VolumeVerdict {
    geometry: Geometry,
    capacity: u64,
    /// (kind, detail) when the volume cannot serve all its blocks as it should.
    problem: Option<(&'static str, String)>,
}

/// Verification: starting walks, their reports, and block samples for deep checks.
pub struct Verify {
    core: Arc<Core>,
    report: Arc<Mutex<VerifyReport>>,
}

impl Verify {
    pub(crate) fn new(core: Arc<Core>) -> Verify {
        Verify {
            core,
            report: Default::default(),
        }
    }

    pub fn report(&self) -> VerifyReport {
        self.report.lock().clone()
    }

    /// Starts a walk as a worker of the process; refused while one runs.
    pub fn start(&self) -> Result<WorkerHandle, MetaError> {
        let running = || MetaError::Conflict("a verification is running already".into());
        if Registry::global().is_running(WORKER) {
            return Err(running());
        }
        *self.report.lock() = VerifyReport {
            running: true,
            started_unix_ms: now_ms(),
            ..Default::default()
        };
        let walk = Walk {
            core: Arc::clone(&self.core),
            shared: Arc::clone(&self.report),
            verdicts: None,
            cursor: Vec::new(),
            local: VerifyReport::default(),
            per_volume: HashMap::new(),
            started: Instant::now(),
            finished: false,
        };
        Registry::global().spawn(walk).map_err(|_| running())
    }

    /// Live hashes whose first two bytes fall in the sample, after `after`, at most `limit`.
    pub fn sample_blocks(
        &self,
        pct: f64,
        after: &[u8],
        limit: usize,
    ) -> Result<(Vec<[u8; 32]>, bool), MetaError> {
        let cut = (pct.clamp(0.0, 100.0) / 100.0 * 65536.0) as u32;
        let mut out = Vec::new();
        let mut more = false;
        let mut start = after.to_vec();
        if !start.is_empty() {
            start.push(0);
        }
        self.core.engine.scan(Cf::Blocks, &start, &mut |k, v| {
            if k.len() != 32 {
                return true;
            }
            if (u16::from_be_bytes([k[0], k[1]]) as u32) >= cut {
                return true;
            }
            if decode::<BlockRow>(v).is_ok_and(|r| r.state == BlockState::Live) {
                if out.len() >= limit {
                    more = true;
                    return false;
                }
                out.push(k.try_into().expect("32 bytes"));
            }
            true
        })?;
        Ok((out, more))
    }
}

/// One walk over the index, as a worker.
struct Walk {
    core: Arc<Core>,
    shared: Arc<Mutex<VerifyReport>>,
    verdicts: Option<Arc<HashMap<VolumeId, VolumeVerdict>>>,
    /// The first key not walked yet.
    cursor: Vec<u8>,
    local: VerifyReport,
    per_volume: HashMap<VolumeId, u64>,
    started: Instant,
    finished: bool,
}

impl Walk {
    /// Volume-level problems once each, with the number of blocks they affect, and the final report.
    fn finish(&mut self, cancelled: bool) {
        let verdicts = self.verdicts.clone().unwrap_or_default();
        let mut affected: Vec<(&VolumeId, &u64)> = self.per_volume.iter().collect();
        affected.sort();
        for (id, n) in affected {
            if let Some((kind, detail)) = &verdicts[id].problem {
                self.local.problems_total += n;
                *self.local.by_kind.entry(kind.to_string()).or_default() += n;
                if self.local.problems.len() < MAX_LISTED {
                    self.local.problems.push(format!("{detail} ({n} blocks)"));
                }
            }
        }
        let secs = self.started.elapsed().as_secs_f64();
        self.local.entries_per_sec = self.local.entries as f64 / secs.max(1e-9);
        self.local.cancelled = cancelled;
        tracing::info!(
            entries = self.local.entries,
            problems = self.local.problems_total,
            rate = format!("{:.0}/s", self.local.entries_per_sec),
            cancelled,
            "block index verified"
        );
        let mut r = self.shared.lock();
        *r = VerifyReport {
            running: false,
            started_unix_ms: r.started_unix_ms,
            finished_unix_ms: now_ms(),
            ..self.local.clone()
        };
        self.finished = true;
    }
}

impl Drop for Walk {
    fn drop(&mut self) {
        // A cancelled walk still leaves a report of what it saw.
        if !self.finished {
            self.finish(true);
        }
    }
}

/// Walks up to [`ROWS_PER_UNIT`] rows from `cursor`; answers the next cursor, or `None` at the end.
fn walk_rows(
    core: &Core,
    verdicts: &HashMap<VolumeId, VolumeVerdict>,
    cursor: &[u8],
    local: &mut VerifyReport,
    per_volume: &mut HashMap<VolumeId, u64>,
) -> Result<Option<Vec<u8>>, MetaError> {
    let mut seen = 0;
    let mut next = None;
    core.engine.scan(Cf::Blocks, cursor, &mut |k, v| {
        if seen == ROWS_PER_UNIT {
            next = Some(k.to_vec());
            return false;
        }
        seen += 1;
        local.entries += 1;
        let row: BlockRow = match decode(v) {
            Ok(r) => r,
            Err(e) => {
                local.note("corrupt_row", format!("{}: {e}", hex(k)));
                return true;
            }
        };
        if row.state != BlockState::Live {
            return true;
        }
        local.live += 1;
        match verdicts.get(&row.volume) {
            None => local.note(
                "unknown_volume",
                format!("{}: volume {} is unknown", hex(k), row.volume),
            ),
            Some(vv) => {
                let fits = row.crcs.len() == vv.geometry.width() as usize
                    && row.frag_len as u64 == vv.geometry.frag_len(row.block_len as u64)
                    && hoard_types::range_end(row.offset, row.frag_len as u64)
                        .is_some_and(|end| end <= vv.capacity)
                    && k.len() == 32;
                if !fits {
                    local.note(
                        "bad_location",
                        format!("{}: location does not fit volume {}", hex(k), row.volume),
                    );
                }
                if vv.problem.is_some() {
                    *per_volume.entry(row.volume).or_default() += 1;
                }
            }
        }
        true
    })?;
    Ok(next)
}

impl Worker for Walk {
    fn name(&self) -> String {
        WORKER.to_string()
    }

    fn status(&self) -> WorkerStatus {
        WorkerStatus {
            progress: Some(Progress::new(self.local.entries, 0, "entries")),
            detail: format!(
                "{} entries, {} problems",
                self.local.entries, self.local.problems_total
            ),
        }
    }

    async fn work(&mut self, _: &CancellationToken) -> Result<WorkerState, WorkerError> {
        let verdicts = match &self.verdicts {
            Some(v) => Arc::clone(v),
            None => {
                let v = Arc::new(verdicts(&self.core));
                self.verdicts = Some(Arc::clone(&v));
                v
            }
        };
        // The walk blocks on the engine: off the async workers, with the walk's state moved along.
        let core = Arc::clone(&self.core);
        let cursor = std::mem::take(&mut self.cursor);
        let mut local = std::mem::take(&mut self.local);
        let mut per_volume = std::mem::take(&mut self.per_volume);
        let (res, local, per_volume) = tokio::task::spawn_blocking(move || {
            let r = walk_rows(&core, &verdicts, &cursor, &mut local, &mut per_volume);
            (r, local, per_volume)
        })
        .await
        .map_err(WorkerError::permanent)?;
        self.local = local;
        self.per_volume = per_volume;
        {
            let mut r = self.shared.lock();
            r.entries = self.local.entries;
            r.live = self.local.live;
        }
        match res {
            Ok(Some(next)) => {
                self.cursor = next;
                Ok(WorkerState::Busy)
            }
            Ok(None) => {
                self.finish(false);
                Ok(WorkerState::Done)
            }
            Err(e) => {
                self.local
                    .note("engine", format!("verification stopped: {e}"));
                self.finish(false);
                Err(WorkerError::permanent(e))
            }
        }
    }
}

fn verdicts(core: &Core) -> HashMap<VolumeId, VolumeVerdict> {
    let cell = core.lock();
    let now = now_ms();
    // (volume, member) -> generation, as the volume servers reported.
    let mut in_service: HashMap<(VolumeId, u32), (u64, &str)> = HashMap::new();
    for extents in cell.in_service.values() {
        for e in extents {
            in_service.insert(
                (e.id.volume, e.id.member),
                (e.id.generation, e.disk_id.as_str()),
            );
        }
    }
    cell.volumes
        .iter()
        .map(|(id, v)| {
            let geometry = Geometry { k: v.k, m: v.m };
            let mut problem = None;
            if v.state == VolumeState::Retired {
                problem = Some(("volume_retired", format!("volume {id} is retired")));
            } else if v.state == VolumeState::Lost {
                problem = Some((
                    "volume_lost",
                    format!("volume {id} lost more than {} members", v.m),
                ));
            } else {
                for (i, m) in v.members.iter().enumerate() {
                    if m.state != MemberState::Ok {
                        problem = Some((
                            "member_lost",
                            format!("volume {id} member {i} lost, awaiting repair"),
                        ));
                        break;
                    }
                    let node = cell.disks.get(&m.disk_id).and_then(|d| cell.nodes.get(&d.node_id));
                    let node_up = node.is_some_and(|n| health::node_up(&core.cfg, n, now));
                    // A report is current while its server has missed fewer than three beats.
                    let silent = node.map(|n| {
                        let stale = n.interval_ms.clamp(500, 3_600_000) * 3 + 1000;
                        now.saturating_sub(n.last_heartbeat_unix_ms) > stale
                    });
                    if silent != Some(false) {
                        problem = Some((
                            "member_unreachable",
                            format!("volume {id} member {i}: its server is not reporting"),
                        ));
                        break;
                    }
                    match in_service.get(&(*id, i as u32)) {
                        Some((g, disk)) if *g == m.generation && *disk == m.disk_id => {}
                        Some((g, disk)) => {
                            problem = Some((
                                "member_mismatch",
                                format!(
                                    "volume {id} member {i}: meta lists generation {} on {}, its server holds generation {g} on {disk}",
                                    m.generation, m.disk_id
                                ),
                            ));
                            break;
                        }
                        None if node_up => {
                            problem = Some((
                                "member_missing",
                                format!(
                                    "volume {id} member {i}: not in service on disk {}",
                                    m.disk_id
                                ),
                            ));
                            break;
                        }
                        None => {
                            problem = Some((
                                "member_unreachable",
                                format!("volume {id} member {i}: its server is not reporting"),
                            ));
                            break;
                        }
                    }
                }
            }
            (
                *id,
                VolumeVerdict {
                    geometry,
                    capacity: v.capacity,
                    problem,
                },
            )
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::WriteBatch;
    use crate::schema::encode;
    use crate::testutil::cell;
    use hoard_types::{BlockHash, BlockLocation};

    fn loc(volume: VolumeId, offset: u64) -> BlockLocation {
        let g = Geometry::DEFAULT;
        BlockLocation {
            volume,
            offset,
            frag_len: g.frag_len(1000),
            block_len: 1000,
            crcs: vec![0; 9],
        }
    }

    #[tokio::test]
    async fn verify_finds_rows_without_volumes_and_volumes_not_in_service() {
        let (state, _) = cell(4, 3);
        let (info, _) = state.volumes().acquire("fe", &[]).await.unwrap();
        for i in 0..10u64 {
            state
                .blocks()
                .commit(BlockHash::of(&i.to_le_bytes()), loc(info.id, i * 256))
                .await
                .unwrap();
        }
        // A row pointing at a volume that does not exist, written behind meta's back.
        let mut b = WriteBatch::default();
        let orphan = BlockRow {
            volume: 999,
            offset: 0,
            frag_len: 192,
            block_len: 1000,
            crcs: vec![0; 9],
            created_unix_ms: 0,
            state: BlockState::Live,
            asserted_unix_ms: 5,
            deleted_unix_ms: 0,
        };
        b.put(
            Cf::Blocks,
            BlockHash::of(b"orphan").as_bytes().to_vec(),
            encode(&orphan),
        );
        state.engine().write(b, true).unwrap();
        state.verify().start().unwrap().finished().await;
        let r = state.verify().report();
        assert_eq!(r.entries, 11);
        assert_eq!(r.by_kind.get("unknown_volume"), Some(&1));
        // No volume server reported the volume's extents (the test cell has none running).
        assert_eq!(r.by_kind.get("member_missing"), Some(&10), "{r:?}");
        assert!(
            r.problems.iter().any(|p| p.contains("(10 blocks)")),
            "{r:?}"
        );
        // Sampling: all of it at 100%, none at 0%, paged.
        let (all, more) = state.verify().sample_blocks(100.0, &[], 1000).unwrap();
        assert_eq!((all.len(), more), (11, false));
        let (page, more) = state.verify().sample_blocks(100.0, &[], 4).unwrap();
        assert!(more && page.len() == 4);
        let (rest, _) = state.verify().sample_blocks(100.0, &page[3], 1000).unwrap();
        assert_eq!(rest.len(), 7);
        assert!(
            state
                .verify()
                .sample_blocks(0.0, &[], 1000)
                .unwrap()
                .0
                .is_empty()
        );
    }
}
