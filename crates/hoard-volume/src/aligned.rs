//! Page-aligned buffers for O_DIRECT reads and writes, recycled through a small pool so that the hot
//! paths do not map and fault in fresh memory for every fragment or span (on virtual machines the page
//! faults cost more than the copies).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

use parking_lot::Mutex;

pub const ALIGN: usize = 4096;

/// Bytes of buffers kept for reuse, at most.
const POOL_BYTES: usize = 256 << 20;

/// One page-aligned allocation.
struct Block {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: a Block is a plain owned allocation, like a Vec<u8>'s.
unsafe impl Send for Block {}

impl Block {
    fn new(cap: usize) -> Block {
        let cap = cap.div_ceil(ALIGN).max(1) * ALIGN;
        let layout = Layout::from_size_align(cap, ALIGN).expect("valid layout");
        // SAFETY: the layout has a non-zero size. Zeroed, so that every byte is initialised.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Block { ptr, cap }
    }

    fn free(self) {
        let layout = Layout::from_size_align(self.cap, ALIGN).expect("valid layout");
        // SAFETY: allocated in `new` with this very layout, and not used after.
        unsafe { dealloc(self.ptr.as_ptr(), layout) };
    }
}

struct Pool {
    free: Vec<Block>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});

fn take(len: usize) -> Block {
    let mut p = POOL.lock();
    let fit = p
        .free
        .iter()
        .position(|b| b.cap >= len && b.cap <= len * 2 + ALIGN);
    match fit {
        Some(i) => {
            let b = p.free.swap_remove(i);
            p.bytes -= b.cap;
            b
        }
        None => {
            drop(p);
            Block::new(len)
        }
    }
}

fn give_back(b: Block) {
    let mut p = POOL.lock();
    if p.bytes + b.cap <= POOL_BYTES {
        p.bytes += b.cap;
        p.free.push(b);
    } else {
        drop(p);
        b.free();
    }
}

/// A buffer whose address is a multiple of [`ALIGN`]; its memory goes back to the pool when dropped.
pub struct AlignedBuf {
    block: Option<Block>,
    len: usize,
}

impl AlignedBuf {
    /// A buffer of `len` bytes with arbitrary (but initialised) contents.
    pub fn with_len(len: usize) -> AlignedBuf {
        AlignedBuf {
            block: Some(take(len)),
            len,
        }
    }

    /// A buffer holding a copy of `data`.
    pub fn copy_of(data: &[u8]) -> AlignedBuf {
        let mut buf = AlignedBuf::with_len(data.len());
        buf.as_mut_slice().copy_from_slice(data);
        buf
    }

    pub fn as_slice(&self) -> &[u8] {
        let b = self.block.as_ref().expect("present until drop");
        // SAFETY: the block holds at least `len` initialised bytes (zeroed at allocation, written since).
        unsafe { std::slice::from_raw_parts(b.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let b = self.block.as_ref().expect("present until drop");
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(b.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Some(b) = self.block.take() {
            give_back(b);
        }
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
            assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
        }
        // Reused from the pool, and overwritten in full.
        let again = AlignedBuf::copy_of(&[7u8; 700_000]);
        assert_eq!(again.as_slice().len(), 700_000);
        assert!(again.as_slice().iter().all(|&x| x == 7));
        let shared = bytes::Bytes::from_owner(again);
        assert_eq!(shared.len(), 700_000);
    }
}
