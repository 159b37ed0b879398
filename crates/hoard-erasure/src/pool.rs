//! Reusable fragment-sized buffers. Encoding and decoding a 4 MiB block needs megabytes of scratch
//! space; fresh allocations of that size are mapped and faulted in page by page on every block, which
//! costs more than the coding itself. Buffers come back here when the last `Bytes` pointing into them is
//! dropped.

use std::sync::Mutex;

use bytes::Bytes;

/// Bytes of buffers kept for reuse, at most.
const POOL_BYTES: usize = 128 << 20;

struct Pool {
    free: Vec<Vec<u8>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});

/// A buffer of exactly `len` bytes, with arbitrary contents.
pub fn take(len: usize) -> Vec<u8> {
    {
        let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = p
            .free
            .iter()
            .position(|b| b.capacity() >= len && b.capacity() <= len + len / 2 + 4096)
        {
            let mut b = p.free.swap_remove(i);
            p.bytes -= b.capacity();
            // Pooled buffers are kept at their full length (see `Drop`): shortening is enough.
            b.truncate(len);
            return b;
        }
    }
    vec![0u8; len]
}

/// A pooled buffer wrapped for `Bytes`; it returns to the pool when dropped.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut b = std::mem::take(&mut self.0);
        // Initialise the whole capacity once, so that `take` may hand out any length up to it.
        let cap = b.capacity();
        b.resize(cap, 0);
        let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if p.bytes + cap <= POOL_BYTES {
            p.bytes += cap;
            p.free.push(b);
        }
    }
}

/// Shares a buffer as `Bytes`, handing it back to the pool when the last clone is dropped.
pub fn share(buf: Vec<u8>) -> Bytes {
    Bytes::from_owner(Pooled(buf))
}
