//! Conversions between the volume server's domain types and its wire messages. Everything that arrives
//! is validated here, once, on its way into a domain type; everything that leaves is built here.

use bytes::Bytes;
use hoard_proto::v1;
use hoard_types::{BlockHash, ExtentId, Geometry, MemberIndex};

use crate::VolumeError;
use crate::disk::Disk;
use crate::extent::Extent;
use crate::format::BlockRecord;
use crate::store::DiskReport;

/// The extent a request names; `INVALID_ARGUMENT` when it names none.
pub fn extent_id(r: Option<&v1::ExtentRef>) -> Result<ExtentId, VolumeError> {
    hoard_proto::convert::extent_id(r).map_err(|e| VolumeError::BadRequest(e.to_string()))
}

/// A block record from the wire, checked as a record read from disk is.
pub fn record_from_wire(r: &v1::BlockRecord) -> Result<BlockRecord, VolumeError> {
    let hash = BlockHash::from_slice(&r.hash)
        .map_err(|e| VolumeError::BadRequest(format!("record: {e}")))?;
    BlockRecord::checked(hash, r.offset, r.frag_len, r.block_len, r.crcs.clone())
        .map_err(|e| VolumeError::BadRequest(format!("record of block {}: {e}", hash.short())))
}

pub fn record_to_wire(r: &BlockRecord) -> v1::BlockRecord {
    v1::BlockRecord {
        hash: Bytes::copy_from_slice(r.hash.as_bytes()),
        offset: r.offset,
        frag_len: r.frag_len,
        block_len: r.block_len,
        crcs: r.crcs.clone(),
    }
}

/// The geometry and capacity of an extent a request asks to create, and that the member fits them.
pub fn extent_shape(
    member: MemberIndex,
    k: u32,
    m: u32,
    capacity: u64,
) -> Result<Geometry, VolumeError> {
    crate::format::member_shape(member, k, m, capacity).map_err(VolumeError::BadRequest)
}

pub fn extent_info(e: &Extent, d: &Disk) -> v1::ExtentInfo {
    let mf = e.member_file();
    v1::ExtentInfo {
        extent: Some(
            ExtentId {
                volume: e.volume,
                member: e.member,
                generation: mf.generation,
            }
            .into(),
        ),
        disk_id: d.id.clone(),
        data_len: e.data_len(),
        k: mf.k,
        m: mf.m,
        epoch: mf.epoch,
        capacity: mf.capacity,
        records: e.records(),
    }
}

pub fn disk_info(d: &DiskReport) -> v1::DiskInfo {
    v1::DiskInfo {
        disk_id: d.disk_id.clone(),
        path: d.path.clone(),
        capacity_bytes: d.capacity_bytes,
        used_bytes: d.used_bytes,
        free_bytes: d.free_bytes,
        state: d.health.to_string(),
        extents: d.extents,
        cluster_id: d.cluster_id.clone(),
        scrub: None,
        trash_bytes: d.trash_bytes,
        slow: d.slow,
        sync_ms: d.sync_ms,
    }
}
