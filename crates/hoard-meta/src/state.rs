//! The metadata tier: one [`MetaState`] holding every subsystem over one shared [`Core`] (the engine,
//! the config and the cell tables). Each subsystem is its own type, owning its part of the logic:
//!
//! | subsystem | module | what |
//! |---|---|---|
//! | [`BlockIndex`] | `blocks` | hash -> location: puts, assertions, deletes, group-committed |
//! | [`Compaction`] | `compaction` | donors, re-points, the inspection before a donor is retired |
//! | [`Nodes`] | `nodes` | heartbeats, the node and disk tables |
//! | [`Volumes`] | `volumes` | write leases, volume creation, reported problems |
//! | [`Health`] | `health` | members lost to silent nodes and failed disks |
//! | [`Repair`] | `repair` | the repair queue, rebuild plans and commits, range repairs |
//! | [`Moves`] | `moves` | rebalance and drain |
//! | [`Scrub`] | `scrub` | the scrub knobs and reports |
//! | [`Trash`] | `trash` | the trash ledger: inspections, clearances, the referee's halt |
//! | [`Verify`], [`IndexRebuild`] | `verify`, `rebuild_index` | operator jobs, run as workers |
//!
//! Storage keys and row layouts are [`crate::schema`]'s; what meta shows of its tables is
//! [`crate::views`]'. The gRPC service is the only code that sees wire requests.

use std::sync::{Arc, Weak};
use std::time::Duration;

use hoard_proto::v1;
use hoard_runtime::{CancellationToken, Registry, Worker, WorkerError, WorkerState, WorkerStatus};

use crate::MetaError;
use crate::blocks::BlockIndex;
use crate::compaction::Compaction;
use crate::core::Core;
pub use crate::core::MetaConfig;
use crate::engine::KvEngine;
use crate::health::Health;
use crate::moves::Moves;
use crate::nodes::{Heartbeat, HeartbeatAnswer, Nodes};
use crate::rebuild_index::IndexRebuild;
use crate::repair::Repair;
use crate::scrub::Scrub;
use crate::trash::Trash;
use crate::verify::Verify;
use crate::volume_ops::VolumeOps;
use crate::volumes::Volumes;

pub struct MetaState {
    core: Arc<Core>,
    blocks: Arc<BlockIndex>,
    compaction: Compaction,
    nodes: Nodes,
    volumes: Volumes,
    health: Health,
    repair: Repair,
    moves: Moves,
    scrub: Scrub,
    verify: Verify,
    index: IndexRebuild,
    trash: Trash,
}

impl MetaState {
    /// Loads the cell tables and starts the block committer.
    pub fn open(
        engine: Arc<dyn KvEngine>,
        cfg: MetaConfig,
        ops: Arc<dyn VolumeOps>,
    ) -> Result<Arc<MetaState>, MetaError> {
        Self::open_with_clock(engine, cfg, ops, crate::clock::MetaClock::system())
    }

    /// [`MetaState::open`] with wall time from `time` (tests move it).
    pub fn open_with_clock(
        engine: Arc<dyn KvEngine>,
        cfg: MetaConfig,
        ops: Arc<dyn VolumeOps>,
        time: crate::clock::TimeSource,
    ) -> Result<Arc<MetaState>, MetaError> {
        let core = Arc::new(Core::load(engine, cfg, ops, time)?);
        let blocks = Arc::new(BlockIndex::start(Arc::clone(&core))?);
        Ok(Arc::new(MetaState {
            nodes: Nodes::new(Arc::clone(&core)),
            volumes: Volumes::new(Arc::clone(&core)),
            health: Health::new(Arc::clone(&core)),
            repair: Repair::new(Arc::clone(&core)),
            moves: Moves::new(Arc::clone(&core)),
            scrub: Scrub::new(Arc::clone(&core)),
            verify: Verify::new(Arc::clone(&core)),
            index: IndexRebuild::new(Arc::clone(&core), Arc::clone(&blocks)),
            compaction: Compaction::new(Arc::clone(&core), Arc::clone(&blocks)),
            trash: Trash::new(Arc::clone(&core), Arc::clone(&blocks)),
            blocks,
            core,
        }))
    }

    /// Stops the committer after it has answered every queued commit.
    pub fn shutdown(&self) {
        self.blocks.shutdown();
    }

    pub fn config(&self) -> &MetaConfig {
        &self.core.cfg
    }

    pub fn cluster_id(&self) -> String {
        self.core.lock().cluster_id.clone()
    }

    pub fn engine(&self) -> &Arc<dyn KvEngine> {
        &self.core.engine
    }

    pub fn blocks(&self) -> &BlockIndex {
        &self.blocks
    }

    pub fn compaction(&self) -> &Compaction {
        &self.compaction
    }

    pub fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    pub fn volumes(&self) -> &Volumes {
        &self.volumes
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    pub fn repair(&self) -> &Repair {
        &self.repair
    }

    pub fn moves(&self) -> &Moves {
        &self.moves
    }

    pub fn scrub(&self) -> &Scrub {
        &self.scrub
    }

    pub fn verify(&self) -> &Verify {
        &self.verify
    }

    pub fn index_rebuild(&self) -> &IndexRebuild {
        &self.index
    }

    pub fn trash(&self) -> &Trash {
        &self.trash
    }

    /// The whole cell, for status pages and admin commands.
    pub fn cluster_status(&self) -> v1::ClusterStatusResponse {
        crate::views::cluster_status(&self.core.lock(), &self.core.cfg)
    }

    /// A heartbeat as a wire request, checked and recorded (tests and tools; the service probes
    /// addresses first, [`Nodes::heartbeat_checked`]).
    pub fn heartbeat_wire(&self, req: &v1::HeartbeatRequest) -> Result<HeartbeatAnswer, MetaError> {
        self.nodes.heartbeat(&Heartbeat::try_from(req)?)
    }

    /// One health check and the gauges of the cell, as the monitor runs them.
    pub fn check_health(&self) -> Result<(), MetaError> {
        self.health.check()?;
        self.repair.publish_metrics();
        self.trash.publish_metrics();
        Ok(())
    }
}

/// The health monitor: [`MetaState::check_health`] every `period`, as a worker, until the state is
/// dropped.
struct Monitor {
    state: Weak<MetaState>,
    period: Duration,
    checks: u64,
}

impl Worker for Monitor {
    fn name(&self) -> String {
        "health".into()
    }

    fn status(&self) -> WorkerStatus {
        WorkerStatus {
            progress: None,
            detail: format!("{} checks, every {:?}", self.checks, self.period),
        }
    }

    async fn work(&mut self, _: &CancellationToken) -> Result<WorkerState, WorkerError> {
        let Some(state) = self.state.upgrade() else {
            return Ok(WorkerState::Done);
        };
        tokio::task::spawn_blocking(move || state.check_health())
            .await
            .map_err(WorkerError::transient)?
            .map_err(WorkerError::transient)?;
        self.checks += 1;
        Ok(WorkerState::Throttled(self.period))
    }
}

/// The trash inspector: [`Trash::inspect`] every `period`, as a worker, until the state is dropped.
struct Inspector {
    state: Weak<MetaState>,
    period: Duration,
    last: crate::trash::Inspection,
    cleared: u64,
}

impl Worker for Inspector {
    fn name(&self) -> String {
        "trash-inspector".into()
    }

    fn status(&self) -> WorkerStatus {
        WorkerStatus {
            progress: None,
            detail: format!(
                "{} cleared in all; last round {} waiting, {} violations, {} rows walked",
                self.cleared, self.last.waiting, self.last.violations, self.last.rows_walked
            ),
        }
    }

    async fn work(&mut self, _: &CancellationToken) -> Result<WorkerState, WorkerError> {
        let Some(state) = self.state.upgrade() else {
            return Ok(WorkerState::Done);
        };
        self.last = state
            .trash()
            .inspect()
            .await
            .map_err(WorkerError::transient)?;
        self.cleared += self.last.cleared;
        Ok(WorkerState::Throttled(self.period))
    }
}

/// Starts the health monitor and the trash inspector of `state`.
pub fn spawn_monitor(state: &Arc<MetaState>, period: Duration) {
    let monitor = Monitor {
        state: Arc::downgrade(state),
        period,
        checks: 0,
    };
    if let Err(e) = Registry::global().spawn(monitor) {
        tracing::error!("health monitor not started: {e}");
    }
    let inspector = Inspector {
        state: Arc::downgrade(state),
        period: state.config().trash_inspect_every,
        last: Default::default(),
        cleared: 0,
    };
    if let Err(e) = Registry::global().spawn(inspector) {
        tracing::error!("trash inspector not started: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::CommitOutcome;
    use crate::testutil::{FakeOps, cell};
    use crate::volumes::Problem;
    use hoard_types::state::ProblemKind;
    use hoard_types::{BlockHash, BlockLocation, ExtentId, Geometry, VolumeId};

    fn loc(volume: VolumeId, offset: u64, len: u64) -> BlockLocation {
        let g = Geometry::DEFAULT;
        BlockLocation {
            volume,
            offset,
            frag_len: g.frag_len(len),
            block_len: len,
            crcs: vec![0; 9],
        }
    }

    #[tokio::test]
    async fn acquire_creates_a_placed_volume_and_leases_it() {
        let (state, ops) = cell(4, 3);
        let (info, epoch) = state.volumes().acquire("fe-1", &[]).await.unwrap();
        assert_eq!(epoch, 1);
        assert_eq!(info.state, "open");
        assert_eq!(info.members.len(), 9);
        assert_eq!(ops.created.lock().len(), 9);
        // A second holder gets a different volume; the first volume's lease is taken.
        let (other, _) = state.volumes().acquire("fe-2", &[]).await.unwrap();
        assert_ne!(other.id, info.id);
        // A released lease is granted again with a higher epoch.
        assert!(
            !state
                .volumes()
                .renew_lease("fe-1", info.id, 1, true)
                .unwrap()
        );
        let (again, epoch) = state.volumes().acquire("fe-3", &[]).await.unwrap();
        assert_eq!(again.id, info.id);
        assert_eq!(epoch, 2);
        assert!(
            !state
                .volumes()
                .renew_lease("fe-1", info.id, 1, false)
                .unwrap()
        );
        assert!(
            state
                .volumes()
                .renew_lease("fe-3", info.id, 2, false)
                .unwrap()
        );
    }

    #[tokio::test]
    async fn too_few_disks_is_unavailable_with_numbers() {
        let (state, _) = cell(2, 2);
        let err = state.volumes().acquire("fe", &[]).await.unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::Unavailable);
        assert!(err.to_string().contains("need 9"), "{err}");
        assert!(err.to_string().contains("4 healthy"), "{err}");
    }

    #[tokio::test]
    async fn failed_extent_creation_retries_on_other_disks() {
        let (state, ops) = cell(5, 3);
        ops.broken.lock().insert("d0-0".into());
        ops.broken.lock().insert("d1-0".into());
        let (info, _) = state.volumes().acquire("fe", &[]).await.unwrap();
        assert!(
            info.members
                .iter()
                .all(|m| m.disk_id != "d0-0" && m.disk_id != "d1-0")
        );
        assert!(info.id > 1, "the failed attempt's volume id is not reused");
    }

    #[tokio::test]
    async fn commit_is_insert_if_absent_and_counts() {
        let (state, _) = cell(4, 3);
        let (info, _) = state.volumes().acquire("fe", &[]).await.unwrap();
        let h = BlockHash::of(b"one");
        assert_eq!(
            state
                .blocks()
                .commit(h, loc(info.id, 0, 100))
                .await
                .unwrap(),
            CommitOutcome::Inserted
        );
        let again = state
            .blocks()
            .commit(h, loc(info.id, 64, 100))
            .await
            .unwrap();
        assert_eq!(again, CommitOutcome::Exists(loc(info.id, 0, 100)));
        let found = state.blocks().lookup(&[h, BlockHash::of(b"two")]).unwrap();
        assert_eq!(found[0].as_ref().unwrap().0, loc(info.id, 0, 100));
        assert!(found[1].is_none());
        let v = state.volumes().volume(info.id).unwrap();
        assert_eq!((v.blocks, v.bytes), (1, 100));
        // Concurrent commits of distinct blocks all land.
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let s = Arc::clone(&state);
            tasks.push(tokio::spawn(async move {
                s.blocks()
                    .commit(
                        BlockHash::of(&i.to_le_bytes()),
                        loc(info.id, 128 + i * 64, 10),
                    )
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), CommitOutcome::Inserted);
        }
        assert_eq!(state.volumes().volume(info.id).unwrap().blocks, 201);
    }

    #[tokio::test]
    async fn commit_rejects_bad_locations() {
        let (state, _) = cell(4, 3);
        let (info, _) = state.volumes().acquire("fe", &[]).await.unwrap();
        let h = BlockHash::of(b"x");
        let mut bad = loc(info.id, 0, 100);
        bad.crcs.pop();
        assert!(matches!(
            state.blocks().commit(h, bad).await,
            Err(MetaError::Invalid(_))
        ));
        assert!(matches!(
            state.blocks().commit(h, loc(info.id + 100, 0, 100)).await,
            Err(MetaError::NoVolume(_))
        ));
        assert!(matches!(
            state.blocks().commit(h, loc(info.id, 1 << 20, 100)).await,
            Err(MetaError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn reported_volume_is_sealed_and_not_leased_again() {
        let (state, _) = cell(4, 3);
        let (info, _) = state.volumes().acquire("fe", &[]).await.unwrap();
        state
            .volumes()
            .report(&Problem {
                volume: info.id,
                member: Some(2),
                kind: ProblemKind::WriteFailed,
                detail: "boom".into(),
                offset: 0,
                hash: Vec::new(),
            })
            .unwrap();
        assert_eq!(state.volumes().volume(info.id).unwrap().state, "sealed");
        assert!(
            !state
                .volumes()
                .renew_lease("fe", info.id, 1, false)
                .unwrap()
        );
        let (next, _) = state.volumes().acquire("fe", &[]).await.unwrap();
        assert_ne!(next.id, info.id);
    }

    #[tokio::test]
    async fn an_unreachable_member_keeps_new_volumes_off_every_disk_of_its_node() {
        // Default geometry (6+3) on 6 nodes of 3 disks: up to 3 members per node.
        let (state, _) = cell(6, 3);
        let (info, _) = state.volumes().acquire("fe", &[]).await.unwrap();
        let m = &info.members[0];
        let node = m.disk_id.split('-').next().unwrap().to_string();
        let report = |kind| Problem {
            volume: info.id,
            member: Some(0),
            kind,
            detail: "no answer".into(),
            offset: 0,
            hash: Vec::new(),
        };
        state
            .volumes()
            .report(&report(ProblemKind::Unreachable))
            .unwrap();
        for _ in 0..3 {
            let (next, _) = state.volumes().acquire("fe", &[]).await.unwrap();
            assert_ne!(next.id, info.id);
            for m in &next.members {
                assert!(
                    !m.disk_id.starts_with(&format!("{node}-")),
                    "volume {} has member {} on {} of the unreachable node {node}",
                    next.id,
                    m.index,
                    m.disk_id
                );
            }
            state
                .volumes()
                .report(&Problem {
                    volume: next.id,
                    ..report(ProblemKind::Full)
                })
                .unwrap();
        }
    }

    #[tokio::test]
    async fn abandoned_newer_generations_are_retired_but_running_moves_are_not() {
        let (state, _) = cell(4, 3);
        let (info, _) = state.volumes().acquire("fe", &[]).await.unwrap();
        let vid = info.id;
        let report = |generation: u64| v1::HeartbeatRequest {
            node_id: "n0".into(),
            address: "127.0.0.1:9000".into(),
            labels: Default::default(),
            interval_ms: 1000,
            disks: Vec::new(),
            extents: vec![v1::ExtentInfo {
                extent: Some(hoard_proto::convert::extent_ref(ExtentId {
                    volume: vid,
                    member: 0,
                    generation,
                })),
                ..Default::default()
            }],
            ..Default::default()
        };
        let current = state.volumes().volume(vid).unwrap().members[0].generation;
        // The generation meta lists stays; a newer one nothing is writing goes to the trash.
        assert!(
            state
                .heartbeat_wire(&report(current))
                .unwrap()
                .retire
                .is_empty()
        );
        let retire = state.heartbeat_wire(&report(current + 5)).unwrap().retire;
        assert_eq!(retire.len(), 1);
        assert_eq!(retire[0].generation, current + 5);

        // A move that is copying member 0 writes a newer generation: that extent must stay.
        let disk = state.volumes().volume(vid).unwrap().members[0]
            .disk_id
            .clone();
        assert!(state.moves().drain(&[disk]).unwrap() > 0);
        let (_, tasks, _) = state.moves().moves();
        let id = tasks
            .iter()
            .find(|t| t.volume == vid && t.member == 0)
            .unwrap()
            .id;
        let plan = state.moves().start_move(id).unwrap();
        let writing = plan.outputs[0].generation;
        assert!(writing > current);
        assert!(
            state
                .heartbeat_wire(&report(writing))
                .unwrap()
                .retire
                .is_empty()
        );
        // A failed attempt abandons what it wrote (the next attempt writes a new generation).
        state.moves().fail_move(id, "test").unwrap();
        assert_eq!(
            state.heartbeat_wire(&report(writing)).unwrap().retire.len(),
            1
        );
    }

    #[tokio::test]
    async fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ops = Arc::new(FakeOps::default());
        let cfg = MetaConfig::default();
        let h = BlockHash::of(b"persist");
        let (vid, cluster) = {
            let engine = Arc::new(crate::engine::RocksEngine::open(dir.path()).unwrap());
            let state = MetaState::open(engine, cfg.clone(), ops.clone()).unwrap();
            for n in 0..4 {
                state
                    .heartbeat_wire(&v1::HeartbeatRequest {
                        node_id: format!("n{n}"),
                        address: "a".into(),
                        labels: Default::default(),
                        extents: Vec::new(),
                        interval_ms: 1000,
                        disks: (0..3)
                            .map(|d| v1::DiskInfo {
                                disk_id: format!("d{n}{d}"),
                                state: "ok".into(),
                                free_bytes: 10 << 30,
                                capacity_bytes: 10 << 30,
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    })
                    .unwrap();
            }
            let (info, _) = state.volumes().acquire("fe", &[]).await.unwrap();
            state
                .blocks()
                .commit(h, loc(info.id, 0, 100))
                .await
                .unwrap();
            // A drain leaves planned moves in the repair table; they must load again.
            let disk = state.volumes().volume(info.id).unwrap().members[0]
                .disk_id
                .clone();
            assert!(state.moves().drain(&[disk]).unwrap() > 0);
            state.shutdown();
            (info.id, state.cluster_id())
        };
        let engine = Arc::new(crate::engine::RocksEngine::open(dir.path()).unwrap());
        let state = MetaState::open(engine, cfg, ops).unwrap();
        assert_eq!(state.cluster_id(), cluster);
        assert_eq!(
            state.blocks().lookup(&[h]).unwrap()[0]
                .as_ref()
                .unwrap()
                .0
                .volume,
            vid
        );
        assert_eq!(state.volumes().volume(vid).unwrap().blocks, 1);
        let (_, tasks, _) = state.moves().moves();
        assert_eq!(tasks.len(), 1, "the drain's move survives a restart");
        assert_eq!(tasks[0].volume, vid);
        let (next, epoch) = state.volumes().acquire("fe2", &[]).await.unwrap();
        // The old lease has not expired yet, so a fresh volume with a new id is created.
        assert!(next.id > vid || epoch > 1);
    }
}
