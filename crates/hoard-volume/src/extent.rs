//! One extent: a member of one volume on one disk, as a `.dat` shard file and an `.idx` record log.
//!
//! Appends `pwrite` a fragment at its offset in `.dat` and append its record to `.idx`; they return only
//! once both are durable. Concurrent appends share one `fdatasync` per file (group commit): the first
//! waiter to find no sync running syncs everything written so far, and the ones that queued behind it
//! usually find their bytes already covered.
//!
//! Nothing per block is held in memory: an extent keeps a few counters, whatever its size.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hoard_types::{MemberIndex, VolumeId};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::VolumeError;
use crate::aligned;
use crate::format::{
    self, BlockRecord, DAT_HEADER_LEN, ExtentHeader, IDX_HEADER_LEN, read_checked_toml,
    write_checked_toml,
};
use crate::idx::{IdxScan, scan_idx};
use crate::space::Space;

/// `member.toml`: what an extent is. Rewritten (durably) when the writer epoch changes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberFile {
    pub format: u32,
    pub volume: VolumeId,
    pub member: MemberIndex,
    pub k: u32,
    pub m: u32,
    pub generation: u64,
    pub epoch: u64,
    pub capacity: u64,
    pub disk_id: String,
    pub created_unix_ms: u64,
}

struct IdxWriter {
    /// Byte position of the next record slot.
    end: u64,
}

pub struct Extent {
    pub volume: VolumeId,
    pub member: MemberIndex,
    pub dir: PathBuf,
    header: ExtentHeader,
    /// Held shared by appends for their check-and-write, exclusively by a fence, so that once a fence
    /// returns no append of an older epoch can land.
    meta: RwLock<MemberFile>,
    dat: File,
    /// The same `.dat` opened with O_DIRECT, for page-aligned fragment writes and for streaming reads
    /// (repair, scrub) that should not fill the page cache; `None` where the filesystem refuses O_DIRECT.
    dat_direct: Option<File>,
    idx: File,
    idx_writer: Mutex<IdxWriter>,
    record_len: u64,
    /// Furthest byte of the data region that an append has written.
    data_end: AtomicU64,
    /// What appends may still claim: the region is append-only.
    space: Mutex<Space>,
    records: AtomicU64,
    written_seq: AtomicU64,
    synced_seq: AtomicU64,
    sync_lock: Mutex<()>,
    failed: Mutex<Option<String>>,
}

impl std::fmt::Debug for Extent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Extent({}/{})", self.volume, self.member)
    }
}

pub fn dat_path(dir: &Path, member: MemberIndex) -> PathBuf {
    dir.join(format!("{member}.dat"))
}

pub fn idx_path(dir: &Path, member: MemberIndex) -> PathBuf {
    dir.join(format!("{member}.idx"))
}

impl Extent {
    /// Creates an extent durably. It appears under `final_dir` only once complete: it is built in
    /// `staging_dir`, synced, and renamed into place.
    pub fn create(
        staging_dir: &Path,
        final_dir: &Path,
        mf: MemberFile,
    ) -> Result<Arc<Extent>, VolumeError> {
        Extent::stage(staging_dir, &mf)?;
        Extent::publish(staging_dir, final_dir)
    }

    /// Writes an empty extent (headers and `member.toml`, synced) into `staging_dir`.
    pub fn stage(staging_dir: &Path, mf: &MemberFile) -> Result<(), VolumeError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| VolumeError::io(&p, e)
        };
        if staging_dir.exists() {
            fs::remove_dir_all(staging_dir).map_err(io(staging_dir))?;
        }
        fs::create_dir_all(staging_dir).map_err(io(staging_dir))?;
        let header = ExtentHeader {
            volume: mf.volume,
            member: mf.member,
            generation: mf.generation,
            k: mf.k,
            m: mf.m,
        };
        for (path, bytes) in [
            (dat_path(staging_dir, mf.member), header.encode_dat()),
            (idx_path(staging_dir, mf.member), header.encode_idx()),
        ] {
            let f = File::create(&path).map_err(io(&path))?;
            f.write_all_at(&bytes, 0).map_err(io(&path))?;
            f.sync_all().map_err(io(&path))?;
        }
        write_checked_toml(&staging_dir.join("member.toml"), mf)?;
        format::sync_dir(staging_dir)
    }

    /// Renames a complete staging directory into service and opens it.
    pub fn publish(staging_dir: &Path, final_dir: &Path) -> Result<Arc<Extent>, VolumeError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| VolumeError::io(&p, e)
        };
        format::sync_dir(staging_dir)?;
        if let Some(parent) = final_dir.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        fs::rename(staging_dir, final_dir).map_err(io(final_dir))?;
        if let Some(parent) = final_dir.parent() {
            format::sync_dir(parent)?;
        }
        let (extent, _) = Extent::open(final_dir)?;
        Ok(extent)
    }

    /// Opens an extent: checks both headers against `member.toml`, scans `.idx`, and cuts a torn tail.
    pub fn open(dir: &Path) -> Result<(Arc<Extent>, IdxScan), VolumeError> {
        let mf: MemberFile = read_checked_toml(&dir.join("member.toml"))?;
        format::member_shape(mf.member, mf.k, mf.m, mf.capacity).map_err(|problem| {
            VolumeError::Format {
                path: dir.join("member.toml"),
                problem,
            }
        })?;
        let header = ExtentHeader {
            volume: mf.volume,
            member: mf.member,
            generation: mf.generation,
            k: mf.k,
            m: mf.m,
        };
        let dat_p = dat_path(dir, mf.member);
        let idx_p = idx_path(dir, mf.member);
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| VolumeError::io(p, e))
        };
        let dat = open(&dat_p)?;
        let idx = open(&idx_p)?;
        let dat_direct = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&dat_p)
                .ok()
        };
        let bad = |p: &Path, problem: String| VolumeError::Format {
            path: p.to_path_buf(),
            problem,
        };
        let mut hb = vec![0u8; DAT_HEADER_LEN as usize];
        read_exact_at(&dat, &mut hb, 0).map_err(|e| VolumeError::io(&dat_p, e))?;
        let dh = ExtentHeader::decode_dat(&hb).map_err(|p| bad(&dat_p, p))?;
        let mut hb = vec![0u8; IDX_HEADER_LEN as usize];
        read_exact_at(&idx, &mut hb, 0).map_err(|e| VolumeError::io(&idx_p, e))?;
        let ih = ExtentHeader::decode_idx(&hb).map_err(|p| bad(&idx_p, p))?;
        if dh != header || ih != header {
            return Err(bad(
                dir,
                format!("headers {dh:?} / {ih:?} do not match member.toml {header:?}"),
            ));
        }
        let width = mf.k + mf.m;
        let record_len = BlockRecord::encoded_len(width) as u64;
        let scan = scan_idx(&idx, width, |_, _| {}).map_err(|e| VolumeError::io(&idx_p, e))?;
        let valid_end = IDX_HEADER_LEN + (scan.records + scan.bad_slots.len() as u64) * record_len;
        if scan.cut_bytes > 0 {
            tracing::warn!(
                volume = mf.volume,
                member = mf.member,
                cut_bytes = scan.cut_bytes,
                "cutting torn tail of .idx"
            );
            idx.set_len(valid_end)
                .and_then(|_| idx.sync_all())
                .map_err(|e| VolumeError::io(&idx_p, e))?;
        }
        if !scan.bad_slots.is_empty() {
            tracing::warn!(
                volume = mf.volume,
                member = mf.member,
                bad = scan.bad_slots.len(),
                "damaged .idx records found"
            );
        }
        let dat_len = dat
            .metadata()
            .map_err(|e| VolumeError::io(&dat_p, e))?
            .len()
            .saturating_sub(DAT_HEADER_LEN);
        let extent = Arc::new(Extent {
            volume: mf.volume,
            member: mf.member,
            dir: dir.to_path_buf(),
            header,
            dat,
            dat_direct,
            idx,
            idx_writer: Mutex::new(IdxWriter { end: valid_end }),
            record_len,
            data_end: AtomicU64::new(dat_len.max(scan.max_end)),
            space: Mutex::new(Space::new(dat_len.max(scan.max_end))),
            records: AtomicU64::new(scan.records),
            written_seq: AtomicU64::new(0),
            synced_seq: AtomicU64::new(0),
            sync_lock: Mutex::new(()),
            failed: Mutex::new(None),
            meta: RwLock::new(mf),
        });
        Ok((extent, scan))
    }

    pub fn member_file(&self) -> MemberFile {
        self.meta.read().clone()
    }

    pub fn generation(&self) -> u64 {
        self.header.generation
    }

    pub fn data_len(&self) -> u64 {
        self.data_end.load(Ordering::Acquire)
    }

    /// Bytes this extent takes on disk (both files, headers included).
    pub fn disk_bytes(&self) -> u64 {
        DAT_HEADER_LEN + self.data_len() + self.idx_writer.lock().end
    }

    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    pub fn failure(&self) -> Option<String> {
        self.failed.lock().clone()
    }

    pub(crate) fn fail(&self, why: String) -> VolumeError {
        tracing::error!(
            volume = self.volume,
            member = self.member,
            "extent failed: {why}"
        );
        let mut f = self.failed.lock();
        if f.is_none() {
            *f = Some(why.clone());
        }
        VolumeError::ExtentFailed {
            volume: self.volume,
            member: self.member,
            reason: why,
        }
    }

    /// An I/O error on this extent's files. Only what the device reports fails the extent (and so its
    /// disk); a full filesystem is refused as such, and errors that only a bad argument can cause (which
    /// the checks before every call should have refused) are reported without failing anything, so that
    /// no request can fail a disk.
    fn io_failure(&self, what: &str, e: std::io::Error) -> VolumeError {
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => {
                VolumeError::disk_full(self.volume, self.member, format!("{what}: {e}"))
            }
            Some(libc::EINVAL | libc::EFAULT | libc::EFBIG | libc::EOVERFLOW) => {
                tracing::error!(
                    volume = self.volume,
                    member = self.member,
                    "{what}: {e} (a request the checks let through; the extent stays in service)"
                );
                VolumeError::Internal(format!(
                    "extent {}/{}: {what}: {e}",
                    self.volume, self.member
                ))
            }
            _ => self.fail(format!("{what}: {e}")),
        }
    }

    fn check_usable(&self, generation: u64) -> Result<(), VolumeError> {
        if let Some(why) = self.failure() {
            return Err(VolumeError::ExtentFailed {
                volume: self.volume,
                member: self.member,
                reason: why,
            });
        }
        if generation != self.header.generation {
            return Err(VolumeError::StaleGeneration {
                volume: self.volume,
                member: self.member,
                have: self.header.generation,
                asked: generation,
            });
        }
        Ok(())
    }

    /// Raises the writer epoch to `epoch` (durably) and returns the data length a new writer continues
    /// from. Waits for appends already past their epoch check.
    pub fn fence(&self, generation: u64, epoch: u64) -> Result<u64, VolumeError> {
        self.check_usable(generation)?;
        let mut meta = self.meta.write();
        if epoch < meta.epoch {
            return Err(VolumeError::Fenced {
                volume: self.volume,
                member: self.member,
                have: meta.epoch,
                asked: epoch,
            });
        }
        if epoch > meta.epoch {
            let mut next = meta.clone();
            next.epoch = epoch;
            write_checked_toml(&self.dir.join("member.toml"), &next)?;
            *meta = next;
            // The new writer continues past everything written: gaps the old one left stay empty.
            self.space.lock().seal_gaps();
        }
        Ok(self.data_len())
    }

    /// Writes one fragment and its record; returns once both are durable. A fragment whose bytes start
    /// on a page boundary is written as it is; others are copied into a page-aligned buffer for O_DIRECT.
    pub async fn append<F: AsRef<[u8]> + Send + 'static>(
        self: &Arc<Self>,
        generation: u64,
        epoch: u64,
        record: BlockRecord,
        fragment: F,
    ) -> Result<(), VolumeError> {
        self.check_record(&record)?;
        if fragment.as_ref().len() != record.frag_len as usize {
            return Err(VolumeError::BadRequest(format!(
                "fragment has {} bytes, record says {}",
                fragment.as_ref().len(),
                record.frag_len
            )));
        }
        self.check_append(generation, epoch, &record)?;
        let want = record.crcs[self.member as usize];
        let this = Arc::clone(self);
        // One trip to the blocking pool per append: check, write, then join (or lead) a group sync.
        tokio::task::spawn_blocking(move || {
            let fragment = fragment.as_ref();
            if crc32c::crc32c(fragment) != want {
                return Err(VolumeError::BadRequest(
                    "fragment does not match its crc32c in the record".into(),
                ));
            }
            let seq = this.write_blocking(epoch, &record, fragment)?;
            this.sync_to(seq)
        })
        .await
        .map_err(|e| VolumeError::Internal(e.to_string()))?
    }

    /// Whether a record fits this extent: one crc per member and the fragment length its geometry
    /// gives the block.
    fn check_record(&self, record: &BlockRecord) -> Result<(), VolumeError> {
        let width = self.header.k + self.header.m;
        if record.crcs.len() != width as usize {
            return Err(VolumeError::BadRequest(format!(
                "record has {} crcs, volume has {width} members",
                record.crcs.len()
            )));
        }
        let geometry = hoard_types::Geometry {
            k: self.header.k,
            m: self.header.m,
        };
        let want = geometry.frag_len(u64::from(record.block_len));
        if u64::from(record.frag_len) != want {
            return Err(VolumeError::BadRequest(format!(
                "fragment length {} does not fit a block of {} bytes in geometry {geometry} ({want})",
                record.frag_len, record.block_len
            )));
        }
        Ok(())
    }

    /// Whether an append of `record` under `epoch` would be taken now: the extent is usable at that
    /// generation, the epoch is the current writer's, and the fragment lands inside the capacity on
    /// bytes no append has claimed. Checked before an append's bytes are read off a connection, and
    /// again when it is written.
    pub fn check_append(
        &self,
        generation: u64,
        epoch: u64,
        record: &BlockRecord,
    ) -> Result<(), VolumeError> {
        self.check_usable(generation)?;
        self.check_record(record)?;
        let meta = self.meta.read();
        self.check_claim(&meta, epoch, record).and_then(|end| {
            self.space
                .lock()
                .check(record.offset, end)
                .map_err(VolumeError::BadRequest)
        })
    }

    /// The end of an append's fragment, after the epoch and capacity checks.
    fn check_claim(
        &self,
        meta: &MemberFile,
        epoch: u64,
        record: &BlockRecord,
    ) -> Result<u64, VolumeError> {
        if epoch != meta.epoch {
            return Err(VolumeError::Fenced {
                volume: self.volume,
                member: self.member,
                have: meta.epoch,
                asked: epoch,
            });
        }
        match hoard_types::range_end(record.offset, u64::from(record.frag_len)) {
            Some(end) if end <= meta.capacity => Ok(end),
            _ => Err(VolumeError::OutOfRange(format!(
                "append at {}+{} passes the extent capacity {}",
                record.offset, record.frag_len, meta.capacity
            ))),
        }
    }

    fn write_blocking(
        &self,
        epoch: u64,
        record: &BlockRecord,
        fragment: &[u8],
    ) -> Result<u64, VolumeError> {
        let meta = self.meta.read();
        let end = self.check_claim(&meta, epoch, record)?;
        // Claimed before the write, so that two appends can never write the same bytes.
        self.space
            .lock()
            .claim(record.offset, end)
            .map_err(VolumeError::BadRequest)?;
        let at = DAT_HEADER_LEN + record.offset;
        let res = match &self.dat_direct {
            Some(direct)
                if at.is_multiple_of(aligned::ALIGN as u64)
                    && fragment.len().is_multiple_of(aligned::ALIGN) =>
            {
                if (fragment.as_ptr() as usize).is_multiple_of(aligned::ALIGN) {
                    direct.write_all_at(fragment, at)
                } else {
                    let buf = aligned::AlignedBuf::copy_of(fragment);
                    direct.write_all_at(buf.as_slice(), at)
                }
            }
            _ => self.dat.write_all_at(fragment, at),
        };
        if let Err(e) = res {
            return Err(self.io_failure("write .dat", e));
        }
        let encoded = record.encode();
        {
            let mut w = self.idx_writer.lock();
            if let Err(e) = self.idx.write_all_at(&encoded, w.end) {
                return Err(self.io_failure("write .idx", e));
            }
            w.end += self.record_len;
        }
        self.data_end.fetch_max(record.end(), Ordering::AcqRel);
        self.records.fetch_add(1, Ordering::Relaxed);
        drop(meta);
        Ok(self.written_seq.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// Waits until every write numbered up to `seq` is durable, syncing if nobody else is. Threads that
    /// queue behind a running sync usually find their writes covered by it when it ends.
    fn sync_to(&self, seq: u64) -> Result<(), VolumeError> {
        loop {
            if self.synced_seq.load(Ordering::Acquire) >= seq {
                return Ok(());
            }
            let _leader = self.sync_lock.lock();
            if self.synced_seq.load(Ordering::Acquire) >= seq {
                return Ok(());
            }
            if let Some(why) = self.failure() {
                return Err(VolumeError::ExtentFailed {
                    volume: self.volume,
                    member: self.member,
                    reason: why,
                });
            }
            // Everything numbered up to `target` finished its writes before it was numbered.
            let target = self.written_seq.load(Ordering::Acquire);
            if let Err(e) = self.dat.sync_data().and_then(|_| self.idx.sync_data()) {
                // After a failed fsync the page cache can no longer be trusted: fail the extent.
                return Err(self.fail(format!("fdatasync: {e}")));
            }
            self.synced_seq.fetch_max(target, Ordering::AcqRel);
        }
    }

    /// Reads one fragment and checks its crc32c.
    pub fn read_fragment(
        &self,
        generation: u64,
        offset: u64,
        frag_len: u32,
        expected_crc: u32,
    ) -> Result<Bytes, VolumeError> {
        self.check_usable(generation)?;
        self.check_written(offset, u64::from(frag_len))?;
        if u64::from(frag_len) > hoard_types::MAX_FRAGMENT_LEN {
            return Err(VolumeError::BadRequest(format!(
                "fragment of {frag_len} bytes is over the largest ({})",
                hoard_types::MAX_FRAGMENT_LEN
            )));
        }
        // A pooled buffer: no zeroing, no fresh pages. Read through the page cache, which keeps what
        // clients read often.
        let mut buf = aligned::AlignedBuf::with_len(frag_len as usize);
        match read_exact_at(&self.dat, buf.as_mut_slice(), DAT_HEADER_LEN + offset) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(VolumeError::Corrupt {
                    volume: self.volume,
                    member: self.member,
                    offset,
                    problem: "fragment lies past the end of .dat".into(),
                });
            }
            Err(e) => return Err(self.io_failure("read .dat", e)),
        }
        if crc32c::crc32c(buf.as_slice()) != expected_crc {
            metrics::counter!("hoard_volume_fragment_crc_failures_total").increment(1);
            return Err(VolumeError::Corrupt {
                volume: self.volume,
                member: self.member,
                offset,
                problem: "crc32c mismatch".into(),
            });
        }
        Ok(Bytes::from_owner(buf))
    }

    /// Where a raw read of `len` bytes at `offset` of the data region lies in [`Extent::cached_dat`]:
    /// the byte offset in that file. No crc32c check; the reader checks the block's BLAKE3. Refuses
    /// ranges past what appends have written.
    pub fn raw_source(&self, generation: u64, offset: u64, len: u32) -> Result<u64, VolumeError> {
        self.check_usable(generation)?;
        self.check_written(offset, u64::from(len))?;
        Ok(DAT_HEADER_LEN + offset)
    }

    /// Refuses a read of `len` bytes at `offset` that does not lie inside what appends have written.
    fn check_written(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        let written = self.data_len();
        match hoard_types::range_end(offset, len) {
            Some(end) if end <= written => Ok(()),
            _ => Err(VolumeError::OutOfRange(format!(
                "extent {}/{}: read of {len} bytes at {offset} lies past the {written} bytes written",
                self.volume, self.member
            ))),
        }
    }

    /// The `.dat` opened through the page cache (for `sendfile`).
    pub fn cached_dat(&self) -> &File {
        &self.dat
    }

    /// Reads raw bytes of the data region (no checks: the caller checks fragments against records).
    /// Bytes past the end of the file read as zeros, as they were never written. Uses O_DIRECT where it
    /// can: these are streaming reads (repair, scrub) that should neither cost a page-cache copy nor
    /// evict what clients read.
    pub fn read_range(&self, generation: u64, offset: u64, len: u32) -> Result<Bytes, VolumeError> {
        self.check_usable(generation)?;
        let capacity = self.meta.read().capacity;
        match hoard_types::range_end(offset, u64::from(len)) {
            Some(end) if end <= capacity.max(self.data_len()) => {}
            _ => {
                return Err(VolumeError::OutOfRange(format!(
                    "extent {}/{}: range of {len} bytes at {offset} passes the capacity {capacity}",
                    self.volume, self.member
                )));
            }
        }
        let start = DAT_HEADER_LEN + offset;
        let (file, lo, hi) = match &self.dat_direct {
            Some(d) => {
                let a = aligned::ALIGN as u64;
                (d, start / a * a, (start + len as u64).div_ceil(a) * a)
            }
            None => (&self.dat, start, start + len as u64),
        };
        let direct = self.dat_direct.is_some();
        let mut buf = aligned::AlignedBuf::with_len((hi - lo) as usize);
        let slice = buf.as_mut_slice();
        let mut done = 0;
        while done < slice.len() {
            match file.read_at(&mut slice[done..], lo + done as u64) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    // An O_DIRECT read that stops short of a page ends at the end of the file (small
                    // fragments are written through the page cache, so the file need not end on a
                    // page); reading on from there, unaligned, would fail with EINVAL.
                    if direct && !done.is_multiple_of(aligned::ALIGN) {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_failure("read .dat", e)),
            }
        }
        slice[done..].fill(0);
        let skip = (start - lo) as usize;
        Ok(Bytes::from_owner(buf).slice(skip..skip + len as usize))
    }

    /// Rewrites one fragment in place (range repair), after checking it against its record; durable
    /// before it returns.
    pub fn repair_fragment(
        &self,
        generation: u64,
        record: &BlockRecord,
        fragment: &[u8],
    ) -> Result<(), VolumeError> {
        self.check_usable(generation)?;
        let want = record
            .crcs
            .get(self.member as usize)
            .copied()
            .ok_or_else(|| VolumeError::BadRequest("record lacks this member's crc".into()))?;
        if fragment.len() != record.frag_len as usize || crc32c::crc32c(fragment) != want {
            return Err(VolumeError::BadRequest(
                "repaired fragment does not match its record".into(),
            ));
        }
        // The caller's record must be the one this extent's own index holds at that offset: a repair
        // never writes where this member did not store that block.
        let mut mine: Option<BlockRecord> = None;
        self.for_each_record(|_, r| {
            if r.offset == record.offset {
                mine = Some(r.clone());
            }
        })?;
        match mine {
            Some(r)
                if r.hash == record.hash
                    && r.frag_len == record.frag_len
                    && r.block_len == record.block_len
                    && r.crcs == record.crcs => {}
            Some(r) => {
                return Err(VolumeError::BadRequest(format!(
                    "record for block {} does not match the index of volume {} member {} at offset {} (block {})",
                    record.hash.short(),
                    self.volume,
                    self.member,
                    record.offset,
                    r.hash.short()
                )));
            }
            None => {
                return Err(VolumeError::BadRequest(format!(
                    "volume {} member {} holds no block at offset {}",
                    self.volume, self.member, record.offset
                )));
            }
        }
        // The index holds it, so it lies in what was written; checked anyway before the write.
        self.check_written(record.offset, u64::from(record.frag_len))?;
        let _one_sync = self.sync_lock.lock();
        self.dat
            .write_all_at(fragment, DAT_HEADER_LEN + record.offset)
            .and_then(|_| self.dat.sync_data())
            .map_err(|e| self.io_failure("repair write", e))?;
        tracing::info!(
            volume = self.volume,
            member = self.member,
            offset = record.offset,
            "fragment repaired in place"
        );
        Ok(())
    }

    /// Visits every valid record of the `.idx`, in slot order.
    pub fn for_each_record(
        &self,
        f: impl FnMut(u64, &BlockRecord),
    ) -> Result<IdxScan, VolumeError> {
        let width = self.header.k + self.header.m;
        scan_idx(&self.idx, width, f)
            .map_err(|e| VolumeError::io(&idx_path(&self.dir, self.member), e))
    }
}

fn read_exact_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    f.read_exact_at(buf, offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoard_types::BlockHash;
    use std::io::Write;

    fn member(volume: VolumeId, m: MemberIndex) -> MemberFile {
        MemberFile {
            format: 1,
            volume,
            member: m,
            k: 2,
            m: 1,
            generation: 1,
            epoch: 0,
            capacity: 1 << 20,
            disk_id: "disk-t".into(),
            created_unix_ms: 0,
        }
    }

    fn rec(i: u64, frag: &[u8]) -> BlockRecord {
        BlockRecord {
            hash: BlockHash::of(&i.to_le_bytes()),
            offset: i * 64,
            frag_len: frag.len() as u32,
            block_len: 2 * frag.len() as u32,
            crcs: vec![crc32c::crc32c(frag); 3],
        }
    }

    fn create(dir: &Path) -> Arc<Extent> {
        Extent::create(&dir.join("staging"), &dir.join("extents/7"), member(7, 0)).unwrap()
    }

    #[tokio::test]
    async fn in_place_repair_only_writes_what_the_index_holds() {
        let dir = tempfile::tempdir().unwrap();
        let e = create(dir.path());
        e.fence(1, 1).unwrap();
        let frag = Bytes::from(vec![5u8; 64]);
        e.append(1, 1, rec(0, &frag), frag.clone()).await.unwrap();
        // Rot the stored fragment.
        e.dat.write_all_at(&[9u8; 64], DAT_HEADER_LEN).unwrap();
        let crc = crc32c::crc32c(&frag);
        assert!(e.read_fragment(1, 0, 64, crc).is_err());

        // A record for another block, or for an offset where nothing was stored, is refused.
        let mut other = rec(0, &frag);
        other.hash = BlockHash::of(b"someone else");
        let err = e.repair_fragment(1, &other, &frag).unwrap_err();
        assert!(
            err.to_string().contains("does not match the index"),
            "{err}"
        );
        let nothing = rec(3, &frag);
        let err = e.repair_fragment(1, &nothing, &frag).unwrap_err();
        assert!(
            err.to_string().contains("holds no block at offset 192"),
            "{err}"
        );
        assert!(e.read_fragment(1, 0, 64, crc).is_err(), "nothing written");

        // The record the index holds is repaired in place.
        e.repair_fragment(1, &rec(0, &frag), &frag).unwrap();
        assert_eq!(e.read_fragment(1, 0, 64, crc).unwrap(), frag);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn range_reads_race_appends_that_extend_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = create(dir.path());
        e.fence(1, 1).unwrap();
        // Small fragments go through the page cache, so the file keeps ending mid-page while it grows;
        // streaming reads over what was written (scrub, moves) run beside the appends.
        let reader = {
            let e = Arc::clone(&e);
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                let mut reads = 0u64;
                while std::time::Instant::now() < deadline {
                    let len = e.data_len();
                    if len > 0 {
                        e.read_range(1, 0, len as u32).unwrap();
                        reads += 1;
                    }
                }
                reads
            })
        };
        let frag = Bytes::from(vec![4u8; 64]);
        let mut i = 0;
        while !reader.is_finished() && i < 16_000 {
            e.append(1, 1, rec(i, &frag), frag.clone()).await.unwrap();
            i += 1;
        }
        let reads = reader.join().unwrap();
        assert!(reads > 0 && i > 0);
        assert!(e.failure().is_none(), "{:?}", e.failure());
        let got = e.read_range(1, 0, 3 * aligned::ALIGN as u32).unwrap();
        assert!(got[..64] == frag[..]);
    }

    #[tokio::test]
    async fn page_sized_appends_from_aligned_and_unaligned_buffers_land_alike() {
        let dir = tempfile::tempdir().unwrap();
        let e = create(dir.path());
        e.fence(1, 1).unwrap();
        let len = 4 * aligned::ALIGN;
        let at = |i: u64, frag: &[u8]| BlockRecord {
            offset: i * len as u64,
            ..rec(i, frag)
        };
        // Written as it is (O_DIRECT where the filesystem has it) ...
        let mut a = aligned::AlignedBuf::with_len(len);
        a.as_mut_slice()
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 13) as u8);
        let want_a = Bytes::copy_from_slice(a.as_slice());
        e.append(1, 1, at(0, a.as_slice()), a).await.unwrap();
        // ... and copied into an aligned buffer first: a page-sized slice one byte into its allocation.
        let big: Bytes = (0..len + 1).map(|i| (i % 7) as u8).collect();
        let b = big.slice(1..);
        assert_ne!(b.as_ptr() as usize % aligned::ALIGN, 0);
        e.append(1, 1, at(1, &b), b.clone()).await.unwrap();
        drop(e);
        let (e, scan) = Extent::open(&dir.path().join("extents/7")).unwrap();
        assert_eq!(scan.records, 2);
        for (i, want) in [(0u64, &want_a), (1, &b)] {
            let got = e
                .read_fragment(1, i * len as u64, len as u32, crc32c::crc32c(want))
                .unwrap();
            assert!(got == *want, "fragment {i} differs");
        }
    }

    #[tokio::test]
    async fn appends_are_readable_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let e = create(dir.path());
        assert_eq!(e.fence(1, 1).unwrap(), 0);
        let frag = Bytes::from(vec![5u8; 64]);
        let mut tasks = Vec::new();
        for i in 0..50u64 {
            let (e, frag) = (Arc::clone(&e), frag.clone());
            tasks.push(tokio::spawn(async move {
                e.append(1, 1, rec(i, &frag), frag).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(e.records(), 50);
        let crc = crc32c::crc32c(&frag);
        assert_eq!(e.read_fragment(1, 49 * 64, 64, crc).unwrap(), frag);
        assert!(matches!(
            e.read_fragment(1, 0, 64, crc ^ 1),
            Err(VolumeError::Corrupt { .. })
        ));
        assert!(matches!(
            e.read_fragment(2, 0, 64, crc),
            Err(VolumeError::StaleGeneration { .. })
        ));
        drop(e);
        let (e, scan) = Extent::open(&dir.path().join("extents/7")).unwrap();
        assert_eq!(scan.records, 50);
        assert_eq!(scan.cut_bytes, 0);
        assert_eq!(e.data_len(), 50 * 64);
        let mut seen = 0;
        e.for_each_record(|_, r| {
            assert_eq!(r.frag_len, 64);
            seen += 1;
        })
        .unwrap();
        assert_eq!(seen, 50);
    }

    #[tokio::test]
    async fn a_torn_idx_tail_is_cut_and_rot_in_the_middle_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let e = create(dir.path());
        e.fence(1, 1).unwrap();
        let frag = Bytes::from(vec![9u8; 64]);
        for i in 0..5u64 {
            e.append(1, 1, rec(i, &frag), frag.clone()).await.unwrap();
        }
        drop(e);
        let ext = dir.path().join("extents/7");
        let idx = idx_path(&ext, 0);
        let rl = BlockRecord::encoded_len(3) as u64;
        // Half a record at the end: a crash mid-append.
        let mut f = std::fs::OpenOptions::new().append(true).open(&idx).unwrap();
        f.write_all(&rec(5, &frag).encode()[..30]).unwrap();
        drop(f);
        // A flipped byte in record 2: rot.
        let f = std::fs::OpenOptions::new().write(true).open(&idx).unwrap();
        f.write_all_at(&[0xff], IDX_HEADER_LEN + 2 * rl + 45)
            .unwrap();
        drop(f);
        let (e, scan) = Extent::open(&ext).unwrap();
        assert_eq!(scan.records, 4);
        assert_eq!(scan.bad_slots, vec![2]);
        assert_eq!(scan.cut_bytes, 30);
        assert_eq!(
            std::fs::metadata(&idx).unwrap().len(),
            IDX_HEADER_LEN + 5 * rl
        );
        // New appends go after the surviving slots, and reopen finds them.
        e.fence(1, 2).unwrap();
        e.append(1, 2, rec(9, &frag), frag.clone()).await.unwrap();
        drop(e);
        let (_, scan) = Extent::open(&ext).unwrap();
        assert_eq!(scan.records, 5);
        assert_eq!(scan.cut_bytes, 0);
    }

    #[tokio::test]
    async fn fencing_refuses_older_writers_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let e = create(dir.path());
        e.fence(1, 3).unwrap();
        let frag = Bytes::from(vec![1u8; 64]);
        let old = e.append(1, 2, rec(0, &frag), frag.clone()).await;
        assert!(matches!(
            old,
            Err(VolumeError::Fenced {
                have: 3,
                asked: 2,
                ..
            })
        ));
        e.append(1, 3, rec(0, &frag), frag.clone()).await.unwrap();
        assert!(matches!(e.fence(1, 2), Err(VolumeError::Fenced { .. })));
        // The fence answers the furthest byte written, for the next writer to continue from.
        assert_eq!(e.fence(1, 4).unwrap(), 64);
        drop(e);
        let (e, _) = Extent::open(&dir.path().join("extents/7")).unwrap();
        assert_eq!(e.member_file().epoch, 4);
        assert!(e.append(1, 3, rec(1, &frag), frag.clone()).await.is_err());
    }

    #[tokio::test]
    async fn appends_with_bad_fragments_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = create(dir.path());
        e.fence(1, 1).unwrap();
        let frag = Bytes::from(vec![1u8; 64]);
        let mut r = rec(0, &frag);
        r.crcs[0] ^= 1;
        assert!(matches!(
            e.append(1, 1, r, frag.clone()).await,
            Err(VolumeError::BadRequest(_))
        ));
        let mut r = rec(0, &frag);
        r.offset = (1 << 20) - 32;
        assert!(matches!(
            e.append(1, 1, r, frag.clone()).await,
            Err(VolumeError::OutOfRange(_))
        ));
        assert_eq!(e.records(), 0);
    }
}
