//! Values stored in the metadata tier: a format version byte, then a protobuf message, so that fields can
//! be added without rewriting old rows.

use std::collections::HashMap;

use prost::Message;

use crate::MetaError;

/// Version byte in front of every stored value.
pub const VALUE_VERSION: u8 = 1;

pub fn encode<M: Message>(m: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + m.encoded_len());
    out.push(VALUE_VERSION);
    m.encode(&mut out).expect("Vec grows as needed");
    out
}

pub fn decode<M: Message + Default>(table: &str, b: &[u8]) -> Result<M, MetaError> {
    match b.first() {
        Some(&VALUE_VERSION) => M::decode(&b[1..]).map_err(|e| MetaError::Corrupt {
            table: table.to_string(),
            problem: e.to_string(),
        }),
        Some(v) => Err(MetaError::Corrupt {
            table: table.to_string(),
            problem: format!("unknown value version {v}"),
        }),
        None => Err(MetaError::Corrupt {
            table: table.to_string(),
            problem: "empty value".into(),
        }),
    }
}

pub const BLOCK_LIVE: u32 = 0;
pub const BLOCK_DELETED: u32 = 1;

#[derive(Clone, PartialEq, Message)]
pub struct BlockRow {
    #[prost(uint64, tag = "1")]
    pub volume: u64,
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    #[prost(uint32, tag = "3")]
    pub frag_len: u32,
    #[prost(uint32, tag = "4")]
    pub block_len: u32,
    #[prost(uint32, repeated, tag = "5")]
    pub crcs: Vec<u32>,
    #[prost(uint64, tag = "6")]
    pub created_unix_ms: u64,
    #[prost(uint32, tag = "7")]
    pub state: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct MemberRow {
    #[prost(string, tag = "1")]
    pub disk_id: String,
    #[prost(uint64, tag = "2")]
    pub generation: u64,
    /// "ok" or "lost".
    #[prost(string, tag = "3")]
    pub state: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct VolumeRow {
    #[prost(uint32, tag = "1")]
    pub k: u32,
    #[prost(uint32, tag = "2")]
    pub m: u32,
    /// "creating", "open", "sealed", "degraded", "lost", "retired".
    #[prost(string, tag = "3")]
    pub state: String,
    #[prost(message, repeated, tag = "4")]
    pub members: Vec<MemberRow>,
    #[prost(uint64, tag = "5")]
    pub capacity: u64,
    #[prost(uint64, tag = "6")]
    pub blocks: u64,
    #[prost(uint64, tag = "7")]
    pub bytes: u64,
    #[prost(string, tag = "8")]
    pub lease_holder: String,
    #[prost(uint64, tag = "9")]
    pub lease_epoch: u64,
    #[prost(uint64, tag = "10")]
    pub lease_expires_unix_ms: u64,
    #[prost(string, tag = "11")]
    pub seal_reason: String,
    #[prost(uint64, tag = "12")]
    pub created_unix_ms: u64,
    /// When the volume first fell below full redundancy; 0 while it is whole.
    #[prost(uint64, tag = "13")]
    pub degraded_since_unix_ms: u64,
    /// The last generation handed out for any member of this volume; every rebuild takes a new one.
    #[prost(uint64, tag = "14")]
    pub generation_seq: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct RepairOutputRow {
    #[prost(uint32, tag = "1")]
    pub member: u32,
    #[prost(uint64, tag = "2")]
    pub generation: u64,
    #[prost(string, tag = "3")]
    pub disk_id: String,
}

/// A planned or running rebuild of a volume's lost members (table `repair`, key: volume id).
#[derive(Clone, PartialEq, Message)]
pub struct RepairRow {
    #[prost(message, repeated, tag = "1")]
    pub outputs: Vec<RepairOutputRow>,
    #[prost(uint32, repeated, tag = "2")]
    pub sources: Vec<u32>,
    #[prost(uint64, tag = "3")]
    pub started_unix_ms: u64,
    #[prost(string, tag = "4")]
    pub session: String,
    #[prost(uint64, tag = "5")]
    pub done_bytes: u64,
    #[prost(uint64, tag = "6")]
    pub total_bytes: u64,
}

/// A corrupt fragment queued for range repair (table `repair`, key `r` + volume + member + offset).
#[derive(Clone, PartialEq, Message)]
pub struct RangeRow {
    #[prost(bytes = "vec", tag = "1")]
    pub hash: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub reported_unix_ms: u64,
}

/// A member move (table `repair`, key `m` + id).
#[derive(Clone, PartialEq, Message)]
pub struct MoveRow {
    #[prost(uint64, tag = "1")]
    pub volume: u64,
    #[prost(uint32, tag = "2")]
    pub member: u32,
    #[prost(string, tag = "3")]
    pub from_disk: String,
    #[prost(string, tag = "4")]
    pub to_disk: String,
    #[prost(uint64, tag = "5")]
    pub bytes: u64,
    /// "pending", "running", "done", "failed", "dropped".
    #[prost(string, tag = "6")]
    pub state: String,
    /// "rebalance" or "drain".
    #[prost(string, tag = "7")]
    pub reason: String,
    /// The moved member's new generation, once started.
    #[prost(uint64, tag = "8")]
    pub generation: u64,
    #[prost(string, tag = "9")]
    pub session: String,
    #[prost(uint64, tag = "10")]
    pub done_bytes: u64,
    #[prost(string, tag = "11")]
    pub error: String,
    #[prost(uint64, tag = "12")]
    pub created_unix_ms: u64,
    #[prost(uint32, tag = "13")]
    pub attempts: u32,
}

/// The rebalance job (table `config`, key `rebalance`).
#[derive(Clone, PartialEq, Message)]
pub struct RebalanceRow {
    #[prost(bool, tag = "1")]
    pub paused: bool,
    /// "idle", "running", "done", "cancelled".
    #[prost(string, tag = "2")]
    pub state: String,
    #[prost(double, tag = "3")]
    pub tolerance_pct: f64,
    #[prost(uint64, tag = "4")]
    pub started_unix_ms: u64,
}

/// The live repair knobs (table `config`, key `repair_knobs`).
#[derive(Clone, PartialEq, Message)]
pub struct KnobsRow {
    #[prost(bool, tag = "1")]
    pub paused: bool,
    #[prost(uint64, tag = "2")]
    pub bytes_per_sec: u64,
    #[prost(uint32, tag = "3")]
    pub concurrency: u32,
}

/// The scrub knobs (table `config`, key `scrub_knobs`).
#[derive(Clone, PartialEq, Message)]
pub struct ScrubKnobsRow {
    #[prost(bool, tag = "1")]
    pub paused: bool,
    #[prost(uint64, tag = "2")]
    pub bytes_per_sec: u64,
    #[prost(uint64, tag = "3")]
    pub interval_secs: u64,
    #[prost(uint64, tag = "4")]
    pub start_requested_unix_ms: u64,
}

/// Lifetime repair counters (table `config`, key `repair_counters`).
#[derive(Clone, PartialEq, Message)]
pub struct RepairCountersRow {
    #[prost(uint64, tag = "1")]
    pub bytes_rebuilt: u64,
    #[prost(uint64, tag = "2")]
    pub volumes_repaired: u64,
    #[prost(uint64, tag = "3")]
    pub ranges_repaired: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct DiskRow {
    #[prost(string, tag = "1")]
    pub node_id: String,
    #[prost(string, tag = "2")]
    pub path: String,
    /// "ok", or "failed: ..." as reported by the volume server.
    #[prost(string, tag = "3")]
    pub state: String,
    #[prost(uint64, tag = "4")]
    pub capacity_bytes: u64,
    #[prost(uint64, tag = "5")]
    pub used_bytes: u64,
    #[prost(uint64, tag = "6")]
    pub free_bytes: u64,
    #[prost(uint32, tag = "7")]
    pub extents: u32,
    /// Why new members must not land here although the disk is healthy (labelled for another
    /// cluster, or holding extents of volumes this metadata tier does not know); empty when usable.
    #[prost(string, tag = "8")]
    pub hold: String,
    /// An operator declared the disk's unknown contents abandoned: it may take new members.
    #[prost(bool, tag = "9")]
    pub declared_empty: bool,
    /// The cluster id in the disk's label.
    #[prost(string, tag = "10")]
    pub cluster_id: String,
    /// An operator is draining the disk: no new members, and its members move away.
    #[prost(bool, tag = "11")]
    pub draining: bool,
    /// Bytes of retired extents in the disk's trash.
    #[prost(uint64, tag = "12")]
    pub trash_bytes: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeRow {
    #[prost(string, tag = "1")]
    pub address: String,
    #[prost(map = "string, string", tag = "2")]
    pub labels: HashMap<String, String>,
    #[prost(uint64, tag = "3")]
    pub last_heartbeat_unix_ms: u64,
    #[prost(uint64, tag = "4")]
    pub interval_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_a_version() {
        let row = BlockRow {
            volume: 3,
            offset: 64,
            frag_len: 64,
            block_len: 10,
            crcs: vec![1, 2, 3],
            created_unix_ms: 5,
            state: BLOCK_LIVE,
        };
        let b = encode(&row);
        assert_eq!(b[0], VALUE_VERSION);
        assert_eq!(decode::<BlockRow>("blocks", &b).unwrap(), row);
        let mut future = b.clone();
        future[0] = 9;
        assert!(decode::<BlockRow>("blocks", &future).is_err());
        assert!(decode::<BlockRow>("blocks", &[]).is_err());
    }
}
