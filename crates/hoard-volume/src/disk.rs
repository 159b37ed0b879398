//! A disk: one directory owned by one volume server, recognised by the label file at its root.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::VolumeError;
use crate::format::{read_checked_toml, write_checked_toml};

pub const LABEL_FILE: &str = "hoard-disk.toml";
pub const EXTENTS_DIR: &str = "extents";
pub const STAGING_DIR: &str = "staging";
pub const TRASH_DIR: &str = "trash";

/// `hoard-disk.toml`: who this disk is. A wiped disk has no label and comes back as a new disk.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskLabel {
    pub format: u32,
    pub disk_id: String,
    /// Empty until the disk's server first reached meta.
    pub cluster_id: String,
    pub node_id: String,
    pub created_unix_ms: u64,
}

#[derive(Debug)]
pub struct Disk {
    pub id: String,
    pub path: PathBuf,
    label: Mutex<DiskLabel>,
    failed: Mutex<Option<String>>,
    /// Capacity from config; the filesystem's size when absent.
    capacity: Option<u64>,
    /// How long its synced writes take ([`crate::slow`]).
    pub latency: crate::slow::DiskLatency,
}

/// Space figures of a filesystem, from statvfs.
pub fn fs_space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

impl Disk {
    /// Opens (or labels, when new) the disk at `path`, checking that it is a writable directory.
    pub fn open(path: &Path, node_id: &str, capacity: Option<u64>) -> Result<Disk, VolumeError> {
        let fail = |what: String| VolumeError::Disk(path.display().to_string(), what);
        fs::create_dir_all(path).map_err(|e| fail(format!("cannot create directory: {e}")))?;
        if !path.is_dir() {
            return Err(fail("not a directory".into()));
        }
        // Prove the directory takes durable writes before trusting it with data.
        let probe = path.join(".hoard-write-probe");
        let res = fs::File::create(&probe)
            .and_then(|mut f| f.write_all(b"probe").and_then(|_| f.sync_all()))
            .and_then(|_| fs::remove_file(&probe));
        if let Err(e) = res {
            return Err(fail(format!("not writable: {e}")));
        }
        for d in [EXTENTS_DIR, STAGING_DIR, TRASH_DIR] {
            fs::create_dir_all(path.join(d))
                .map_err(|e| fail(format!("cannot create {d}/: {e}")))?;
        }
        let label_path = path.join(LABEL_FILE);
        let label = if label_path.exists() {
            let label: DiskLabel = read_checked_toml(&label_path)?;
            if label.node_id != node_id {
                tracing::info!(
                    disk = %label.disk_id,
                    from = %label.node_id,
                    to = node_id,
                    "disk moved to this node"
                );
            }
            label
        } else {
            let label = DiskLabel {
                format: 1,
                disk_id: hoard_types::random_id("disk"),
                cluster_id: String::new(),
                node_id: node_id.to_string(),
                created_unix_ms: hoard_types::now_ms(),
            };
            write_checked_toml(&label_path, &label)?;
            label
        };
        Ok(Disk {
            id: label.disk_id.clone(),
            path: path.to_path_buf(),
            label: Mutex::new(label),
            failed: Mutex::new(None),
            capacity,
            latency: Default::default(),
        })
    }

    pub fn extents_dir(&self) -> PathBuf {
        self.path.join(EXTENTS_DIR)
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.path.join(STAGING_DIR)
    }

    pub fn label(&self) -> DiskLabel {
        self.label.lock().clone()
    }

    /// Records the cluster this disk belongs to, if it has none yet. A disk labelled for another
    /// cluster keeps its label: meta sees the mismatch in the heartbeat and keeps new data off it (its
    /// metadata may have been lost and be rebuilt from these very disks).
    pub fn adopt_cluster(&self, cluster_id: &str) -> Result<(), VolumeError> {
        let mut label = self.label.lock();
        if label.cluster_id == cluster_id || !label.cluster_id.is_empty() {
            return Ok(());
        }
        let mut next = label.clone();
        next.cluster_id = cluster_id.to_string();
        write_checked_toml(&self.path.join(LABEL_FILE), &next)?;
        *label = next;
        Ok(())
    }

    /// Overwrites the label's cluster id (an operator declared the disk's old contents abandoned).
    pub fn relabel_cluster(&self, cluster_id: &str) -> Result<(), VolumeError> {
        let mut label = self.label.lock();
        if label.cluster_id == cluster_id {
            return Ok(());
        }
        tracing::warn!(disk = %self.id, from = %label.cluster_id, to = cluster_id, "disk relabelled for this cluster");
        let mut next = label.clone();
        next.cluster_id = cluster_id.to_string();
        write_checked_toml(&self.path.join(LABEL_FILE), &next)?;
        *label = next;
        Ok(())
    }

    pub fn failure(&self) -> Option<String> {
        self.failed.lock().clone()
    }

    pub fn set_failed(&self, why: String) {
        tracing::error!(disk = %self.id, path = %self.path.display(), "disk failed: {why}");
        *self.failed.lock() = Some(why);
    }

    /// (capacity, filesystem free bytes).
    pub fn space(&self) -> (u64, u64) {
        let (total, avail) = fs_space(&self.path).unwrap_or((0, 0));
        (self.capacity.unwrap_or(total), avail)
    }
}
