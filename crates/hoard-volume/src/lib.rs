//! The volume server: disks, extents (`.dat` + `.idx`), and the internal `Volume` gRPC service.

mod aligned;
pub mod disk;
pub mod extent;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod heartbeat;
pub mod idx;
pub mod raw;
pub mod rebuild;
pub mod scrub;
pub mod service;
pub mod slow;
mod space;
pub mod staged;
pub mod store;
pub mod trash;
pub mod wire;

use std::path::{Path, PathBuf};

use hoard_types::{MemberIndex, VolumeId};

pub use service::VolumeService;
pub use store::{VolumeStore, VolumeStoreConfig};

/// Errors of the volume server. Each says whether the caller can hope for a different answer by retrying
/// elsewhere (see [`VolumeError::to_status`]).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Format { path: PathBuf, problem: String },
    #[error("disk {0}: {1}")]
    Disk(String, String),
    #[error("no disk {0} on this server")]
    UnknownDisk(String),
    #[error("no extent for volume {volume} member {member} on this server")]
    NoExtent {
        volume: VolumeId,
        member: MemberIndex,
    },
    #[error("extent {volume}/{member} already exists with other parameters")]
    ExtentConflict {
        volume: VolumeId,
        member: MemberIndex,
    },
    #[error("extent {volume}/{member} has generation {have}, asked for {asked}")]
    StaleGeneration {
        volume: VolumeId,
        member: MemberIndex,
        have: u64,
        asked: u64,
    },
    #[error("extent {volume}/{member} is fenced at epoch {have}; request carried epoch {asked}")]
    Fenced {
        volume: VolumeId,
        member: MemberIndex,
        have: u64,
        asked: u64,
    },
    #[error("extent {volume}/{member} has failed: {reason}")]
    ExtentFailed {
        volume: VolumeId,
        member: MemberIndex,
        reason: String,
    },
    #[error("extent {volume}/{member} at offset {offset}: {problem}")]
    Corrupt {
        volume: VolumeId,
        member: MemberIndex,
        offset: u64,
        problem: String,
    },
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A range the extent cannot serve: past what was written, or past its capacity.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// The filesystem has no room for the write; nothing is wrong with the disk itself.
    #[error("extent {volume}/{member}: the disk is full: {reason}")]
    DiskFull {
        volume: VolumeId,
        member: MemberIndex,
        reason: String,
    },
    #[error("internal: {0}")]
    Internal(String),
}

impl VolumeError {
    /// A write the filesystem had no room for, counted (`hoard_volume_disk_full_total`, the alert's
    /// series).
    pub fn disk_full(volume: VolumeId, member: MemberIndex, reason: String) -> Self {
        metrics::counter!("hoard_volume_disk_full_total").increment(1);
        VolumeError::DiskFull {
            volume,
            member,
            reason,
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        VolumeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The one mapping from volume-server errors to gRPC statuses.
    /// The member cannot serve the request now (its extent or disk failed), as opposed to a request that
    /// is wrong or late.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            VolumeError::ExtentFailed { .. } | VolumeError::Disk(..)
        )
    }

    pub fn to_status(&self) -> tonic::Status {
        use tonic::Status;
        let msg = self.to_string();
        match self {
            VolumeError::NoExtent { .. } | VolumeError::UnknownDisk(_) => Status::not_found(msg),
            VolumeError::ExtentConflict { .. } => Status::already_exists(msg),
            VolumeError::StaleGeneration { .. } | VolumeError::Fenced { .. } => {
                Status::failed_precondition(msg)
            }
            VolumeError::Corrupt { .. } => Status::data_loss(msg),
            VolumeError::BadRequest(_) => Status::invalid_argument(msg),
            VolumeError::OutOfRange(_) => Status::out_of_range(msg),
            VolumeError::DiskFull { .. } => Status::resource_exhausted(msg),
            VolumeError::ExtentFailed { .. } | VolumeError::Disk(..) => Status::unavailable(msg),
            VolumeError::Io { .. } | VolumeError::Format { .. } | VolumeError::Internal(_) => {
                Status::internal(msg)
            }
        }
    }
}

impl From<VolumeError> for tonic::Status {
    fn from(e: VolumeError) -> Self {
        e.to_status()
    }
}
