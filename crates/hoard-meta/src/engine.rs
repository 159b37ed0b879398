//! The key-value engine under the metadata tier, behind one trait so that the engine is swappable and the
//! meta logic is tested against an in-memory engine as well as RocksDB.

use std::collections::BTreeMap;
use std::path::Path;

use parking_lot::RwLock;

use crate::MetaError;

/// Column families (tables) of the metadata tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    /// hash -> block location and state. The only table that grows with the data.
    Blocks,
    /// volume id (big endian) -> volume row.
    Volumes,
    /// disk id -> disk row.
    Disks,
    /// node id -> node row.
    Nodes,
    /// queued repair tasks.
    Repair,
    /// cell-wide settings: cluster id, next volume id.
    Config,
}

impl Cf {
    pub const ALL: [Cf; 6] = [
        Cf::Blocks,
        Cf::Volumes,
        Cf::Disks,
        Cf::Nodes,
        Cf::Repair,
        Cf::Config,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Blocks => "blocks",
            Cf::Volumes => "volumes",
            Cf::Disks => "disks",
            Cf::Nodes => "nodes",
            Cf::Repair => "repair",
            Cf::Config => "config",
        }
    }
}

/// A set of puts and deletes applied atomically.
#[derive(Default, Debug)]
pub struct WriteBatch {
    pub ops: Vec<(Cf, Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteBatch {
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((cf, key.into(), Some(value.into())));
    }

    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push((cf, key.into(), None));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The storage engine contract.
pub trait KvEngine: Send + Sync + 'static {
    /// Reads one value.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError>;

    /// Reads several values of one table, in the order of `keys`.
    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, MetaError> {
        keys.iter().map(|k| self.get(cf, k)).collect()
    }

    /// Applies every operation of `batch` atomically: after a crash either all of them are visible or
    /// none. With `sync`, returns only once the batch is durable (the write-ahead log is fsynced);
    /// without, a crash may lose the batch (but never part of it).
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), MetaError>;

    /// Visits the entries of `cf` in key order, starting at `from`, until `visit` returns false.
    fn scan(
        &self,
        cf: Cf,
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), MetaError>;

    /// Writes a consistent copy of the whole store into `dir`, which must not exist yet.
    fn checkpoint(&self, dir: &Path) -> Result<(), MetaError>;
}

/// An in-memory engine: the conformance reference and the engine of unit tests. Not durable.
/// Every table's rows, keyed by (table, key).
type Rows = BTreeMap<(Cf, Vec<u8>), Vec<u8>>;

#[derive(Default)]
pub struct MemEngine {
    tables: RwLock<Rows>,
}

impl MemEngine {
    pub fn new() -> Self {
        Self::default()
    }
}

impl KvEngine for MemEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(self.tables.read().get(&(cf, key.to_vec())).cloned())
    }

    fn write(&self, batch: WriteBatch, _sync: bool) -> Result<(), MetaError> {
        let mut t = self.tables.write();
        for (cf, k, v) in batch.ops {
            match v {
                Some(v) => {
                    t.insert((cf, k), v);
                }
                None => {
                    t.remove(&(cf, k));
                }
            }
        }
        Ok(())
    }

    fn scan(
        &self,
        cf: Cf,
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), MetaError> {
        let t = self.tables.read();
        for ((c, k), v) in t.range((cf, from.to_vec())..) {
            if *c != cf || !visit(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn checkpoint(&self, _dir: &Path) -> Result<(), MetaError> {
        Err(MetaError::Engine(
            "the in-memory engine has no checkpoints".into(),
        ))
    }
}

/// RocksDB, one column family per table.
pub struct RocksEngine {
    db: rocksdb::DB,
}

impl RocksEngine {
    pub fn open(path: &Path) -> Result<Self, MetaError> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut o = rocksdb::Options::default();
            if *cf == Cf::Blocks {
                // Point lookups by hash dominate; a bloom filter spares disk reads for absent hashes
                // (dedup checks and FindMissing ask mostly about new blocks).
                let mut bo = rocksdb::BlockBasedOptions::default();
                bo.set_bloom_filter(10.0, false);
                o.set_block_based_table_factory(&bo);
                o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            }
            rocksdb::ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = rocksdb::DB::open_cf_descriptors(&opts, path, cfs)
            .map_err(|e| MetaError::Engine(format!("open {}: {e}", path.display())))?;
        Ok(RocksEngine { db })
    }

    fn cf(&self, cf: Cf) -> Result<&rocksdb::ColumnFamily, MetaError> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| MetaError::Engine(format!("missing column family {}", cf.name())))
    }
}

fn rocks_err(e: rocksdb::Error) -> MetaError {
    MetaError::Engine(e.to_string())
}

impl KvEngine for RocksEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        self.db.get_cf(self.cf(cf)?, key).map_err(rocks_err)
    }

    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, MetaError> {
        let h = self.cf(cf)?;
        self.db
            .multi_get_cf(keys.iter().map(|k| (h, *k)))
            .into_iter()
            .map(|r| r.map_err(rocks_err))
            .collect()
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), MetaError> {
        let mut wb = rocksdb::WriteBatch::default();
        for (cf, k, v) in &batch.ops {
            let h = self.cf(*cf)?;
            match v {
                Some(v) => wb.put_cf(h, k, v),
                None => wb.delete_cf(h, k),
            }
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(rocks_err)
    }

    fn scan(
        &self,
        cf: Cf,
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), MetaError> {
        // Scans walk whole tables: read ahead, and keep them out of the block cache that point
        // lookups depend on.
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_readahead_size(4 << 20);
        ro.fill_cache(false);
        let it = self.db.iterator_cf_opt(
            self.cf(cf)?,
            ro,
            rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(rocks_err)?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn checkpoint(&self, dir: &Path) -> Result<(), MetaError> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(rocks_err)?;
        cp.create_checkpoint(dir).map_err(rocks_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine contract, run against every engine.
    fn conformance(e: &dyn KvEngine) {
        assert_eq!(e.get(Cf::Blocks, b"a").unwrap(), None);
        let mut b = WriteBatch::default();
        b.put(Cf::Blocks, b"a".to_vec(), b"1".to_vec());
        b.put(Cf::Blocks, b"c".to_vec(), b"3".to_vec());
        b.put(Cf::Volumes, b"b".to_vec(), b"2".to_vec());
        e.write(b, true).unwrap();
        assert_eq!(e.get(Cf::Blocks, b"a").unwrap(), Some(b"1".to_vec()));
        // Tables are separate keyspaces.
        assert_eq!(e.get(Cf::Blocks, b"b").unwrap(), None);
        assert_eq!(
            e.multi_get(Cf::Blocks, &[b"c", b"x", b"a"]).unwrap(),
            vec![Some(b"3".to_vec()), None, Some(b"1".to_vec())]
        );
        let mut seen = Vec::new();
        e.scan(Cf::Blocks, b"b", &mut |k, v| {
            seen.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
        assert_eq!(seen, vec![(b"c".to_vec(), b"3".to_vec())]);
        let mut b = WriteBatch::default();
        b.delete(Cf::Blocks, b"a".to_vec());
        e.write(b, false).unwrap();
        assert_eq!(e.get(Cf::Blocks, b"a").unwrap(), None);
        let mut n = 0;
        e.scan(Cf::Volumes, b"", &mut |_, _| {
            n += 1;
            true
        })
        .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn mem_engine_conforms() {
        conformance(&MemEngine::new());
    }

    #[test]
    fn rocks_engine_conforms_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = RocksEngine::open(dir.path()).unwrap();
            conformance(&e);
        }
        let e = RocksEngine::open(dir.path()).unwrap();
        assert_eq!(e.get(Cf::Blocks, b"c").unwrap(), Some(b"3".to_vec()));
        let cp = dir.path().join("checkpoint");
        e.checkpoint(&cp).unwrap();
        let copy = RocksEngine::open(&cp).unwrap();
        assert_eq!(copy.get(Cf::Volumes, b"b").unwrap(), Some(b"2".to_vec()));
    }
}
