//! Writes a seed corpus of well-formed inputs (requests, answers, records, headers, member files) to
//! `corpus/<target>/`, so that the fuzzers start from inputs that reach past the first checks:
//! `cargo +nightly run --example seeds` from `fuzz/`.

use std::path::Path;

use hoard_proto::raw::{RawAppend, RawPut, RawRead};
use hoard_volume::format::{BlockRecord, ExtentHeader};
use prost_free::encode_record;

mod prost_free {
    /// A `hoard.v1.BlockRecord` message, encoded by hand (field numbers from volume.proto).
    pub fn encode_record(hash: &[u8; 32], offset: u64, frag_len: u32, block_len: u32, crcs: &[u32]) -> Vec<u8> {
        fn varint(mut v: u64, out: &mut Vec<u8>) {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        let mut b = vec![0x0a, 32];
        b.extend_from_slice(hash);
        b.push(0x10);
        varint(offset, &mut b);
        b.push(0x18);
        varint(frag_len.into(), &mut b);
        b.push(0x20);
        varint(block_len.into(), &mut b);
        let mut packed = Vec::new();
        for c in crcs {
            varint((*c).into(), &mut packed);
        }
        b.push(0x2a);
        varint(packed.len() as u64, &mut b);
        b.extend_from_slice(&packed);
        b
    }
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let read = RawRead {
        volume: 3,
        member: 1,
        generation: 2,
        offset: 4096,
        len: 700_416,
    };
    write("raw_requests", "read", &read.encode());
    let append = RawAppend {
        volume: 3,
        member: 1,
        generation: 2,
        epoch: 5,
        hash: [7; 32],
        offset: 8192,
        frag_len: 64,
        block_len: 300,
        crcs: vec![1, 2, 3, 4, 5, 6, 7, 8, 9],
    };
    let mut a = append.encode_header();
    a.extend_from_slice(&[0u8; 64]);
    write("raw_requests", "append", &a);
    let mut p = RawPut {
        len: 5,
        expected: Some([9; 32]),
    }
    .encode()
    .to_vec();
    p.extend_from_slice(b"hello");
    write("raw_requests", "put", &p);
    let mut two = read.encode().to_vec();
    two.extend_from_slice(&a);
    write("raw_requests", "read-then-append", &two);

    let mut ok = vec![0u8, 0, 16, 0, 0];
    ok.extend_from_slice(&[0xab; 4096]);
    write("raw_answers", "fragment", &ok);
    write("raw_answers", "refused", b"\x01\x0b\x00\x00\x00no such one");
    write("raw_answers", "empty-ok", &[0, 0, 0, 0, 0]);
    let mut put = vec![0u8, 33, 0, 0, 0];
    put.extend_from_slice(&[1; 33]);
    write("raw_answers", "put", &put);

    let rec = BlockRecord {
        hash: hoard_types::BlockHash::of(b"seed"),
        offset: 1 << 20,
        frag_len: 700_416,
        block_len: 4 << 20,
        crcs: (0..9).collect(),
    };
    let mut slot = vec![9u8];
    slot.extend_from_slice(&rec.encode());
    write("disk_records", "idx-slot", &slot);
    let h = ExtentHeader {
        volume: 3,
        member: 1,
        generation: 2,
        k: 6,
        m: 3,
    };
    write("disk_records", "dat-header", &h.encode_dat()[..64]);
    write("disk_records", "idx-header", &h.encode_idx());
    let body = "format = 1\nvolume = 3\nmember = 1\nk = 6\nm = 3\ngeneration = 2\nepoch = 5\ncapacity = 1073741824\ndisk_id = \"disk-1\"\ncreated_unix_ms = 0\n";
    let member = format!("{body}checksum = \"{:08x}\"\n", crc32c(body.as_bytes()));
    write("disk_records", "member-toml", member.as_bytes());
    let wire = encode_record(rec.hash.as_bytes(), rec.offset, rec.frag_len, rec.block_len, &rec.crcs);
    write("disk_records", "wire-record", &wire);
    write("wire_messages", "wire-record", &wire);
    write("wire_messages", "get", b"\x0a\x40aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\x10\x01\x18\x02");

    let mut claims = Vec::new();
    for (off, len) in [(0u32, 64u16), (128, 64), (64, 64), (4096, 4096), (200, 10)] {
        claims.extend_from_slice(&off.to_le_bytes());
        claims.extend_from_slice(&len.to_le_bytes());
    }
    write("append_claims", "out-of-order", &claims);
}

/// crc32c (Castagnoli), bit by bit: seeds only.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}
