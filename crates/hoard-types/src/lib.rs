//! Domain types shared by every Hoard crate: block hashes, identifiers, stripe geometry and sizes.
//!
//! No I/O lives here. Values that arrive from the network or from disk are parsed into these types once,
//! at the edge, so that the rest of the code works with values that are already known to be valid.

pub mod state;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Largest block a client may put: 4 MiB.
pub const MAX_BLOCK_LEN: u64 = 4 * 1024 * 1024;

/// Fragments are padded to a multiple of this many bytes, so that every fragment of a volume starts on an
/// aligned offset in every member.
pub const FRAGMENT_ALIGN: u64 = 64;

/// Large fragments are padded to whole pages instead, and placed at page-aligned offsets, so that volume
/// servers can write them with O_DIRECT: no copy through the page cache, which costs more CPU than
/// hashing and encoding the block together.
pub const DIRECT_ALIGN: u64 = 4096;

/// Fragments of at least this many bytes (before padding) are page aligned; smaller ones are 64-byte
/// aligned so that small blocks do not take a page per fragment. The padding costs at most 1/16 of a
/// fragment, and under 0.2% for 4 MiB blocks.
pub const DIRECT_MIN_FRAGMENT: u64 = 64 * 1024;

/// The largest fragment: a whole block of the largest size (`k` = 1), padded to a page.
pub const MAX_FRAGMENT_LEN: u64 = MAX_BLOCK_LEN + DIRECT_ALIGN;

/// The largest data region one member of a volume may have (1 TiB). Offsets and lengths that claim more
/// did not come from Hoard.
pub const MAX_EXTENT_CAPACITY: u64 = 1 << 40;

/// The end of `[offset, offset + len)`, or `None` when it does not fit in a `u64`. Every range that
/// arrives from the network or from a disk is checked with this before it is used.
pub fn range_end(offset: u64, len: u64) -> Option<u64> {
    offset.checked_add(len)
}

/// Errors from parsing or validating domain values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TypeError {
    #[error("malformed block hash {0:?}: expected 64 hex characters")]
    MalformedHash(String),
    #[error("malformed block hash: expected 32 bytes, got {0}")]
    HashLength(usize),
    #[error(
        "invalid erasure geometry {0:?}: expected K+M with K in 1..=32, M in 0..=16 and K+M <= 48"
    )]
    Geometry(String),
}

/// A block's key: the BLAKE3-256 hash of its bytes. Shown as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash([u8; 32]);

impl BlockHash {
    pub const LEN: usize = 32;

    /// Hashes `data` with BLAKE3.
    pub fn of(data: &[u8]) -> Self {
        BlockHash(*blake3::hash(data).as_bytes())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        BlockHash(bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, TypeError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| TypeError::HashLength(bytes.len()))?;
        Ok(BlockHash(arr))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex characters, for logs and spans.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl FromStr for BlockHash {
    type Err = TypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 {
            return Err(TypeError::MalformedHash(s.to_string()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| TypeError::MalformedHash(s.to_string()))?;
        Ok(BlockHash(out))
    }
}

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHash({})", self.short())
    }
}

/// A volume: one stripe group of `k + m` members. Allocated by meta, never reused.
pub type VolumeId = u64;

/// A member index inside a volume, `0..k+m`. Members `0..k` hold data, `k..k+m` parity.
pub type MemberIndex = u32;

/// Reed-Solomon geometry of a volume: `k` data and `m` parity members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Geometry {
    pub k: u32,
    pub m: u32,
}

impl Geometry {
    pub const DEFAULT: Geometry = Geometry { k: 6, m: 3 };

    pub fn new(k: u32, m: u32) -> Result<Self, TypeError> {
        if !(1..=32).contains(&k) || m > 16 || k + m > 48 {
            return Err(TypeError::Geometry(format!("{k}+{m}")));
        }
        Ok(Geometry { k, m })
    }

    /// Members in a volume.
    pub fn width(&self) -> u32 {
        self.k + self.m
    }

    /// Bytes of one fragment of a block of `block_len` bytes: `ceil(block_len / k)`, rounded up to
    /// [`FRAGMENT_ALIGN`], or to [`DIRECT_ALIGN`] from [`DIRECT_MIN_FRAGMENT`] on.
    pub fn frag_len(&self, block_len: u64) -> u64 {
        let per = block_len.div_ceil(self.k as u64);
        let align = fragment_align(per);
        per.div_ceil(align).max(1) * align
    }
}

/// The alignment of a fragment of `len` bytes (padded or not), and of its offset inside a member.
pub fn fragment_align(len: u64) -> u64 {
    if len >= DIRECT_MIN_FRAGMENT {
        DIRECT_ALIGN
    } else {
        FRAGMENT_ALIGN
    }
}

impl FromStr for Geometry {
    type Err = TypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TypeError::Geometry(s.to_string());
        let (k, m) = s.split_once('+').ok_or_else(bad)?;
        let k = k.trim().parse().map_err(|_| bad())?;
        let m = m.trim().parse().map_err(|_| bad())?;
        Geometry::new(k, m).map_err(|_| bad())
    }
}

impl fmt::Display for Geometry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.k, self.m)
    }
}

/// Where a block lives: its volume, its offset inside every member's data region, and its sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockLocation {
    pub volume: VolumeId,
    pub offset: u64,
    pub frag_len: u64,
    pub block_len: u64,
    /// crc32c of every fragment, data members first, then parity.
    pub crcs: Vec<u32>,
}

/// One member of one volume at one generation: what an extent is, wherever it is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtentId {
    pub volume: VolumeId,
    pub member: MemberIndex,
    pub generation: u64,
}

impl fmt::Display for ExtentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} gen {}", self.volume, self.member, self.generation)
    }
}

/// A byte count as people read it: `1.5 GiB`, `512 B`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut u = 0;
        while v >= 1024.0 && u < UNITS.len() - 1 {
            v /= 1024.0;
            u += 1;
        }
        if u == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[u])
        }
    }
}

/// A generated identifier: a prefix and 16 random hex characters, e.g. `disk-1f0c...`.
pub fn random_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_through_hex() {
        let h = BlockHash::of(b"hello");
        let parsed: BlockHash = h.to_hex().parse().unwrap();
        assert_eq!(h, parsed);
        assert_eq!(h.to_hex().len(), 64);
        let upper: BlockHash = h.to_hex().to_uppercase().parse().unwrap();
        assert_eq!(h, upper);
    }

    #[test]
    fn malformed_hashes_are_rejected() {
        assert!("abc".parse::<BlockHash>().is_err());
        assert!("z".repeat(64).parse::<BlockHash>().is_err());
        assert!("a".repeat(65).parse::<BlockHash>().is_err());
    }

    #[test]
    fn frag_len_covers_block_and_is_aligned() {
        let g = Geometry::DEFAULT;
        for len in [
            1u64,
            63,
            64,
            65,
            383,
            384,
            385,
            1000,
            MAX_BLOCK_LEN - 1,
            MAX_BLOCK_LEN,
        ] {
            let f = g.frag_len(len);
            let align = fragment_align(f);
            assert_eq!(f % align, 0);
            assert!(f * g.k as u64 >= len, "len {len}");
            assert!((f - align) * (g.k as u64) < len || f == align);
        }
        // 4 MiB blocks: 699,051 bytes per fragment, padded to 171 pages.
        assert_eq!(g.frag_len(MAX_BLOCK_LEN), 700_416);
        assert_eq!(g.frag_len(MAX_BLOCK_LEN) % DIRECT_ALIGN, 0);
        // Just below the threshold stays 64-byte aligned.
        assert_eq!(
            g.frag_len(6 * (DIRECT_MIN_FRAGMENT - 64)),
            DIRECT_MIN_FRAGMENT - 64
        );
    }

    #[test]
    fn byte_sizes_read_as_people_write_them() {
        assert_eq!(ByteSize(512).to_string(), "512 B");
        assert_eq!(ByteSize(1536).to_string(), "1.5 KiB");
        assert_eq!(ByteSize(300_000).to_string(), "293.0 KiB");
        assert_eq!(ByteSize(3 << 30).to_string(), "3.0 GiB");
    }

    #[test]
    fn geometry_parses() {
        assert_eq!("6+3".parse::<Geometry>().unwrap(), Geometry { k: 6, m: 3 });
        assert!("0+3".parse::<Geometry>().is_err());
        assert!("6-3".parse::<Geometry>().is_err());
        assert!("40+10".parse::<Geometry>().is_err());
    }
}
