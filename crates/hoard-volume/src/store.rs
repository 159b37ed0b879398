//! The disks and extents of one volume server.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use hoard_types::state::DiskHealth;
use hoard_types::{MemberIndex, VolumeId};
use parking_lot::RwLock;

use crate::VolumeError;
use crate::disk::Disk;
use crate::extent::{Extent, MemberFile};
use crate::format::BlockRecord;
use crate::staged::StagedExtent;

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
    pub cluster_id: String,
    pub path: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub health: DiskHealth,
    pub extents: u32,
    /// Bytes of retired extents waiting in the trash.
    pub trash_bytes: u64,
    /// Its synced writes are slower than the server's `slow_disk` ([`crate::slow`]).
    pub slow: bool,
    /// The median of its recent latency probes, in milliseconds.
    pub sync_ms: u32,
}

/// Every extent this server holds, by (volume, member), with the disk it lives on.
type ExtentMap = HashMap<(VolumeId, MemberIndex), (Arc<Extent>, Arc<Disk>)>;

pub struct VolumeStore {
    pub node_id: String,
    disks: Vec<Arc<Disk>>,
    extents: RwLock<ExtentMap>,
    /// Extents being rebuilt here, by (volume, member, generation).
    staged: parking_lot::Mutex<HashMap<(VolumeId, MemberIndex, u64), Arc<StagedExtent>>>,
    /// When meta last answered a heartbeat (ms since the epoch; 0: never).
    pub meta_contact_unix_ms: std::sync::atomic::AtomicU64,
    /// The heartbeat interval, for judging how long meta may stay silent.
    pub heartbeat_ms: std::sync::atomic::AtomicU64,
    /// What meta's last heartbeat answer said of this server's trash.
    pub trash_word: parking_lot::Mutex<crate::trash::Word>,
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
            staged: Default::default(),
            meta_contact_unix_ms: Default::default(),
            heartbeat_ms: std::sync::atomic::AtomicU64::new(5000),
            trash_word: Default::default(),
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

    /// Waits out what the fault injector puts on writes to the disk holding `(volume, member)`
    /// ([`crate::slow`]); nothing unless fault injection is on.
    pub async fn injected_write_delay(&self, volume: VolumeId, member: MemberIndex) {
        if !crate::slow::injection_on() {
            return;
        }
        let delay = self
            .extents
            .read()
            .get(&(volume, member))
            .map_or(std::time::Duration::ZERO, |(_, d)| {
                d.latency.injected(&d.path)
            });
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
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

    fn disk(&self, disk_id: &str) -> Result<Arc<Disk>, VolumeError> {
        let disk = self
            .disks
            .iter()
            .find(|d| d.id == disk_id)
            .cloned()
            .ok_or_else(|| VolumeError::UnknownDisk(disk_id.to_string()))?;
        if let Some(why) = disk.failure() {
            return Err(VolumeError::Disk(disk.path.display().to_string(), why));
        }
        Ok(disk)
    }

    /// The staging extent for a member being rebuilt here, created on first use.
    pub fn stage(&self, mf: MemberFile) -> Result<Arc<StagedExtent>, VolumeError> {
        let key = (mf.volume, mf.member, mf.generation);
        if let Some(s) = self.staged.lock().get(&key) {
            return Ok(Arc::clone(s));
        }
        let disk = self.disk(&mf.disk_id)?;
        if self
            .extent(mf.volume, mf.member)
            .is_ok_and(|e| e.generation() >= mf.generation)
        {
            return Err(VolumeError::ExtentConflict {
                volume: mf.volume,
                member: mf.member,
            });
        }
        let dir = disk
            .staging_dir()
            .join(format!("{}-{}-{}", mf.volume, mf.member, mf.generation));
        let staged = Arc::new(StagedExtent::create(&dir, mf)?);
        let mut map = self.staged.lock();
        Ok(Arc::clone(map.entry(key).or_insert(staged)))
    }

    /// Puts a staged extent in service with `records`. Idempotent: an extent already in service under
    /// that generation is success.
    pub fn commit_staged(
        &self,
        volume: VolumeId,
        member: MemberIndex,
        generation: u64,
        records: &[BlockRecord],
    ) -> Result<Arc<Extent>, VolumeError> {
        if let Ok(e) = self.extent(volume, member)
            && e.generation() == generation
        {
            return Ok(e);
        }
        let staged = self
            .staged
            .lock()
            .get(&(volume, member, generation))
            .cloned()
            .ok_or(VolumeError::NoExtent { volume, member })?;
        // Records come from a peer: each must fit this extent, or the index it writes would not read
        // back as the same records.
        let g = hoard_types::Geometry {
            k: staged.mf.k,
            m: staged.mf.m,
        };
        if let Some(r) = records.iter().find(|r| {
            r.crcs.len() != g.width() as usize
                || r.end() > staged.mf.capacity
                || u64::from(r.frag_len) != g.frag_len(u64::from(r.block_len))
        }) {
            return Err(VolumeError::BadRequest(format!(
                "record of block {} at {} does not fit extent {volume}/{member} ({g}, capacity {})",
                r.hash.short(),
                r.offset,
                staged.mf.capacity
            )));
        }
        self.staged.lock().remove(&(volume, member, generation));
        let disk = self.disk(&staged.mf.disk_id)?;
        let final_dir = disk.extents_dir().join(volume.to_string());
        if final_dir.exists() {
            // A member of this volume in service here must never be replaced by another member.
            let in_service = self
                .extents
                .read()
                .values()
                .any(|(e, _)| e.dir == final_dir && e.member != member);
            if in_service {
                return Err(VolumeError::ExtentConflict { volume, member });
            }
            // An older copy of this member, or a stale leftover: out of service for good.
            self.trash(&disk, &final_dir, volume)?;
        }
        let extent = staged.finish(records, &final_dir)?;
        // Any older generation of this member elsewhere on this server is out of service too.
        let old = self
            .extents
            .write()
            .insert((volume, member), (Arc::clone(&extent), Arc::clone(&disk)));
        if let Some((old, old_disk)) = old
            && old.dir != extent.dir
        {
            let _ = self.trash(&old_disk, &old.dir.clone(), volume);
        }
        tracing::info!(volume, member, generation, "rebuilt extent in service");
        Ok(extent)
    }

    /// Drops a staging extent.
    pub fn drop_staged(&self, volume: VolumeId, member: MemberIndex, generation: u64) {
        if let Some(s) = self.staged.lock().remove(&(volume, member, generation)) {
            let _ = std::fs::remove_dir_all(&s.dir);
        }
    }

    /// Takes an extent that a newer generation replaced out of service, into the trash.
    pub fn retire(&self, volume: VolumeId, member: MemberIndex, generation: u64) {
        let Ok(e) = self.extent(volume, member) else {
            return;
        };
        if e.generation() != generation {
            return;
        }
        let disk = self
            .extents
            .read()
            .get(&(volume, member))
            .map(|(_, d)| Arc::clone(d));
        if let Some(disk) = disk
            && let Err(err) = self.trash(&disk, &e.dir.clone(), volume)
        {
            tracing::warn!(volume, member, "could not retire extent: {err}");
        }
    }

    /// Moves an extent directory to the disk's trash, named for the extent it held (see
    /// [`crate::trash`]); it is unlinked only once meta cleared it.
    fn trash(
        &self,
        disk: &Disk,
        dir: &std::path::Path,
        volume: VolumeId,
    ) -> Result<(), VolumeError> {
        {
            let mut map = self.extents.write();
            map.retain(|_, (e, _)| e.dir != dir);
        }
        let now = hoard_types::now_ms();
        let name = match crate::format::read_checked_toml::<crate::extent::MemberFile>(
            &dir.join("member.toml"),
        ) {
            Ok(mf) => crate::trash::entry_name(
                hoard_types::ExtentId {
                    volume: mf.volume,
                    member: mf.member,
                    generation: mf.generation,
                },
                now,
            ),
            // Meta never clears an entry that cannot tell which extent it held.
            Err(_) => format!("v{volume}-unknown-{now}"),
        };
        let dest = disk.path.join(crate::disk::TRASH_DIR).join(&name);
        std::fs::rename(dir, &dest).map_err(|e| VolumeError::io(dir, e))?;
        crate::format::sync_dir(&disk.path.join(crate::disk::TRASH_DIR))?;
        tracing::info!(volume, from = %dir.display(), entry = %name, "extent moved to trash");
        Ok(())
    }

    /// Checks that every disk still carries its label; a disk whose label vanished or changed was
    /// wiped or swapped under us, and everything on it is gone.
    pub fn check_disks(&self) {
        for d in &self.disks {
            if d.failure().is_some() {
                continue;
            }
            let label = d.path.join(crate::disk::LABEL_FILE);
            let why = match crate::format::read_checked_toml::<crate::disk::DiskLabel>(&label) {
                Ok(l) if l.disk_id == d.id => continue,
                Ok(l) => format!("label now names disk {}: disk replaced", l.disk_id),
                Err(e) => format!("label unreadable ({e}): disk wiped or replaced"),
            };
            d.set_failed(why);
            // Nothing on it can be trusted any more: take its extents out of service.
            self.extents.write().retain(|_, (_, disk)| disk.id != d.id);
        }
    }

    /// Disks that failed, or hold an extent that failed.
    pub fn failed_disks(&self) -> usize {
        let extents = self.extents.read();
        self.disks
            .iter()
            .filter(|d| {
                d.failure().is_some()
                    || extents
                        .values()
                        .any(|(e, disk)| disk.id == d.id && e.failure().is_some())
            })
            .count()
    }

    /// Writes the cluster id into every disk's label, refusing disks of another cluster.
    /// Labels unlabelled disks (and those meta names in `force`) with the cluster id.
    pub fn adopt_cluster(&self, cluster_id: &str, force: &[String]) {
        for d in &self.disks {
            let res = if force.contains(&d.id) {
                d.relabel_cluster(cluster_id)
            } else {
                d.adopt_cluster(cluster_id)
            };
            if let Err(e) = res {
                tracing::error!("{e}");
            }
        }
    }

    /// Whether this server can serve: a usable disk, and meta heard from within three heartbeats.
    pub fn ready(&self) -> Result<(), String> {
        let stale_ms = 3 * self.heartbeat_ms.load(std::sync::atomic::Ordering::Relaxed) + 2000;
        if self.disks.iter().all(|d| d.failure().is_some()) {
            return Err("no usable disk".into());
        }
        let last = self
            .meta_contact_unix_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if last == 0 {
            return Err("meta not reached yet".into());
        }
        let age = hoard_types::now_ms().saturating_sub(last);
        if age > stale_ms {
            return Err(format!("meta not reached for {} s", age / 1000));
        }
        Ok(())
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
                    cluster_id: d.label().cluster_id,
                    path: d.path.display().to_string(),
                    capacity_bytes: capacity,
                    used_bytes: used,
                    free_bytes: capacity.saturating_sub(used).min(fs_free),
                    health: match failed {
                        Some(w) => DiskHealth::Failed(w),
                        None => DiskHealth::Ok,
                    },
                    extents: mine.len() as u32,
                    trash_bytes: dir_bytes(&d.path.join(crate::disk::TRASH_DIR)),
                    slow: d.latency.slow(),
                    sync_ms: d
                        .latency
                        .typical()
                        .map_or(0, |t| t.as_millis().min(u32::MAX as u128) as u32),
                }
            })
            .collect()
    }
}

/// Bytes of the files under `dir` (allocated blocks, as they count against the disk).
pub(crate) fn dir_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}
