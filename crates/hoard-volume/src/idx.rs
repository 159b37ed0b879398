//! Reading an extent's `.idx`: its record slots in order, telling rot in the middle from a torn tail.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::format::{BlockRecord, IDX_HEADER_LEN};

/// What a scan of the `.idx` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdxScan {
    /// Valid records.
    pub records: u64,
    /// Record slots that failed their checks before the last valid record (rot, not a torn tail).
    pub bad_slots: Vec<u64>,
    /// Bytes of a torn tail that were cut off.
    pub cut_bytes: u64,
    /// End of the furthest fragment any valid record points at.
    pub max_end: u64,
}

/// Reads the record slots of an `.idx` file in order. A bad slot followed by a valid one is rot and is
/// reported; bad or partial slots after the last valid one are a torn tail.
pub fn scan_idx(
    idx: &File,
    width: u32,
    mut visit: impl FnMut(u64, &BlockRecord),
) -> std::io::Result<IdxScan> {
    let record_len = BlockRecord::encoded_len(width);
    let file_len = idx.metadata()?.len();
    let mut scan = IdxScan::default();
    let mut pending_bad: Vec<u64> = Vec::new();
    let mut last_valid_end = IDX_HEADER_LEN;
    // Read whole slots in large positioned reads: the file's shared cursor is never touched, so scans
    // may run beside appends and other scans.
    let slots_per_read = ((1usize << 20) / record_len).max(1);
    let mut buf = vec![0u8; slots_per_read * record_len];
    let total_slots = (file_len.saturating_sub(IDX_HEADER_LEN)) / record_len as u64;
    let mut slot: u64 = 0;
    while slot < total_slots {
        let n = (total_slots - slot).min(slots_per_read as u64) as usize;
        let chunk = &mut buf[..n * record_len];
        idx.read_exact_at(chunk, IDX_HEADER_LEN + slot * record_len as u64)?;
        for (j, bytes) in chunk.chunks_exact(record_len).enumerate() {
            let index = slot + j as u64;
            match BlockRecord::decode(bytes, width) {
                Ok(Some(rec)) => {
                    scan.bad_slots.append(&mut pending_bad);
                    scan.records += 1;
                    scan.max_end = scan.max_end.max(rec.end());
                    visit(index, &rec);
                    last_valid_end = IDX_HEADER_LEN + (index + 1) * record_len as u64;
                }
                Ok(None) | Err(_) => pending_bad.push(index),
            }
        }
        slot += n as u64;
    }
    scan.cut_bytes = file_len - last_valid_end;
    Ok(scan)
}
