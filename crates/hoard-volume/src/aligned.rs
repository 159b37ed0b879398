//! Page-aligned buffers for O_DIRECT writes, recycled through a small pool so that the hot path does not
//! map and fault in fresh memory for every fragment.

use std::alloc::{Layout, alloc, dealloc};
use std::ptr::NonNull;

use parking_lot::Mutex;

pub const ALIGN: usize = 4096;

/// Bytes of buffers kept for reuse, at most.
const POOL_BYTES: usize = 64 << 20;

/// A heap buffer whose address and capacity are multiples of [`ALIGN`].
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only read the bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn with_capacity(cap: usize) -> AlignedBuf {
        let cap = cap.div_ceil(ALIGN).max(1) * ALIGN;
        let layout = Layout::from_size_align(cap, ALIGN).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, cap, len: 0 }
    }

    /// A buffer holding a copy of `data`, from the pool when one fits.
    pub fn copy_of(data: &[u8]) -> AlignedBuf {
        let mut buf = take(data.len()).unwrap_or_else(|| AlignedBuf::with_capacity(data.len()));
        // SAFETY: capacity >= data.len(), the regions do not overlap (ours is a private allocation).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.ptr.as_ptr(), data.len()) };
        buf.len = data.len();
        buf
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` bytes from `ptr` were initialised by `copy_of`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, ALIGN).expect("valid layout");
        // SAFETY: allocated in `with_capacity` with this very layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) };
    }
}

struct Pool {
    free: Vec<AlignedBuf>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});

fn take(len: usize) -> Option<AlignedBuf> {
    let mut p = POOL.lock();
    let i = p
        .free
        .iter()
        .position(|b| b.cap >= len && b.cap <= len * 2 + ALIGN)?;
    let b = p.free.swap_remove(i);
    p.bytes -= b.cap;
    Some(b)
}

/// Returns a buffer to the pool (or frees it when the pool is full).
pub fn recycle(buf: AlignedBuf) {
    let mut p = POOL.lock();
    if p.bytes + buf.cap <= POOL_BYTES {
        p.bytes += buf.cap;
        p.free.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_hold_the_copy() {
        for len in [1usize, 4095, 4096, 700_416] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let b = AlignedBuf::copy_of(&data);
            assert_eq!(b.as_slice(), &data[..]);
            assert_eq!(b.ptr.as_ptr() as usize % ALIGN, 0);
            recycle(b);
        }
        let again = AlignedBuf::copy_of(&[7u8; 700_000]);
        assert_eq!(again.as_slice().len(), 700_000);
        assert!(again.as_slice().iter().all(|&x| x == 7));
    }
}
