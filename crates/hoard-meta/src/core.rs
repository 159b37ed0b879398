//! The cell's tables in memory, over the engine: what every subsystem of the metadata tier shares.
//!
//! The cell tables (volumes, disks, nodes, repair plans, moves, knobs) are small (thousands of rows) and
//! live in memory, written through to the engine in the order in which they were changed
//! ([`Core::mutate`]). The block index is the one table that grows with the data; it is read from the
//! engine by the block index.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use hoard_proto::v1;
use hoard_types::{Geometry, VolumeId};
use parking_lot::{Mutex, MutexGuard};

use crate::MetaError;
use crate::engine::{Cf, KvEngine, WriteBatch};
use crate::rows::{
    CompactionRow, DiskRow, KnobsRow, MoveRow, NodeRow, RangeRow, RebalanceRow, RepairCountersRow,
    RepairRow, ReportedExtent, ScrubKnobsRow, VolumeRow,
};
use crate::schema::{self, ConfigKey, RepairKey, decode};
use crate::volume_ops::VolumeOps;

#[derive(Clone, Debug)]
pub struct MetaConfig {
    /// Geometry of new volumes.
    pub geometry: Geometry,
    /// Bytes of each member's data region.
    pub extent_capacity: u64,
    /// How long a write lease lasts without renewal.
    pub lease: Duration,
    /// A node silent for longer is down.
    pub heartbeat_grace: Duration,
    /// Keep at most `m` members of a volume on one node (refuse to place otherwise).
    pub node_failure_domain: bool,
    /// A disk filled past this share of its capacity (counting the room its open extents may still
    /// take) takes no new members.
    pub high_water: f64,
    /// The timers of the delete contract.
    pub delete: crate::index_ops::DeletePolicy,
    /// The compaction threshold until an operator sets one: a sealed volume whose reclaimable share
    /// of its stored bytes reaches it is compacted.
    pub compaction_threshold: f64,
    /// How often the trash inspector looks at the volume servers' uncleared trash entries.
    pub trash_inspect_every: Duration,
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            geometry: Geometry::DEFAULT,
            extent_capacity: 1 << 30,
            lease: Duration::from_secs(30),
            heartbeat_grace: Duration::from_secs(15 * 60),
            node_failure_domain: true,
            high_water: 0.9,
            delete: Default::default(),
            compaction_threshold: 0.3,
            trash_inspect_every: Duration::from_secs(30),
        }
    }
}

/// The cell tables, in memory. Each subsystem changes its own tables; `volumes`, `disks` and `nodes`
/// are everyone's.
#[derive(Default)]
pub(crate) struct Tables {
    pub(crate) cluster_id: String,
    pub(crate) next_volume: VolumeId,
    pub(crate) volumes: BTreeMap<VolumeId, VolumeRow>,
    pub(crate) disks: BTreeMap<String, DiskRow>,
    pub(crate) nodes: BTreeMap<String, NodeRow>,
    /// Planned and running rebuilds, by volume.
    pub(crate) repairs: BTreeMap<VolumeId, RepairRow>,
    /// Corrupt fragments to rewrite in place, by (volume, member, offset).
    pub(crate) ranges: BTreeMap<(VolumeId, u32, u64), RangeRow>,
    /// Member moves (rebalance, drain), by id.
    pub(crate) moves: BTreeMap<u64, MoveRow>,
    pub(crate) next_move: u64,
    pub(crate) rebalance: RebalanceRow,
    pub(crate) knobs: KnobsRow,
    pub(crate) scrub_knobs: ScrubKnobsRow,
    /// The last scrub status each disk reported. Memory only: the checkpoints live on the disks.
    pub(crate) scrub: BTreeMap<String, v1::ScrubStatus>,
    /// The extents each volume server last said it holds. Memory only.
    pub(crate) in_service: BTreeMap<String, Vec<ReportedExtent>>,
    pub(crate) counters: RepairCountersRow,
    pub(crate) compaction: CompactionRow,
    /// What the volume servers' trash holds, the clearances issued and the halt.
    pub(crate) trash: crate::trash::Ledger,
    /// (time, bytes) of recent rebuild commits, for the rate.
    pub(crate) recent: VecDeque<(u64, u64)>,
    /// Disks a frontend reported failing since their node's last heartbeat: no new members go there
    /// until the node proves itself alive again. Memory only.
    pub(crate) suspect: HashSet<String>,
    /// Disks whose server finds their synced writes slow, with the median probe (ms), as of their
    /// last heartbeat: no new members go there while other disks fit. Memory only.
    pub(crate) slow: HashMap<String, u32>,
    /// When this meta loaded the tables (Unix ms): a node's silence counts only from then on, so
    /// that meta's own outage is not taken for the nodes'.
    pub(crate) started_unix_ms: u64,
}

/// The compaction knobs when none were ever set: at most 64 MiB/s, four blocks at once.
pub(crate) fn default_compaction(threshold: f64) -> CompactionRow {
    CompactionRow {
        bytes_per_sec: 64 << 20,
        concurrency: 4,
        threshold,
        ..Default::default()
    }
}

/// The live repair knobs when none were ever set.
pub(crate) fn default_repair_knobs() -> KnobsRow {
    KnobsRow {
        paused: false,
        bytes_per_sec: 0,
        concurrency: 2,
    }
}

/// The scrub knobs when none were ever set: a pass every 14 days at 32 MiB/s per disk.
pub(crate) fn default_scrub_knobs() -> ScrubKnobsRow {
    ScrubKnobsRow {
        paused: false,
        bytes_per_sec: 32 << 20,
        interval_secs: 14 * 86_400,
        start_requested_unix_ms: 0,
    }
}

/// Every decoded row of table `cf`, by key.
fn load_all<R: schema::Row>(engine: &dyn KvEngine, cf: Cf) -> Result<Vec<(Vec<u8>, R)>, MetaError> {
    let mut out = Vec::new();
    let mut err = None;
    engine.scan(cf, b"", &mut |k, v| {
        match decode::<R>(v) {
            Ok(r) => out.push((k.to_vec(), r)),
            Err(e) => err = Some(e),
        }
        err.is_none()
    })?;
    err.map_or(Ok(out), Err)
}

/// A config row, or `default` when it was never written.
fn config_or<R: schema::Row>(
    engine: &dyn KvEngine,
    key: ConfigKey,
    default: impl FnOnce() -> R,
) -> Result<R, MetaError> {
    match engine.get(Cf::Config, key.bytes())? {
        Some(b) => decode(&b),
        None => Ok(default()),
    }
}

impl Tables {
    /// Every cell table, from the engine. A new engine gets a new cluster id.
    fn load(engine: &dyn KvEngine, cfg: &MetaConfig) -> Result<Tables, MetaError> {
        let mut t = Tables {
            started_unix_ms: hoard_types::now_ms(),
            ..Tables::default()
        };
        match engine.get(Cf::Config, ConfigKey::ClusterId.bytes())? {
            Some(id) => t.cluster_id = String::from_utf8_lossy(&id).into_owned(),
            None => {
                t.cluster_id = hoard_types::random_id("cell");
                let mut b = WriteBatch::default();
                b.put(
                    Cf::Config,
                    ConfigKey::ClusterId.bytes(),
                    t.cluster_id.as_bytes(),
                );
                engine.write(b, true)?;
                tracing::info!(cluster = %t.cluster_id, "new metadata tier");
            }
        }
        let counter = |key: ConfigKey| -> Result<u64, MetaError> {
            Ok(engine
                .get(Cf::Config, key.bytes())?
                .and_then(|v| schema::parse_counter(&v))
                .unwrap_or(0))
        };
        t.next_volume = counter(ConfigKey::NextVolume)?.max(1);
        t.next_move = counter(ConfigKey::NextMove)?;
        for (k, row) in load_all::<VolumeRow>(engine, Cf::Volumes)? {
            t.volumes.insert(schema::parse_volume_key(&k)?, row);
        }
        for (k, row) in load_all::<DiskRow>(engine, Cf::Disks)? {
            t.disks
                .insert(String::from_utf8_lossy(&k).into_owned(), row);
        }
        for (k, row) in load_all::<NodeRow>(engine, Cf::Nodes)? {
            t.nodes
                .insert(String::from_utf8_lossy(&k).into_owned(), row);
        }
        // The repair table holds three kinds of row, told apart by their keys.
        let mut err = None;
        engine.scan(Cf::Repair, b"", &mut |k, v| {
            let res = match RepairKey::parse(k) {
                Some(RepairKey::Rebuild(id)) => decode(v).map(|r| {
                    t.repairs.insert(id, r);
                }),
                Some(RepairKey::Move(id)) => decode(v).map(|r| {
                    t.moves.insert(id, r);
                }),
                Some(RepairKey::Range(vol, member, off)) => decode(v).map(|r| {
                    t.ranges.insert((vol, member, off), r);
                }),
                None => Err(MetaError::Corrupt {
                    table: "repair".into(),
                    problem: "bad key".into(),
                }),
            };
            if let Err(e) = res {
                err = Some(e);
            }
            err.is_none()
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        t.knobs = config_or(engine, ConfigKey::RepairKnobs, default_repair_knobs)?;
        t.rebalance = config_or(engine, ConfigKey::Rebalance, RebalanceRow::default)?;
        t.scrub_knobs = config_or(engine, ConfigKey::ScrubKnobs, default_scrub_knobs)?;
        t.compaction = config_or(engine, ConfigKey::Compaction, || {
            default_compaction(cfg.compaction_threshold)
        })?;
        t.counters = config_or(
            engine,
            ConfigKey::RepairCounters,
            RepairCountersRow::default,
        )?;
        t.trash = crate::trash::Ledger::load(engine)?;
        // Ids are never reused, even if a counter row was lost.
        t.next_move = t
            .next_move
            .max(t.moves.keys().next_back().copied().unwrap_or(0));
        if let Some((&max, _)) = t.volumes.iter().next_back() {
            t.next_volume = t.next_volume.max(max.saturating_add(1));
        }
        Ok(t)
    }
}

/// What every subsystem of the metadata tier shares: the engine, the config, the cell tables and the
/// volume servers.
pub(crate) struct Core {
    pub(crate) engine: Arc<dyn KvEngine>,
    pub(crate) cfg: MetaConfig,
    pub(crate) ops: Arc<dyn VolumeOps>,
    /// Time for delete tokens and assertions: never backwards.
    pub(crate) clock: crate::clock::MetaClock,
    tables: Mutex<Tables>,
    /// Taken around every write of cell rows, so that rows reach the engine in the order in which they
    /// were changed in memory.
    persist: Mutex<()>,
}

impl Core {
    pub(crate) fn load(
        engine: Arc<dyn KvEngine>,
        cfg: MetaConfig,
        ops: Arc<dyn VolumeOps>,
        time: crate::clock::TimeSource,
    ) -> Result<Core, MetaError> {
        let tables = Tables::load(engine.as_ref(), &cfg)?;
        let clock = crate::clock::MetaClock::open(Arc::clone(&engine), time)?;
        Ok(Core {
            engine,
            cfg,
            ops,
            clock,
            tables: Mutex::new(tables),
            persist: Mutex::new(()),
        })
    }

    /// The tables, for reading (or for changes that need no write).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock()
    }

    /// Changes cell rows in memory and writes the rows that `f` put into the batch, in change order;
    /// synced when `sync`.
    pub(crate) fn mutate<R>(
        &self,
        sync: bool,
        f: impl FnOnce(&mut Tables, &mut WriteBatch) -> R,
    ) -> Result<R, MetaError> {
        let _order = self.persist.lock();
        let mut batch = WriteBatch::default();
        let r = {
            let mut t = self.tables.lock();
            f(&mut t, &mut batch)
        };
        if !batch.is_empty() {
            self.engine.write(batch, sync)?;
        }
        Ok(r)
    }

    /// Writes `batch` with the cell rows `f` adds to it, in change order, synced.
    pub(crate) fn write_with(
        &self,
        mut batch: WriteBatch,
        f: impl FnOnce(&mut Tables, &mut WriteBatch),
    ) -> Result<(), MetaError> {
        let _order = self.persist.lock();
        {
            let mut t = self.tables.lock();
            f(&mut t, &mut batch);
        }
        if batch.is_empty() {
            Ok(())
        } else {
            self.engine.write(batch, true)
        }
    }
}
