//! The disks and extents of one volume server.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use hoard_types::{MemberIndex, VolumeId};
use parking_lot::RwLock;

use crate::VolumeError;
use crate::disk::Disk;
use crate::extent::{Extent, MemberFile};

#[derive(Clone, Debug)]
pub struct VolumeStoreConfig {
    pub node_id: String,
    pub disks: Vec<PathBuf>,
    /// Capacity to report per disk; the filesystem's size when absent.
    pub disk_capacity: Option<u64>,
}

/// Space and contents of one disk, as reported to meta.
#[derive(Clone, Debug)]
pub struct DiskReport {
    pub disk_id: String,
    pub path: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub state: String,
    pub extents: u32,
}

/// Every extent this server holds, by (volume, member), with the disk it lives on.
type ExtentMap = HashMap<(VolumeId, MemberIndex), (Arc<Extent>, Arc<Disk>)>;

pub struct VolumeStore {
    pub node_id: String,
    disks: Vec<Arc<Disk>>,
    extents: RwLock<ExtentMap>,
}

impl VolumeStore {
    /// Opens every disk and every extent on them. Fails when a disk cannot be used at all (the process
    /// should not start); an extent that cannot be opened is logged and left for repair.
    pub fn open(cfg: &VolumeStoreConfig) -> Result<VolumeStore, VolumeError> {
        let mut disks = Vec::new();
        let mut extents = HashMap::new();
        for path in &cfg.disks {
            let disk = Arc::new(Disk::open(path, &cfg.node_id, cfg.disk_capacity)?);
            if disks.iter().any(|d: &Arc<Disk>| d.id == disk.id) {
                return Err(VolumeError::Disk(
                    path.display().to_string(),
                    format!(
                        "has the same disk id {} as another configured disk",
                        disk.id
                    ),
                ));
            }
            // Half-created extents never became visible; drop them.
            let staging = disk.staging_dir();
            if let Ok(entries) = fs::read_dir(&staging) {
                for e in entries.flatten() {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
            let dir = disk.extents_dir();
            let entries = fs::read_dir(&dir).map_err(|e| VolumeError::io(&dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| VolumeError::io(&dir, e))?;
                let Some(volume) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<VolumeId>().ok())
                else {
                    continue;
                };
                match Extent::open(&entry.path()) {
                    Ok((extent, scan)) => {
                        tracing::debug!(
                            volume,
                            member = extent.member,
                            records = scan.records,
                            "opened extent"
                        );
                        extents.insert((volume, extent.member), (extent, Arc::clone(&disk)));
                    }
                    Err(e) => {
                        tracing::error!(volume, disk = %disk.id, "cannot open extent: {e}");
                    }
                }
            }
            disks.push(disk);
        }
        Ok(VolumeStore {
            node_id: cfg.node_id.clone(),
            disks,
            extents: RwLock::new(extents),
        })
    }

    pub fn disks(&self) -> &[Arc<Disk>] {
        &self.disks
    }

    pub fn extent(
        &self,
        volume: VolumeId,
        member: MemberIndex,
    ) -> Result<Arc<Extent>, VolumeError> {
        self.extents
            .read()
            .get(&(volume, member))
            .map(|(e, _)| Arc::clone(e))
            .ok_or(VolumeError::NoExtent { volume, member })
    }

    pub fn extents(&self) -> Vec<(Arc<Extent>, Arc<Disk>)> {
        self.extents.read().values().cloned().collect()
    }

    /// Creates an extent on `disk_id`. Idempotent: an identical extent that already exists is success.
    pub fn create_extent(&self, mf: MemberFile) -> Result<Arc<Extent>, VolumeError> {
        let disk = self
            .disks
            .iter()
            .find(|d| d.id == mf.disk_id)
            .cloned()
            .ok_or_else(|| VolumeError::UnknownDisk(mf.disk_id.clone()))?;
        if let Some(why) = disk.failure() {
            return Err(VolumeError::Disk(disk.path.display().to_string(), why));
        }
        if let Ok(existing) = self.extent(mf.volume, mf.member) {
            let have = existing.member_file();
            if have.disk_id == mf.disk_id
                && have.generation == mf.generation
                && have.k == mf.k
                && have.m == mf.m
            {
                return Ok(existing);
            }
            return Err(VolumeError::ExtentConflict {
                volume: mf.volume,
                member: mf.member,
            });
        }
        let final_dir = disk.extents_dir().join(mf.volume.to_string());
        if final_dir.exists() {
            // Another member of the same volume on this disk would break the failure model.
            return Err(VolumeError::ExtentConflict {
                volume: mf.volume,
                member: mf.member,
            });
        }
        let staging = disk
            .staging_dir()
            .join(format!("{}-{}-{}", mf.volume, mf.member, mf.generation));
        let (volume, member) = (mf.volume, mf.member);
        let extent = Extent::create(&staging, &final_dir, mf)?;
        self.extents
            .write()
            .insert((volume, member), (Arc::clone(&extent), disk));
        tracing::info!(volume, member, "created extent");
        Ok(extent)
    }

    /// Writes the cluster id into every disk's label, refusing disks of another cluster.
    pub fn adopt_cluster(&self, cluster_id: &str) {
        for d in &self.disks {
            if let Err(e) = d.adopt_cluster(cluster_id) {
                tracing::error!("{e}");
            }
        }
    }

    /// Space and contents of every disk.
    pub fn disk_reports(&self) -> Vec<DiskReport> {
        let extents = self.extents.read();
        self.disks
            .iter()
            .map(|d| {
                let mine: Vec<&Arc<Extent>> = extents
                    .values()
                    .filter(|(_, disk)| disk.id == d.id)
                    .map(|(e, _)| e)
                    .collect();
                let used: u64 = mine.iter().map(|e| e.disk_bytes()).sum();
                let (capacity, fs_free) = d.space();
                let failed = d.failure().or_else(|| {
                    mine.iter()
                        .find_map(|e| e.failure())
                        .map(|w| format!("extent: {w}"))
                });
                DiskReport {
                    disk_id: d.id.clone(),
                    path: d.path.display().to_string(),
                    capacity_bytes: capacity,
                    used_bytes: used,
                    free_bytes: capacity.saturating_sub(used).min(fs_free),
                    state: match failed {
                        Some(w) => format!("failed: {w}"),
                        None => "ok".into(),
                    },
                    extents: mine.len() as u32,
                }
            })
            .collect()
    }
}
