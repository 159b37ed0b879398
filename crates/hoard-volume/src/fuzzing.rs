//! Entry points for fuzzing (`fuzz/`) and for the property tests that run the same code on every
//! change: the parsers of what a disk holds (`.idx` records, `.dat`/`.idx` headers, checked TOML files)
//! and of block records from the wire, and the append-only bookkeeping. Each panics only when a parser
//! breaks its own promise. Not part of the API.

use hoard_types::{MAX_BLOCK_LEN, MAX_EXTENT_CAPACITY, MAX_FRAGMENT_LEN};
use prost::Message;

use crate::format::{BlockRecord, ExtentHeader};

/// An `.idx` slot as read from disk: a record that decodes is within every bound and encodes back to
/// the same bytes.
pub fn idx_record(data: &[u8]) {
    let Some((&w, slot)) = data.split_first() else {
        return;
    };
    let width = u32::from(w % 70);
    if let Ok(Some(r)) = BlockRecord::decode(slot, width) {
        assert!(r.frag_len >= 1 && u64::from(r.frag_len) <= MAX_FRAGMENT_LEN);
        assert!(r.block_len >= 1 && u64::from(r.block_len) <= MAX_BLOCK_LEN);
        assert!(r.end() <= MAX_EXTENT_CAPACITY);
        assert_eq!(r.crcs.len(), width as usize);
        assert_eq!(r.encode(), &slot[..BlockRecord::encoded_len(width)]);
    }
}

/// `.dat` and `.idx` headers as read from disk.
pub fn extent_headers(data: &[u8]) {
    if let Ok(h) = ExtentHeader::decode_dat(data) {
        assert_eq!(&h.encode_dat()[..40], &data[..40]);
    }
    if let Ok(h) = ExtentHeader::decode_idx(data) {
        assert_eq!(&h.encode_idx()[..40], &data[..40]);
    }
}

/// `member.toml` (and the other checked TOML files) as read from disk: a file that parses has a shape
/// [`crate::format::member_shape`] accepts, or is refused on open.
pub fn member_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mf) = crate::format::parse_checked_toml::<crate::extent::MemberFile>(text)
        && let Ok(g) = crate::format::member_shape(mf.member, mf.k, mf.m, mf.capacity)
    {
        assert!(mf.member < g.width());
        assert!(mf.capacity <= MAX_EXTENT_CAPACITY);
    }
}

/// A block record from the wire: one that converts is within every bound.
pub fn wire_record(data: &[u8]) {
    if let Ok(r) = hoard_proto::v1::BlockRecord::decode(data)
        && let Ok(rec) = crate::wire::record_from_wire(&r)
    {
        assert!(rec.end() <= MAX_EXTENT_CAPACITY);
        assert_eq!(crate::wire::record_to_wire(&rec), r);
    }
}

/// Claims on an append-only region, from pairs of (offset, length): no two accepted claims overlap.
pub fn append_claims(data: &[u8]) {
    let mut space = crate::space::Space::new(0);
    let mut taken: Vec<(u64, u64)> = Vec::new();
    for c in data.chunks_exact(6) {
        let offset = u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]) % 1_000_000);
        let len = u64::from(u16::from_le_bytes([c[4], c[5]]));
        let Some(end) = hoard_types::range_end(offset, len) else {
            continue;
        };
        if space.claim(offset, end).is_ok() {
            assert!(
                taken.iter().all(|&(a, b)| end <= a || offset >= b),
                "{offset}..{end} overlaps a claim"
            );
            taken.push((offset, end));
        }
    }
}

/// The same entry points under proptest, on every test run: arbitrary bytes, and records whose
/// checksums are right but whose values no writer produces (what rot that keeps a crc valid, or a
/// hand-edited file, would look like).
#[cfg(test)]
mod tests {
    use super::*;
    use hoard_types::BlockHash;
    use proptest::prelude::*;

    fn extreme() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(u64::MAX),
            Just(u64::MAX - 4095),
            Just(1 << 63),
            Just(MAX_EXTENT_CAPACITY),
            any::<u64>(),
            0u64..(1 << 24),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            idx_record(&data);
            extent_headers(&data);
            member_file(&data);
            wire_record(&data);
            append_claims(&data);
        }

        #[test]
        fn checksummed_records_with_any_values(
            offset in extreme(),
            frag_len in prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>(), 1u32..100_000],
            block_len in prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>(), 1u32..5_000_000],
            width in 1u32..12,
        ) {
            let raw = BlockRecord {
                hash: BlockHash::of(&offset.to_le_bytes()),
                offset,
                frag_len,
                block_len,
                crcs: vec![7; width as usize],
            }
            .encode();
            let mut slot = vec![width as u8];
            slot.extend_from_slice(&raw);
            idx_record(&slot);
            let wire = hoard_proto::v1::BlockRecord {
                hash: bytes::Bytes::copy_from_slice(BlockHash::of(b"x").as_bytes()),
                offset,
                frag_len,
                block_len,
                crcs: vec![1; width as usize],
            };
            wire_record(&wire.encode_to_vec());
        }

        #[test]
        fn member_files_with_any_shape(
            k in prop_oneof![Just(0u32), Just(u32::MAX), 0u32..60],
            m in prop_oneof![Just(u32::MAX), 0u32..20],
            member in prop_oneof![Just(u32::MAX), 0u32..70],
            capacity in extreme(),
        ) {
            let mf = crate::extent::MemberFile {
                format: 1,
                volume: 1,
                member,
                k,
                m,
                generation: 1,
                epoch: 0,
                capacity,
                disk_id: "d".into(),
                created_unix_ms: 0,
            };
            let body = toml::to_string(&mf).unwrap();
            let text = format!("{body}checksum = \"{:08x}\"\n", crc32c::crc32c(body.as_bytes()));
            member_file(text.as_bytes());
            let ok = crate::format::member_shape(member, k, m, capacity).is_ok();
            prop_assert_eq!(
                ok,
                (1..=32).contains(&k)
                    && m <= 16
                    && k + m <= 48
                    && member < k + m
                    && (1..=MAX_EXTENT_CAPACITY).contains(&capacity)
            );
        }
    }
}
