//! An extent being rebuilt: written in a staging directory, at the same offsets as its peers, and put in
//! service only once every byte and record is durable.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::VolumeError;
use crate::extent::{Extent, MemberFile, dat_path, idx_path};
use crate::format::{BlockRecord, DAT_HEADER_LEN, IDX_HEADER_LEN};

pub struct StagedExtent {
    pub mf: MemberFile,
    pub dir: PathBuf,
    dat: File,
    /// O_DIRECT handle for page-aligned writes, where the filesystem allows it.
    dat_direct: Option<File>,
    written: AtomicU64,
}

impl StagedExtent {
    pub fn create(dir: &Path, mf: MemberFile) -> Result<StagedExtent, VolumeError> {
        Extent::stage(dir, &mf)?;
        let p = dat_path(dir, mf.member);
        let dat = OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(|e| VolumeError::io(&p, e))?;
        let dat_direct = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&p)
                .ok()
        };
        Ok(StagedExtent {
            mf,
            dir: dir.to_path_buf(),
            dat,
            dat_direct,
            written: AtomicU64::new(0),
        })
    }

    /// Writes rebuilt bytes at `offset` of the data region.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        let end = hoard_types::range_end(offset, data.len() as u64);
        if end.is_none_or(|end| end > self.mf.capacity) {
            return Err(VolumeError::OutOfRange(format!(
                "staged write at {offset}+{} passes the capacity {}",
                data.len(),
                self.mf.capacity
            )));
        }
        let at = DAT_HEADER_LEN + offset;
        let a = crate::aligned::ALIGN;
        let res = match &self.dat_direct {
            Some(d) if at.is_multiple_of(a as u64) && data.len().is_multiple_of(a) => {
                d.write_all_at(crate::aligned::AlignedBuf::copy_of(data).as_slice(), at)
            }
            _ => self.dat.write_all_at(data, at),
        };
        res.map_err(|e| VolumeError::io(&dat_path(&self.dir, self.mf.member), e))?;
        self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Writes the records, syncs both files and renames the extent into `final_dir`.
    pub fn finish(
        &self,
        records: &[BlockRecord],
        final_dir: &Path,
    ) -> Result<Arc<Extent>, VolumeError> {
        let ip = idx_path(&self.dir, self.mf.member);
        let idx = OpenOptions::new()
            .write(true)
            .open(&ip)
            .map_err(|e| VolumeError::io(&ip, e))?;
        let mut buf =
            Vec::with_capacity(records.len() * BlockRecord::encoded_len(self.mf.k + self.mf.m));
        for r in records {
            buf.extend_from_slice(&r.encode());
        }
        idx.write_all_at(&buf, IDX_HEADER_LEN)
            .and_then(|_| idx.sync_all())
            .map_err(|e| VolumeError::io(&ip, e))?;
        self.dat
            .sync_all()
            .map_err(|e| VolumeError::io(&dat_path(&self.dir, self.mf.member), e))?;
        Extent::publish(&self.dir, final_dir)
    }
}
