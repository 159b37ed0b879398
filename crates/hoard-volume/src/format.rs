//! Byte layouts of the files on a disk, as documented in `docs/on-disk-format.md`.
//!
//! Every header and every record carries magic bytes, a format version and a crc32c, so that a torn tail
//! or a rotten byte is detected rather than trusted.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use hoard_types::{BlockHash, MAX_BLOCK_LEN, MAX_EXTENT_CAPACITY, MAX_FRAGMENT_LEN, VolumeId};
use serde::{Serialize, de::DeserializeOwned};

use crate::VolumeError;

/// Current version of every binary layout in this module.
pub const FORMAT_VERSION: u32 = 1;

/// Bytes before the data region of a `.dat` file. A whole page, so data offsets stay page aligned.
pub const DAT_HEADER_LEN: u64 = 4096;
/// Bytes of the `.idx` header; records follow it.
pub const IDX_HEADER_LEN: u64 = 64;

const DAT_MAGIC: &[u8; 8] = b"HOARDDAT";
const IDX_MAGIC: &[u8; 8] = b"HOARDIDX";
const REC_MAGIC: u32 = 0x4852_4543; // "HREC"
const REC_KIND_BLOCK: u8 = 1;
/// The most members a volume may have (the raw protocol's limit too).
pub const MAX_WIDTH: usize = 64;

/// Identity of one extent, written into both file headers so that a file moved to the wrong place is
/// recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtentHeader {
    pub volume: VolumeId,
    pub member: u32,
    pub generation: u64,
    pub k: u32,
    pub m: u32,
}

impl ExtentHeader {
    fn encode(&self, magic: &[u8; 8], len: usize) -> Vec<u8> {
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(magic);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&self.volume.to_le_bytes());
        b.extend_from_slice(&self.member.to_le_bytes());
        b.extend_from_slice(&self.generation.to_le_bytes());
        b.extend_from_slice(&self.k.to_le_bytes());
        b.extend_from_slice(&self.m.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.resize(len, 0);
        b
    }

    fn decode(magic: &[u8; 8], b: &[u8], what: &str) -> Result<Self, String> {
        const BODY: usize = 8 + 4 + 8 + 4 + 8 + 4 + 4;
        if b.len() < BODY + 4 {
            return Err(format!("{what} header is short: {} bytes", b.len()));
        }
        if &b[..8] != magic {
            return Err(format!("{what} header has bad magic"));
        }
        let crc = u32::from_le_bytes(b[BODY..BODY + 4].try_into().expect("4 bytes"));
        if crc != crc32c::crc32c(&b[..BODY]) {
            return Err(format!("{what} header checksum mismatch"));
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(format!(
                "{what} header has unsupported format version {version}"
            ));
        }
        Ok(ExtentHeader {
            volume: u64_at(b, 12),
            member: u32_at(b, 20),
            generation: u64_at(b, 24),
            k: u32_at(b, 32),
            m: u32_at(b, 36),
        })
    }

    pub fn encode_dat(&self) -> Vec<u8> {
        self.encode(DAT_MAGIC, DAT_HEADER_LEN as usize)
    }

    pub fn encode_idx(&self) -> Vec<u8> {
        self.encode(IDX_MAGIC, IDX_HEADER_LEN as usize)
    }

    pub fn decode_dat(b: &[u8]) -> Result<Self, String> {
        Self::decode(DAT_MAGIC, b, ".dat")
    }

    pub fn decode_idx(b: &[u8]) -> Result<Self, String> {
        Self::decode(IDX_MAGIC, b, ".idx")
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The geometry of an extent of member `member` with `k` data and `m` parity members and `capacity`
/// bytes of data region, checked: a geometry Hoard allows, a member inside it, and a capacity inside
/// [`MAX_EXTENT_CAPACITY`]. Checked for requests that create extents and for `member.toml` files on
/// open, so that nothing after divides, indexes or sizes by values no writer could have produced.
pub fn member_shape(
    member: u32,
    k: u32,
    m: u32,
    capacity: u64,
) -> Result<hoard_types::Geometry, String> {
    let g = hoard_types::Geometry::new(k, m).map_err(|e| e.to_string())?;
    if member >= g.width() {
        return Err(format!("member {member} does not fit geometry {g}"));
    }
    if capacity == 0 || capacity > MAX_EXTENT_CAPACITY {
        return Err(format!(
            "extent capacity {capacity} is outside 1..={MAX_EXTENT_CAPACITY}"
        ));
    }
    Ok(g)
}

/// The record every member of a volume keeps for one block. Identical in all members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRecord {
    pub hash: BlockHash,
    pub offset: u64,
    pub frag_len: u32,
    pub block_len: u32,
    /// crc32c of each of the volume's `k + m` fragments of this block.
    pub crcs: Vec<u32>,
}

impl BlockRecord {
    /// A record from the network or a disk, checked: a fragment of 1 byte to [`MAX_FRAGMENT_LEN`], a
    /// block of 1 byte to [`MAX_BLOCK_LEN`], and a fragment that ends inside the largest extent.
    /// Everything that reads a record's offsets can then add them without overflow.
    pub fn checked(
        hash: BlockHash,
        offset: u64,
        frag_len: u32,
        block_len: u32,
        crcs: Vec<u32>,
    ) -> Result<BlockRecord, String> {
        if frag_len == 0 || u64::from(frag_len) > MAX_FRAGMENT_LEN {
            return Err(format!(
                "fragment length {frag_len} is outside 1..={MAX_FRAGMENT_LEN}"
            ));
        }
        if block_len == 0 || u64::from(block_len) > MAX_BLOCK_LEN {
            return Err(format!(
                "block length {block_len} is outside 1..={MAX_BLOCK_LEN}"
            ));
        }
        match hoard_types::range_end(offset, u64::from(frag_len)) {
            Some(end) if end <= MAX_EXTENT_CAPACITY => {}
            _ => {
                return Err(format!(
                    "fragment at {offset}+{frag_len} ends past the largest extent ({MAX_EXTENT_CAPACITY} bytes)"
                ));
            }
        }
        if crcs.is_empty() || crcs.len() > MAX_WIDTH {
            return Err(format!(
                "record lists {} fragment crcs; a volume has 1 to {MAX_WIDTH} members",
                crcs.len()
            ));
        }
        Ok(BlockRecord {
            hash,
            offset,
            frag_len,
            block_len,
            crcs,
        })
    }

    /// Bytes of one encoded record in a volume of `width` members. Fixed per extent, so that records sit
    /// in slots and one bad record never hides the ones after it.
    pub fn encoded_len(width: u32) -> usize {
        4 + 1 + 1 + 2 + 32 + 8 + 4 + 4 + 4 * width as usize + 4
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::encoded_len(self.crcs.len() as u32));
        b.extend_from_slice(&REC_MAGIC.to_le_bytes());
        b.push(FORMAT_VERSION as u8);
        b.push(REC_KIND_BLOCK);
        b.extend_from_slice(&(self.crcs.len() as u16).to_le_bytes());
        b.extend_from_slice(self.hash.as_bytes());
        b.extend_from_slice(&self.offset.to_le_bytes());
        b.extend_from_slice(&self.frag_len.to_le_bytes());
        b.extend_from_slice(&self.block_len.to_le_bytes());
        for c in &self.crcs {
            b.extend_from_slice(&c.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes one record slot. `Ok(None)` for a slot of zeros (never written).
    pub fn decode(b: &[u8], width: u32) -> Result<Option<Self>, String> {
        let len = Self::encoded_len(width);
        if b.len() < len {
            return Err(format!("record is short: {} of {len} bytes", b.len()));
        }
        let b = &b[..len];
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if u32_at(b, 0) != REC_MAGIC {
            return Err("record has bad magic".into());
        }
        let crc = u32_at(b, len - 4);
        if crc != crc32c::crc32c(&b[..len - 4]) {
            return Err("record checksum mismatch".into());
        }
        if b[4] as u32 != FORMAT_VERSION || b[5] != REC_KIND_BLOCK {
            return Err(format!(
                "record has unsupported version {} or kind {}",
                b[4], b[5]
            ));
        }
        let n = u16::from_le_bytes([b[6], b[7]]) as u32;
        if n != width {
            return Err(format!("record lists {n} fragments, extent has {width}"));
        }
        let hash = BlockHash::from_slice(&b[8..40]).map_err(|e| e.to_string())?;
        let crcs = (0..width as usize).map(|i| u32_at(b, 56 + 4 * i)).collect();
        // A slot whose crc matches but whose values no writer could have produced is damage too.
        BlockRecord::checked(hash, u64_at(b, 40), u32_at(b, 48), u32_at(b, 52), crcs).map(Some)
    }

    /// The end of the fragment in the member's data region. Records are checked on the way in
    /// ([`BlockRecord::checked`]), so this does not overflow; it saturates rather than wrap for one built
    /// by hand.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(u64::from(self.frag_len))
    }
}

/// Writes `value` as TOML followed by a `checksum` line over the bytes before it, durably: a temporary
/// file, fsync, rename over the target, fsync of the directory.
pub fn write_checked_toml<T: Serialize>(path: &Path, value: &T) -> Result<(), VolumeError> {
    let body = toml::to_string(value).map_err(|e| VolumeError::Format {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    let text = format!(
        "{body}checksum = \"{:08x}\"\n",
        crc32c::crc32c(body.as_bytes())
    );
    let tmp = path.with_extension("toml.tmp");
    let io = |e| VolumeError::io(path, e);
    {
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    fs::rename(&tmp, path).map_err(io)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(())
}

/// Reads a file written by [`write_checked_toml`], checking its checksum line.
pub fn read_checked_toml<T: DeserializeOwned>(path: &Path) -> Result<T, VolumeError> {
    let text = fs::read_to_string(path).map_err(|e| VolumeError::io(path, e))?;
    parse_checked_toml(&text).map_err(|problem| VolumeError::Format {
        path: path.to_path_buf(),
        problem,
    })
}

/// The value in the text of a file written by [`write_checked_toml`], after its checksum line matched.
pub fn parse_checked_toml<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let at = text
        .rfind("checksum = \"")
        .ok_or_else(|| "no checksum line".to_string())?;
    let (body, tail) = text.split_at(at);
    let want = tail
        .trim()
        .strip_prefix("checksum = \"")
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| "malformed checksum line".to_string())?;
    if want != crc32c::crc32c(body.as_bytes()) {
        return Err("checksum mismatch".into());
    }
    toml::from_str(body).map_err(|e| e.to_string())
}

/// fsyncs a directory, so that a rename or a new file inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), VolumeError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| VolumeError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> BlockRecord {
        BlockRecord {
            hash: BlockHash::of(b"x"),
            offset: 4096,
            frag_len: 640,
            block_len: 3000,
            crcs: (0..9).map(|i| i * 7).collect(),
        }
    }

    #[test]
    fn record_round_trips_and_detects_damage() {
        let r = record();
        let b = r.encode();
        assert_eq!(b.len(), BlockRecord::encoded_len(9));
        assert_eq!(BlockRecord::decode(&b, 9).unwrap(), Some(r));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x10;
            assert!(
                BlockRecord::decode(&bad, 9).is_err(),
                "flip at {i} not detected"
            );
        }
        assert!(BlockRecord::decode(&b[..50], 9).is_err());
        assert_eq!(BlockRecord::decode(&vec![0; b.len()], 9).unwrap(), None);
    }

    #[test]
    fn headers_round_trip_and_detect_damage() {
        let h = ExtentHeader {
            volume: 7,
            member: 3,
            generation: 2,
            k: 6,
            m: 3,
        };
        let d = h.encode_dat();
        assert_eq!(d.len() as u64, DAT_HEADER_LEN);
        assert_eq!(ExtentHeader::decode_dat(&d).unwrap(), h);
        assert!(ExtentHeader::decode_idx(&d).is_err());
        let mut bad = h.encode_idx();
        bad[13] ^= 1;
        assert!(ExtentHeader::decode_idx(&bad).is_err());
    }

    #[test]
    fn checked_toml_detects_edits() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct T {
            a: u32,
            b: String,
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.toml");
        let v = T {
            a: 1,
            b: "x".into(),
        };
        write_checked_toml(&p, &v).unwrap();
        assert_eq!(read_checked_toml::<T>(&p).unwrap(), v);
        let text = fs::read_to_string(&p).unwrap().replace("a = 1", "a = 2");
        fs::write(&p, text).unwrap();
        assert!(read_checked_toml::<T>(&p).is_err());
    }
}
