//! The rows of the metadata tier's tables, as the logic sees them: states are enums
//! ([`hoard_types::state`]), parsed when a row is read. How each row is stored (a version byte and a
//! protobuf message, with states as the strings they always were) is the schema module's business.

use std::collections::HashMap;

use hoard_types::state::{
    BlockState, DiskHealth, MemberState, MoveReason, MoveState, RebalanceState, VolumeState,
};
use prost::Message;

/// One block of the index (table `blocks`, key: the hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRow {
    pub volume: u64,
    pub offset: u64,
    pub frag_len: u32,
    pub block_len: u32,
    pub crcs: Vec<u32>,
    pub created_unix_ms: u64,
    pub state: BlockState,
    /// When a client was last told the block is present (a put, a dedup hit, `FindMissing`, `Touch`),
    /// on meta's clock, at most the refresh granularity behind: what a delete is checked against.
    pub asserted_unix_ms: u64,
    /// When it was deleted; 0 while live.
    pub deleted_unix_ms: u64,
}

/// One member of a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRow {
    pub disk_id: String,
    pub generation: u64,
    pub state: MemberState,
}

/// A volume (table `volumes`, key: the id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRow {
    pub k: u32,
    pub m: u32,
    pub state: VolumeState,
    pub members: Vec<MemberRow>,
    pub capacity: u64,
    /// Live blocks and their bytes.
    pub blocks: u64,
    pub bytes: u64,
    /// Deleted blocks whose rows still point here, and their bytes: what compaction can reclaim once
    /// their grace has passed.
    pub dead_blocks: u64,
    pub dead_bytes: u64,
    pub lease_holder: String,
    pub lease_epoch: u64,
    pub lease_expires_unix_ms: u64,
    pub seal_reason: String,
    pub created_unix_ms: u64,
    /// When the volume first fell below full redundancy; 0 while it is whole.
    pub degraded_since_unix_ms: u64,
    /// The last generation handed out for any member of this volume; every rebuild takes a new one.
    pub generation_seq: u64,
}

impl Default for VolumeRow {
    fn default() -> Self {
        VolumeRow {
            k: 0,
            m: 0,
            state: VolumeState::Creating,
            members: Vec::new(),
            capacity: 0,
            blocks: 0,
            bytes: 0,
            dead_blocks: 0,
            dead_bytes: 0,
            lease_holder: String::new(),
            lease_epoch: 0,
            lease_expires_unix_ms: 0,
            seal_reason: String::new(),
            created_unix_ms: 0,
            degraded_since_unix_ms: 0,
            generation_seq: 0,
        }
    }
}

impl VolumeRow {
    /// The indexes of its lost members.
    pub fn lost_members(&self) -> Vec<u32> {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.state == MemberState::Lost)
            .map(|(i, _)| i as u32)
            .collect()
    }
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveRow {
    pub volume: u64,
    pub member: u32,
    pub from_disk: String,
    pub to_disk: String,
    pub bytes: u64,
    pub state: MoveState,
    pub reason: MoveReason,
    /// The moved member's new generation, once started.
    pub generation: u64,
    pub session: String,
    pub done_bytes: u64,
    pub error: String,
    pub created_unix_ms: u64,
    pub attempts: u32,
}

/// The rebalance job (table `config`, key `rebalance`).
#[derive(Clone, Debug, PartialEq)]
pub struct RebalanceRow {
    pub paused: bool,
    pub state: RebalanceState,
    pub tolerance_pct: f64,
    pub started_unix_ms: u64,
}

impl Default for RebalanceRow {
    fn default() -> Self {
        RebalanceRow {
            paused: false,
            state: RebalanceState::Idle,
            tolerance_pct: 0.0,
            started_unix_ms: 0,
        }
    }
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

/// The compaction job: its live knobs, the donor being emptied and lifetime counters (table `config`,
/// key `compaction`).
#[derive(Clone, PartialEq, Message)]
pub struct CompactionRow {
    #[prost(bool, tag = "1")]
    pub paused: bool,
    /// Bytes per second of blocks moved; 0: unthrottled.
    #[prost(uint64, tag = "2")]
    pub bytes_per_sec: u64,
    /// Blocks moved at once.
    #[prost(uint32, tag = "3")]
    pub concurrency: u32,
    /// A sealed volume whose reclaimable share of its stored bytes reaches this is a donor.
    #[prost(double, tag = "4")]
    pub threshold: f64,
    /// The volume being emptied; 0: none.
    #[prost(uint64, tag = "5")]
    pub donor: u64,
    #[prost(uint64, tag = "6")]
    pub donor_started_unix_ms: u64,
    /// Bytes of the donor to move (live, and deleted within their grace) when it was picked, and moved.
    #[prost(uint64, tag = "7")]
    pub donor_total_bytes: u64,
    #[prost(uint64, tag = "8")]
    pub donor_moved_bytes: u64,
    #[prost(uint64, tag = "9")]
    pub moved_blocks: u64,
    #[prost(uint64, tag = "10")]
    pub moved_bytes: u64,
    /// Rows past their grace removed.
    #[prost(uint64, tag = "11")]
    pub dropped_blocks: u64,
    #[prost(uint64, tag = "12")]
    pub volumes_compacted: u64,
    /// Block bytes of the rows past their grace dropped: the dead bytes reclaimed.
    #[prost(uint64, tag = "13")]
    pub reclaimed_bytes: u64,
    /// Copies whose re-point found the row changed (re-put elsewhere, expired): garbage.
    #[prost(uint64, tag = "14")]
    pub stale_moves: u64,
    /// An operator asked for a planning round now.
    #[prost(bool, tag = "15")]
    pub requested: bool,
}

/// The trash ledger's summary (table `config`, key `trash`): whether unlinks are halted, the next
/// clearance id and lifetime counters.
#[derive(Clone, PartialEq, Message)]
pub struct TrashRow {
    /// Non-empty: every unlink in the cell is halted, and why (until an operator resumes).
    #[prost(string, tag = "1")]
    pub halted: String,
    #[prost(uint64, tag = "2")]
    pub halted_unix_ms: u64,
    /// The last clearance id handed out.
    #[prost(uint64, tag = "3")]
    pub last_clearance: u64,
    /// Cleared entries that vanished from their trash: unlinked as meant.
    #[prost(uint64, tag = "4")]
    pub unlinks: u64,
    /// Entries that vanished from a healthy disk's trash with no clearance.
    #[prost(uint64, tag = "5")]
    pub unlinks_without_clearance: u64,
    /// Inspections that found a row still pointing into a trashed extent.
    #[prost(uint64, tag = "6")]
    pub violations: u64,
    #[prost(uint64, tag = "7")]
    pub inspections: u64,
    #[prost(uint64, tag = "8")]
    pub last_inspection_unix_ms: u64,
}

/// A trashed extent a volume server reported (table `config`, key `trash/<disk>/<name>`).
#[derive(Clone, PartialEq, Message)]
pub struct TrashEntryRow {
    #[prost(string, tag = "1")]
    pub disk_id: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub node_id: String,
    /// False when the server could not tell which extent the entry holds: never cleared.
    #[prost(bool, tag = "4")]
    pub identified: bool,
    #[prost(uint64, tag = "5")]
    pub volume: u64,
    #[prost(uint32, tag = "6")]
    pub member: u32,
    #[prost(uint64, tag = "7")]
    pub generation: u64,
    #[prost(uint64, tag = "8")]
    pub trashed_unix_ms: u64,
    #[prost(uint64, tag = "9")]
    pub bytes: u64,
    /// 0: not cleared.
    #[prost(uint64, tag = "10")]
    pub clearance: u64,
    #[prost(uint64, tag = "11")]
    pub cleared_unix_ms: u64,
    /// Why the last inspection did not clear it.
    #[prost(string, tag = "12")]
    pub waiting: String,
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

/// An extent a volume server says it holds in service (memory only: the last heartbeat's word).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedExtent {
    pub id: hoard_types::ExtentId,
    pub disk_id: String,
    pub data_len: u64,
    pub k: u32,
    pub m: u32,
    pub epoch: u64,
    pub capacity: u64,
    pub records: u64,
}

/// A disk (table `disks`, key: the disk id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskRow {
    pub node_id: String,
    pub path: String,
    /// As the volume server reported it.
    pub health: DiskHealth,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub extents: u32,
    /// Why new members must not land here although the disk is healthy (labelled for another
    /// cluster, or holding extents of volumes this metadata tier does not know); empty when usable.
    pub hold: String,
    /// An operator declared the disk's unknown contents abandoned: it may take new members.
    pub declared_empty: bool,
    /// The cluster id in the disk's label.
    pub cluster_id: String,
    /// An operator is draining the disk: no new members, and its members move away.
    pub draining: bool,
    /// Bytes of retired extents in the disk's trash.
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
