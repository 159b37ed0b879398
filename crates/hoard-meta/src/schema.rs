//! How the metadata tier stores its rows: every table's keys, and every row's byte layout. This is the
//! one module that knows them; the rest of the crate reads and writes [`crate::rows`] through
//! [`encode`], [`decode`] and the key functions here.
//!
//! Values are a format version byte, then a protobuf message, so that fields can be added without
//! rewriting old rows. States are stored as the strings they have always been (`"open"`, `"lost"`,
//! `"pending"`) and parsed into [`hoard_types::state`] enums on the way in: a row holding a state this
//! build does not know is reported corrupt, by name, rather than misread. An empty string is the
//! protobuf default and reads as the state's first value.

use std::str::FromStr;

use hoard_types::VolumeId;
use hoard_types::state::{
    BlockState, DiskHealth, MemberState, MoveReason, MoveState, RebalanceState, StateError,
    VolumeState,
};
use prost::Message;

use crate::MetaError;
use crate::engine::{Cf, WriteBatch};
use crate::rows::{
    BlockRow, CompactionRow, DiskRow, KnobsRow, MemberRow, MoveRow, NodeRow, RangeRow,
    RebalanceRow, RepairCountersRow, RepairRow, ScrubKnobsRow, TrashEntryRow, TrashRow, VolumeRow,
};

/// Version byte in front of every stored value.
pub const VALUE_VERSION: u8 = 1;

/// Keys of the `config` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigKey {
    /// The cell's id (UTF-8).
    ClusterId,
    /// The next volume id to try (u64, big endian).
    NextVolume,
    /// The last move id handed out (u64, big endian).
    NextMove,
    /// [`KnobsRow`].
    RepairKnobs,
    /// [`RepairCountersRow`].
    RepairCounters,
    /// [`RebalanceRow`].
    Rebalance,
    /// [`ScrubKnobsRow`].
    ScrubKnobs,
    /// Meta's clock's high-water mark (u64 Unix ms, big endian): ahead of every time handed out.
    ClockMark,
    /// [`CompactionRow`].
    Compaction,
    /// [`TrashRow`]; its entries are under [`trash_entry_key`].
    Trash,
}

impl ConfigKey {
    pub fn bytes(self) -> &'static [u8] {
        match self {
            ConfigKey::ClusterId => b"cluster_id",
            ConfigKey::NextVolume => b"next_volume",
            ConfigKey::NextMove => b"next_move",
            ConfigKey::RepairKnobs => b"repair_knobs",
            ConfigKey::RepairCounters => b"repair_counters",
            ConfigKey::Rebalance => b"rebalance",
            ConfigKey::ScrubKnobs => b"scrub_knobs",
            ConfigKey::ClockMark => b"clock_mark",
            ConfigKey::Compaction => b"compaction",
            ConfigKey::Trash => b"trash",
        }
    }
}

/// Keys of the `repair` table: a member rebuild per volume, range repairs per fragment, moves by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepairKey {
    Rebuild(VolumeId),
    Range(VolumeId, u32, u64),
    Move(u64),
}

impl RepairKey {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            RepairKey::Rebuild(v) => [b"v".as_slice(), &v.to_be_bytes()].concat(),
            RepairKey::Range(v, m, o) => [
                b"r".as_slice(),
                &v.to_be_bytes(),
                &m.to_be_bytes(),
                &o.to_be_bytes(),
            ]
            .concat(),
            RepairKey::Move(id) => [b"m".as_slice(), &id.to_be_bytes()].concat(),
        }
    }

    pub fn parse(k: &[u8]) -> Option<RepairKey> {
        match (k.first()?, k.len()) {
            (b'v', 9) => Some(RepairKey::Rebuild(u64::from_be_bytes(
                k[1..9].try_into().ok()?,
            ))),
            (b'r', 21) => Some(RepairKey::Range(
                u64::from_be_bytes(k[1..9].try_into().ok()?),
                u32::from_be_bytes(k[9..13].try_into().ok()?),
                u64::from_be_bytes(k[13..21].try_into().ok()?),
            )),
            (b'm', 9) => Some(RepairKey::Move(u64::from_be_bytes(
                k[1..9].try_into().ok()?,
            ))),
            _ => None,
        }
    }
}

/// The key of a volume row.
pub fn volume_key(id: VolumeId) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

/// A volume id from its key.
pub fn parse_volume_key(k: &[u8]) -> Result<VolumeId, MetaError> {
    k.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt("volumes", "a key that is not a volume id"))
}

/// A row as stored: its table's name (for errors) and its bytes.
pub trait Row: Sized {
    const TABLE: &'static str;
    fn to_message(&self) -> Vec<u8>;
    fn from_message(b: &[u8]) -> Result<Self, MetaError>;
}

/// The stored bytes of a row: version byte, then the message.
pub fn encode<R: Row>(r: &R) -> Vec<u8> {
    let msg = r.to_message();
    let mut out = Vec::with_capacity(1 + msg.len());
    out.push(VALUE_VERSION);
    out.extend_from_slice(&msg);
    out
}

/// A row from its stored bytes; `table` names it in errors.
pub fn decode<R: Row>(b: &[u8]) -> Result<R, MetaError> {
    match b.first() {
        Some(&VALUE_VERSION) => R::from_message(&b[1..]),
        Some(v) => Err(corrupt(R::TABLE, &format!("unknown value version {v}"))),
        None => Err(corrupt(R::TABLE, "empty value")),
    }
}

fn corrupt(table: &str, problem: &str) -> MetaError {
    MetaError::Corrupt {
        table: table.to_string(),
        problem: problem.to_string(),
    }
}

fn message<M: Message + Default>(table: &str, b: &[u8]) -> Result<M, MetaError> {
    M::decode(b).map_err(|e| corrupt(table, &e.to_string()))
}

/// A stored state: the empty string (a default protobuf field) is `default`.
fn state<T: FromStr<Err = StateError>>(table: &str, s: &str, default: T) -> Result<T, MetaError> {
    if s.is_empty() {
        return Ok(default);
    }
    s.parse()
        .map_err(|e: StateError| corrupt(table, &e.to_string()))
}

/// Rows stored as their own protobuf message, with no state to parse.
macro_rules! plain_row {
    ($($row:ty => $table:literal),+ $(,)?) => {$(
        impl Row for $row {
            const TABLE: &'static str = $table;
            fn to_message(&self) -> Vec<u8> {
                self.encode_to_vec()
            }
            fn from_message(b: &[u8]) -> Result<Self, MetaError> {
                message(Self::TABLE, b)
            }
        }
    )+};
}

plain_row!(
    NodeRow => "nodes",
    RepairRow => "repair",
    RangeRow => "repair",
    KnobsRow => "config",
    ScrubKnobsRow => "config",
    RepairCountersRow => "config",
    CompactionRow => "config",
    TrashRow => "config",
    TrashEntryRow => "config",
);

/// Where the config table keeps trash entries: every key starts with it.
pub const TRASH_ENTRY_PREFIX: &[u8] = b"trash/";

/// The key of a trash entry: the prefix, the disk id, a NUL and the entry's name.
pub fn trash_entry_key(disk_id: &str, name: &str) -> Vec<u8> {
    [
        TRASH_ENTRY_PREFIX,
        disk_id.as_bytes(),
        b"\0",
        name.as_bytes(),
    ]
    .concat()
}

#[derive(Clone, PartialEq, Message)]
struct StoredBlock {
    #[prost(uint64, tag = "1")]
    volume: u64,
    #[prost(uint64, tag = "2")]
    offset: u64,
    #[prost(uint32, tag = "3")]
    frag_len: u32,
    #[prost(uint32, tag = "4")]
    block_len: u32,
    #[prost(uint32, repeated, tag = "5")]
    crcs: Vec<u32>,
    #[prost(uint64, tag = "6")]
    created_unix_ms: u64,
    /// 0 live, 1 deleted.
    #[prost(uint32, tag = "7")]
    state: u32,
    /// 0 in rows written before deletes existed: read as the creation time.
    #[prost(uint64, tag = "8")]
    asserted_unix_ms: u64,
    #[prost(uint64, tag = "9")]
    deleted_unix_ms: u64,
}

impl Row for BlockRow {
    const TABLE: &'static str = "blocks";

    fn to_message(&self) -> Vec<u8> {
        StoredBlock {
            volume: self.volume,
            offset: self.offset,
            frag_len: self.frag_len,
            block_len: self.block_len,
            crcs: self.crcs.clone(),
            created_unix_ms: self.created_unix_ms,
            state: match self.state {
                BlockState::Live => 0,
                BlockState::Deleted => 1,
            },
            asserted_unix_ms: self.asserted_unix_ms,
            deleted_unix_ms: self.deleted_unix_ms,
        }
        .encode_to_vec()
    }

    fn from_message(b: &[u8]) -> Result<Self, MetaError> {
        let r: StoredBlock = message(Self::TABLE, b)?;
        Ok(BlockRow {
            volume: r.volume,
            offset: r.offset,
            frag_len: r.frag_len,
            block_len: r.block_len,
            crcs: r.crcs,
            created_unix_ms: r.created_unix_ms,
            state: match r.state {
                0 => BlockState::Live,
                1 => BlockState::Deleted,
                n => return Err(corrupt(Self::TABLE, &format!("unknown block state {n}"))),
            },
            asserted_unix_ms: if r.asserted_unix_ms == 0 {
                r.created_unix_ms
            } else {
                r.asserted_unix_ms
            },
            deleted_unix_ms: r.deleted_unix_ms,
        })
    }
}

#[derive(Clone, PartialEq, Message)]
struct StoredMember {
    #[prost(string, tag = "1")]
    disk_id: String,
    #[prost(uint64, tag = "2")]
    generation: u64,
    #[prost(string, tag = "3")]
    state: String,
}

#[derive(Clone, PartialEq, Message)]
struct StoredVolume {
    #[prost(uint32, tag = "1")]
    k: u32,
    #[prost(uint32, tag = "2")]
    m: u32,
    #[prost(string, tag = "3")]
    state: String,
    #[prost(message, repeated, tag = "4")]
    members: Vec<StoredMember>,
    #[prost(uint64, tag = "5")]
    capacity: u64,
    #[prost(uint64, tag = "6")]
    blocks: u64,
    #[prost(uint64, tag = "7")]
    bytes: u64,
    #[prost(string, tag = "8")]
    lease_holder: String,
    #[prost(uint64, tag = "9")]
    lease_epoch: u64,
    #[prost(uint64, tag = "10")]
    lease_expires_unix_ms: u64,
    #[prost(string, tag = "11")]
    seal_reason: String,
    #[prost(uint64, tag = "12")]
    created_unix_ms: u64,
    #[prost(uint64, tag = "13")]
    degraded_since_unix_ms: u64,
    #[prost(uint64, tag = "14")]
    generation_seq: u64,
    #[prost(uint64, tag = "15")]
    dead_blocks: u64,
    #[prost(uint64, tag = "16")]
    dead_bytes: u64,
}

impl Row for VolumeRow {
    const TABLE: &'static str = "volumes";

    fn to_message(&self) -> Vec<u8> {
        StoredVolume {
            k: self.k,
            m: self.m,
            state: self.state.as_str().into(),
            members: self
                .members
                .iter()
                .map(|m| StoredMember {
                    disk_id: m.disk_id.clone(),
                    generation: m.generation,
                    state: m.state.as_str().into(),
                })
                .collect(),
            capacity: self.capacity,
            blocks: self.blocks,
            bytes: self.bytes,
            lease_holder: self.lease_holder.clone(),
            lease_epoch: self.lease_epoch,
            lease_expires_unix_ms: self.lease_expires_unix_ms,
            seal_reason: self.seal_reason.clone(),
            created_unix_ms: self.created_unix_ms,
            degraded_since_unix_ms: self.degraded_since_unix_ms,
            generation_seq: self.generation_seq,
            dead_blocks: self.dead_blocks,
            dead_bytes: self.dead_bytes,
        }
        .encode_to_vec()
    }

    fn from_message(b: &[u8]) -> Result<Self, MetaError> {
        let r: StoredVolume = message(Self::TABLE, b)?;
        let members = r
            .members
            .into_iter()
            .map(|m| {
                Ok(MemberRow {
                    disk_id: m.disk_id,
                    generation: m.generation,
                    state: state(Self::TABLE, &m.state, MemberState::Ok)?,
                })
            })
            .collect::<Result<_, MetaError>>()?;
        Ok(VolumeRow {
            k: r.k,
            m: r.m,
            state: state(Self::TABLE, &r.state, VolumeState::Creating)?,
            members,
            capacity: r.capacity,
            blocks: r.blocks,
            bytes: r.bytes,
            lease_holder: r.lease_holder,
            lease_epoch: r.lease_epoch,
            lease_expires_unix_ms: r.lease_expires_unix_ms,
            seal_reason: r.seal_reason,
            created_unix_ms: r.created_unix_ms,
            degraded_since_unix_ms: r.degraded_since_unix_ms,
            generation_seq: r.generation_seq,
            dead_blocks: r.dead_blocks,
            dead_bytes: r.dead_bytes,
        })
    }
}

#[derive(Clone, PartialEq, Message)]
struct StoredMove {
    #[prost(uint64, tag = "1")]
    volume: u64,
    #[prost(uint32, tag = "2")]
    member: u32,
    #[prost(string, tag = "3")]
    from_disk: String,
    #[prost(string, tag = "4")]
    to_disk: String,
    #[prost(uint64, tag = "5")]
    bytes: u64,
    #[prost(string, tag = "6")]
    state: String,
    #[prost(string, tag = "7")]
    reason: String,
    #[prost(uint64, tag = "8")]
    generation: u64,
    #[prost(string, tag = "9")]
    session: String,
    #[prost(uint64, tag = "10")]
    done_bytes: u64,
    #[prost(string, tag = "11")]
    error: String,
    #[prost(uint64, tag = "12")]
    created_unix_ms: u64,
    #[prost(uint32, tag = "13")]
    attempts: u32,
}

impl Row for MoveRow {
    const TABLE: &'static str = "repair";

    fn to_message(&self) -> Vec<u8> {
        StoredMove {
            volume: self.volume,
            member: self.member,
            from_disk: self.from_disk.clone(),
            to_disk: self.to_disk.clone(),
            bytes: self.bytes,
            state: self.state.as_str().into(),
            reason: self.reason.as_str().into(),
            generation: self.generation,
            session: self.session.clone(),
            done_bytes: self.done_bytes,
            error: self.error.clone(),
            created_unix_ms: self.created_unix_ms,
            attempts: self.attempts,
        }
        .encode_to_vec()
    }

    fn from_message(b: &[u8]) -> Result<Self, MetaError> {
        let r: StoredMove = message(Self::TABLE, b)?;
        Ok(MoveRow {
            volume: r.volume,
            member: r.member,
            from_disk: r.from_disk,
            to_disk: r.to_disk,
            bytes: r.bytes,
            state: state(Self::TABLE, &r.state, MoveState::Pending)?,
            reason: state(Self::TABLE, &r.reason, MoveReason::Rebalance)?,
            generation: r.generation,
            session: r.session,
            done_bytes: r.done_bytes,
            error: r.error,
            created_unix_ms: r.created_unix_ms,
            attempts: r.attempts,
        })
    }
}

#[derive(Clone, PartialEq, Message)]
struct StoredRebalance {
    #[prost(bool, tag = "1")]
    paused: bool,
    #[prost(string, tag = "2")]
    state: String,
    #[prost(double, tag = "3")]
    tolerance_pct: f64,
    #[prost(uint64, tag = "4")]
    started_unix_ms: u64,
}

impl Row for RebalanceRow {
    const TABLE: &'static str = "config";

    fn to_message(&self) -> Vec<u8> {
        StoredRebalance {
            paused: self.paused,
            state: self.state.as_str().into(),
            tolerance_pct: self.tolerance_pct,
            started_unix_ms: self.started_unix_ms,
        }
        .encode_to_vec()
    }

    fn from_message(b: &[u8]) -> Result<Self, MetaError> {
        let r: StoredRebalance = message(Self::TABLE, b)?;
        Ok(RebalanceRow {
            paused: r.paused,
            state: state(Self::TABLE, &r.state, RebalanceState::Idle)?,
            tolerance_pct: r.tolerance_pct,
            started_unix_ms: r.started_unix_ms,
        })
    }
}

#[derive(Clone, PartialEq, Message)]
struct StoredDisk {
    #[prost(string, tag = "1")]
    node_id: String,
    #[prost(string, tag = "2")]
    path: String,
    #[prost(string, tag = "3")]
    state: String,
    #[prost(uint64, tag = "4")]
    capacity_bytes: u64,
    #[prost(uint64, tag = "5")]
    used_bytes: u64,
    #[prost(uint64, tag = "6")]
    free_bytes: u64,
    #[prost(uint32, tag = "7")]
    extents: u32,
    #[prost(string, tag = "8")]
    hold: String,
    #[prost(bool, tag = "9")]
    declared_empty: bool,
    #[prost(string, tag = "10")]
    cluster_id: String,
    #[prost(bool, tag = "11")]
    draining: bool,
    #[prost(uint64, tag = "12")]
    trash_bytes: u64,
}

impl Row for DiskRow {
    const TABLE: &'static str = "disks";

    fn to_message(&self) -> Vec<u8> {
        StoredDisk {
            node_id: self.node_id.clone(),
            path: self.path.clone(),
            state: self.health.to_string(),
            capacity_bytes: self.capacity_bytes,
            used_bytes: self.used_bytes,
            free_bytes: self.free_bytes,
            extents: self.extents,
            hold: self.hold.clone(),
            declared_empty: self.declared_empty,
            cluster_id: self.cluster_id.clone(),
            draining: self.draining,
            trash_bytes: self.trash_bytes,
        }
        .encode_to_vec()
    }

    fn from_message(b: &[u8]) -> Result<Self, MetaError> {
        let r: StoredDisk = message(Self::TABLE, b)?;
        Ok(DiskRow {
            node_id: r.node_id,
            path: r.path,
            health: state(Self::TABLE, &r.state, DiskHealth::Ok)?,
            capacity_bytes: r.capacity_bytes,
            used_bytes: r.used_bytes,
            free_bytes: r.free_bytes,
            extents: r.extents,
            hold: r.hold,
            declared_empty: r.declared_empty,
            cluster_id: r.cluster_id,
            draining: r.draining,
            trash_bytes: r.trash_bytes,
        })
    }
}

/// Puts a volume row into `b`.
pub fn put_volume(b: &mut WriteBatch, id: VolumeId, v: &VolumeRow) {
    b.put(Cf::Volumes, volume_key(id), encode(v));
}

/// Puts a move row into `b`.
pub fn put_move(b: &mut WriteBatch, id: u64, m: &MoveRow) {
    b.put(Cf::Repair, RepairKey::Move(id).encode(), encode(m));
}

/// Puts a config row into `b`.
pub fn put_config<R: Row>(b: &mut WriteBatch, key: ConfigKey, r: &R) {
    b.put(Cf::Config, key.bytes(), encode(r));
}

/// Puts a u64 counter of the config table into `b`.
pub fn put_counter(b: &mut WriteBatch, key: ConfigKey, v: u64) {
    b.put(Cf::Config, key.bytes(), v.to_be_bytes().to_vec());
}

/// A u64 counter of the config table from its stored bytes.
pub fn parse_counter(b: &[u8]) -> Option<u64> {
    b.try_into().ok().map(u64::from_be_bytes)
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
            state: BlockState::Live,
            asserted_unix_ms: 5,
            deleted_unix_ms: 0,
        };
        let b = encode(&row);
        assert_eq!(b[0], VALUE_VERSION);
        assert_eq!(decode::<BlockRow>(&b).unwrap(), row);
        let mut future = b.clone();
        future[0] = 9;
        assert!(decode::<BlockRow>(&future).is_err());
        assert!(decode::<BlockRow>(&[]).is_err());
    }

    #[test]
    fn repair_keys_round_trip() {
        for k in [
            RepairKey::Rebuild(7),
            RepairKey::Range(7, 3, 4096),
            RepairKey::Move(12),
        ] {
            assert_eq!(RepairKey::parse(&k.encode()), Some(k));
        }
        assert_eq!(RepairKey::parse(b"x"), None);
    }

    /// Rows written by earlier builds (states as strings, defaults left out) read as before, and a
    /// state no build wrote is named in the error.
    #[test]
    fn stored_states_read_into_enums_and_unknown_ones_are_named() {
        let old = StoredVolume {
            k: 6,
            m: 3,
            state: "degraded".into(),
            members: vec![
                StoredMember {
                    disk_id: "d1".into(),
                    generation: 2,
                    state: "lost".into(),
                },
                StoredMember {
                    disk_id: "d2".into(),
                    generation: 1,
                    state: String::new(),
                },
            ],
            ..Default::default()
        };
        let mut b = vec![VALUE_VERSION];
        b.extend_from_slice(&old.encode_to_vec());
        let v: VolumeRow = decode(&b).unwrap();
        assert_eq!(v.state, VolumeState::Degraded);
        assert_eq!(v.members[0].state, MemberState::Lost);
        assert_eq!(v.members[1].state, MemberState::Ok);
        assert_eq!(decode::<VolumeRow>(&encode(&v)).unwrap(), v);
        let bad = StoredVolume {
            state: "wobbly".into(),
            ..old
        };
        let mut b = vec![VALUE_VERSION];
        b.extend_from_slice(&bad.encode_to_vec());
        let e = decode::<VolumeRow>(&b).unwrap_err().to_string();
        assert!(e.contains("wobbly") && e.contains("volumes"), "{e}");

        let disk = DiskRow {
            node_id: "n".into(),
            path: "/d".into(),
            health: DiskHealth::Failed("label unreadable".into()),
            capacity_bytes: 1,
            used_bytes: 0,
            free_bytes: 1,
            extents: 0,
            hold: String::new(),
            declared_empty: false,
            cluster_id: String::new(),
            draining: false,
            trash_bytes: 0,
        };
        assert_eq!(decode::<DiskRow>(&encode(&disk)).unwrap(), disk);
        let mv = MoveRow {
            volume: 1,
            member: 2,
            from_disk: "a".into(),
            to_disk: "b".into(),
            bytes: 3,
            state: MoveState::Running,
            reason: MoveReason::Drain,
            generation: 4,
            session: "s".into(),
            done_bytes: 1,
            error: String::new(),
            created_unix_ms: 9,
            attempts: 1,
        };
        assert_eq!(decode::<MoveRow>(&encode(&mv)).unwrap(), mv);
    }
}
