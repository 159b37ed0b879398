//! The metadata tier and cell coordinator: block index, volumes, disks, nodes, leases and placement, over
//! a key-value engine (RocksDB in production; in memory for tests). This is the only crate that sees
//! RocksDB.

pub mod blocks;
pub mod clock;
pub mod compaction;
mod core;
pub mod engine;
pub mod health;
pub mod index_ops;
pub mod moves;
pub mod nodes;
pub mod placement;
pub mod rebuild_index;
pub mod repair;
pub mod repair_lease;
mod room;
pub mod rows;
pub mod schema;
pub mod scrub;
pub mod service;
pub mod state;
pub mod trash;
pub mod verify;
mod views;
pub mod volume_ops;
pub mod volumes;

#[cfg(test)]
mod delete_model;
#[cfg(test)]
mod testutil;

pub use engine::{Cf, KvEngine, MemEngine, RocksEngine};
pub use service::MetaService;
pub use state::{MetaConfig, MetaState};

use hoard_types::VolumeId;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata engine: {0}")]
    Engine(String),
    #[error("corrupt row in {table}: {problem}")]
    Corrupt { table: String, problem: String },
    #[error("no volume {0}")]
    NoVolume(VolumeId),
    /// Something a request names does not exist (a disk, a node, a move).
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Placement(#[from] placement::PlacementError),
    #[error("could not create volume: {0}")]
    CreateFailed(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0}")]
    Full(String),
    #[error("metadata tier is shutting down")]
    ShuttingDown,
    /// The request conflicts with what meta knows (e.g. a heartbeat that would take a live node's name).
    #[error("{0}")]
    Conflict(String),
}

impl MetaError {
    /// The one mapping from meta errors to gRPC statuses.
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Status;
        let msg = self.to_string();
        match self {
            MetaError::NoVolume(_) | MetaError::NotFound(_) => Status::not_found(msg),
            MetaError::Invalid(_) => Status::invalid_argument(msg),
            MetaError::Conflict(_) => Status::failed_precondition(msg),
            MetaError::Full(_) => Status::resource_exhausted(msg),
            MetaError::Placement(_) | MetaError::CreateFailed(_) | MetaError::ShuttingDown => {
                Status::unavailable(msg)
            }
            MetaError::Engine(_) | MetaError::Corrupt { .. } => Status::internal(msg),
        }
    }
}

impl From<MetaError> for tonic::Status {
    fn from(e: MetaError) -> Self {
        e.to_status()
    }
}
