//! Verification of the block index: a walk over every row that checks it is well formed and that its
//! volume has every member in service at the generation meta lists — against what the volume servers
//! themselves reported in their last heartbeats. Volume-level findings are computed once per volume, so
//! the walk costs a decode and a few lookups per row.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use hoard_types::{Geometry, VolumeId, now_ms};
use parking_lot::Mutex;

use crate::MetaError;
use crate::engine::Cf;
use crate::records::{BLOCK_LIVE, BlockRow, decode};
use crate::state::{MEMBER_OK, MetaState, STATE_LOST, STATE_RETIRED};

/// Problems listed in full; beyond this only counted.
const MAX_LISTED: usize = 1000;

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
}

#[derive(Default)]
pub struct VerifyJob {
    report: Mutex<VerifyReport>,
}

/// A volume's standing, computed once per walk.
#[derive(Clone)]
struct VolumeVerdict {
    geometry: Geometry,
    capacity: u64,
    /// (kind, detail) when the volume cannot serve all its blocks as it should.
    problem: Option<(&'static str, String)>,
}

impl MetaState {
    pub fn verify_report(&self) -> VerifyReport {
        self.verify_job.report.lock().clone()
    }

    /// Starts a walk in the background; fails when one is running.
    pub fn start_verify(self: &Arc<Self>) -> Result<(), MetaError> {
        {
            let mut r = self.verify_job.report.lock();
            if r.running {
                return Err(MetaError::Invalid(
                    "a verification is running already".into(),
                ));
            }
            *r = VerifyReport {
                running: true,
                started_unix_ms: now_ms(),
                ..Default::default()
            };
        }
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let res = me.verify_index();
            let mut r = me.verify_job.report.lock();
            if let Err(e) = res {
                r.problems.push(format!("verification stopped: {e}"));
                r.problems_total += 1;
            }
            r.running = false;
            r.finished_unix_ms = now_ms();
        });
        Ok(())
    }

    fn verdicts(&self) -> HashMap<VolumeId, VolumeVerdict> {
        let cell = self.cell_lock();
        let now = now_ms();
        // (volume, member) -> generation, as the volume servers reported.
        let mut in_service: HashMap<(VolumeId, u32), (u64, &str)> = HashMap::new();
        for extents in cell.in_service.values() {
            for e in extents {
                if let Some(r) = &e.extent {
                    in_service.insert((r.volume, r.member), (r.generation, e.disk_id.as_str()));
                }
            }
        }
        cell.volumes
            .iter()
            .map(|(id, v)| {
                let geometry = Geometry { k: v.k, m: v.m };
                let mut problem = None;
                if v.state == STATE_RETIRED {
                    problem = Some(("volume_retired", format!("volume {id} is retired")));
                } else if v.state == STATE_LOST {
                    problem = Some((
                        "volume_lost",
                        format!("volume {id} lost more than {} members", v.m),
                    ));
                } else {
                    for (i, m) in v.members.iter().enumerate() {
                        if m.state != MEMBER_OK {
                            problem = Some((
                                "member_lost",
                                format!("volume {id} member {i} lost, awaiting repair"),
                            ));
                            break;
                        }
                        let node = cell.disks.get(&m.disk_id).and_then(|d| cell.nodes.get(&d.node_id));
                        let node_up = node.is_some_and(|n| self.node_up(n, now));
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

    /// Walks the whole block index. Blocking; call from a blocking thread.
    pub fn verify_index(&self) -> Result<(), MetaError> {
        let verdicts = self.verdicts();
        let started = Instant::now();
        let mut per_volume: HashMap<VolumeId, u64> = HashMap::new();
        let mut local = VerifyReport::default();
        let note = |r: &mut VerifyReport, kind: &str, line: String| {
            r.problems_total += 1;
            *r.by_kind.entry(kind.to_string()).or_default() += 1;
            if r.problems.len() < MAX_LISTED {
                r.problems.push(line);
            }
        };
        let mut last_publish = Instant::now();
        self.engine().scan(Cf::Blocks, b"", &mut |k, v| {
            local.entries += 1;
            let row: BlockRow = match decode("blocks", v) {
                Ok(r) => r,
                Err(e) => {
                    note(&mut local, "corrupt_row", format!("{}: {e}", hex(k)));
                    return true;
                }
            };
            if row.state != BLOCK_LIVE {
                return true;
            }
            local.live += 1;
            match verdicts.get(&row.volume) {
                None => note(
                    &mut local,
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
                        note(
                            &mut local,
                            "bad_location",
                            format!("{}: location does not fit volume {}", hex(k), row.volume),
                        );
                    }
                    if vv.problem.is_some() {
                        *per_volume.entry(row.volume).or_default() += 1;
                    }
                }
            }
            if local.entries % 65_536 == 0 && last_publish.elapsed().as_millis() >= 200 {
                last_publish = Instant::now();
                let mut r = self.verify_job.report.lock();
                r.entries = local.entries;
                r.live = local.live;
            }
            true
        })?;
        let secs = started.elapsed().as_secs_f64();
        // Volume-level problems once each, with the number of blocks they affect.
        let mut affected: Vec<(&VolumeId, &u64)> = per_volume.iter().collect();
        affected.sort();
        for (id, n) in affected {
            if let Some((kind, detail)) = &verdicts[id].problem {
                local.problems_total += n;
                *local.by_kind.entry(kind.to_string()).or_default() += n;
                if local.problems.len() < MAX_LISTED {
                    local.problems.push(format!("{detail} ({n} blocks)"));
                }
            }
        }
        local.entries_per_sec = local.entries as f64 / secs.max(1e-9);
        tracing::info!(
            entries = local.entries,
            problems = local.problems_total,
            rate = format!("{:.0}/s", local.entries_per_sec),
            "block index verified"
        );
        let mut r = self.verify_job.report.lock();
        let (running, started_unix_ms) = (r.running, r.started_unix_ms);
        *r = VerifyReport {
            running,
            started_unix_ms,
            ..local
        };
        Ok(())
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
        self.engine().scan(Cf::Blocks, &start, &mut |k, v| {
            if k.len() != 32 {
                return true;
            }
            if (u16::from_be_bytes([k[0], k[1]]) as u32) >= cut {
                return true;
            }
            if decode::<BlockRow>("blocks", v).is_ok_and(|r| r.state == BLOCK_LIVE) {
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::WriteBatch;
    use crate::records::encode;
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
        let (info, _) = state.acquire_volume("fe", &[]).await.unwrap();
        for i in 0..10u64 {
            state
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
            state: BLOCK_LIVE,
        };
        b.put(
            Cf::Blocks,
            BlockHash::of(b"orphan").as_bytes().to_vec(),
            encode(&orphan),
        );
        state.engine().write(b, true).unwrap();
        state.verify_index().unwrap();
        let r = state.verify_report();
        assert_eq!(r.entries, 11);
        assert_eq!(r.by_kind.get("unknown_volume"), Some(&1));
        // No volume server reported the volume's extents (the test cell has none running).
        assert_eq!(r.by_kind.get("member_missing"), Some(&10), "{r:?}");
        assert!(
            r.problems.iter().any(|p| p.contains("(10 blocks)")),
            "{r:?}"
        );
        // Sampling: all of it at 100%, none at 0%, paged.
        let (all, more) = state.sample_blocks(100.0, &[], 1000).unwrap();
        assert_eq!((all.len(), more), (11, false));
        let (page, more) = state.sample_blocks(100.0, &[], 4).unwrap();
        assert!(more && page.len() == 4);
        let (rest, _) = state.sample_blocks(100.0, &page[3], 1000).unwrap();
        assert_eq!(rest.len(), 7);
        assert!(state.sample_blocks(0.0, &[], 1000).unwrap().0.is_empty());
    }
}
