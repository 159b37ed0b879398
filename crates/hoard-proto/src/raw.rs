//! Raw fragment reads: a small binary protocol that shares the volume server's gRPC port, for clients
//! that read whole data fragments and check the block's BLAKE3 themselves.
//!
//! gRPC costs a user-space copy on each side of every message (the encoder writes the fragment into its
//! frame buffer; the decoder gathers HTTP/2 frames into another). Here the volume server answers with
//! `sendfile(2)` straight from the page cache, and the client reads each fragment into its place in the
//! block's buffer: the bytes are copied once, by the kernel, on the way into the client.
//!
//! The server does not check the fragment's crc32c on this path; the client checks the whole block
//! against its BLAKE3 hash, which is the stronger check, and on a mismatch reads again over gRPC, where
//! every fragment's crc32c is checked and a corrupt one is reported and rewritten.
//!
//! A connection carries one request at a time, in order; all integers are little-endian.
//!
//! ```text
//! request  = MAGIC(4) volume(u64) member(u32) generation(u64) offset(u64) len(u32)      36 bytes
//! response = status(u8) n(u32) then n bytes: the fragment (status 0) or a UTF-8 error (status 1)
//! ```
//!
//! A gRPC connection starts with the HTTP/2 preface (`PRI * HTTP/2.0`); a raw one with [`MAGIC`], whose
//! first byte is not ASCII, so the server tells them apart by the first byte.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub const MAGIC: [u8; 4] = [0xF7, b'H', b'F', b'1'];
pub const REQUEST_LEN: usize = 36;
/// The largest fragment a raw read may ask for.
pub const MAX_READ: u32 = 16 * 1024 * 1024;
pub const STATUS_OK: u8 = 0;
pub const STATUS_ERROR: u8 = 1;
/// The longest error message a server sends.
const MAX_ERROR: usize = 4096;

/// Whether a connection whose first byte is `b` speaks this protocol.
pub fn is_raw(b: u8) -> bool {
    b == MAGIC[0]
}

/// One fragment read: `len` bytes at `offset` of the data region of member `member` of `volume`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRead {
    pub volume: u64,
    pub member: u32,
    pub generation: u64,
    pub offset: u64,
    pub len: u32,
}

impl RawRead {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..12].copy_from_slice(&self.volume.to_le_bytes());
        b[12..16].copy_from_slice(&self.member.to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        b[32..36].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<RawRead, String> {
        if b[0..4] != MAGIC {
            return Err(format!("not a raw read request (starts {:02x?})", &b[0..4]));
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let r = RawRead {
            volume: u64_at(4),
            member: u32_at(12),
            generation: u64_at(16),
            offset: u64_at(24),
            len: u32_at(32),
        };
        if r.len == 0 || r.len > MAX_READ {
            return Err(format!(
                "raw read of {} bytes: must be 1 to {MAX_READ}",
                r.len
            ));
        }
        Ok(r)
    }
}

/// Reads the next request; `None` when the peer closed the connection between requests.
pub async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Result<RawRead, String>>> {
    let mut b = [0u8; REQUEST_LEN];
    let mut got = 0;
    while got < REQUEST_LEN {
        let n = r.read(&mut b[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(Some(RawRead::decode(&b)))
}

pub fn ok_header(len: u32) -> [u8; 5] {
    let mut h = [STATUS_OK, 0, 0, 0, 0];
    h[1..].copy_from_slice(&len.to_le_bytes());
    h
}

pub async fn write_error<W: AsyncWrite + Unpin>(w: &mut W, msg: &str) -> std::io::Result<()> {
    let mut end = msg.len().min(MAX_ERROR);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    let msg = &msg.as_bytes()[..end];
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(STATUS_ERROR);
    out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    out.extend_from_slice(msg);
    w.write_all(&out).await
}

#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("raw read: {0}")]
    Io(#[from] std::io::Error),
    /// The server refused the read; the connection stays usable.
    #[error("volume server: {0}")]
    Refused(String),
    #[error("raw read: {0}")]
    Protocol(String),
}

/// Sends `req` and reads the fragment into `dst`'s spare capacity (which must hold `req.len` more
/// bytes), so that fragments land where the caller wants them without another copy.
pub async fn read_fragment<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    req: &RawRead,
    dst: &mut BytesMut,
) -> Result<(), RawError> {
    s.write_all(&req.encode()).await?;
    let mut h = [0u8; 5];
    s.read_exact(&mut h).await?;
    let n = u32::from_le_bytes(h[1..].try_into().expect("4 bytes"));
    match h[0] {
        STATUS_OK if n == req.len => {}
        STATUS_OK => {
            return Err(RawError::Protocol(format!(
                "asked for {} bytes, server sends {n}",
                req.len
            )));
        }
        STATUS_ERROR if n as usize <= MAX_ERROR => {
            let mut msg = vec![0u8; n as usize];
            s.read_exact(&mut msg).await?;
            return Err(RawError::Refused(
                String::from_utf8_lossy(&msg).into_owned(),
            ));
        }
        st => return Err(RawError::Protocol(format!("bad response status {st}"))),
    }
    let want = dst.len() + n as usize;
    if dst.capacity() < want {
        return Err(RawError::Protocol(format!(
            "buffer holds {} bytes, fragment is {n}",
            dst.capacity() - dst.len()
        )));
    }
    while dst.len() < want {
        // `read_buf` fills spare capacity without zeroing it first; `take` keeps it from reading past
        // this fragment into the next response.
        let left = (want - dst.len()) as u64;
        let got = (&mut *s).take(left).read_buf(dst).await?;
        if got == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    Ok(())
}

/// Where a data fragment of a block is read from.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    /// The volume server, `host:port`.
    pub address: &'a str,
    pub member: u32,
    pub generation: u64,
}

/// Idle connections for raw reads, by volume server address.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<TcpStream>>>,
}

/// Idle connections kept per volume server.
const IDLE_PER_SERVER: usize = 32;

impl Pool {
    async fn take(&self, address: &str) -> std::io::Result<TcpStream> {
        let idle = {
            let mut m = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            m.get_mut(address).and_then(Vec::pop)
        };
        if let Some(s) = idle {
            return Ok(s);
        }
        let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        s.set_nodelay(true)?;
        Ok(s)
    }

    fn give_back(&self, address: &str, s: TcpStream) {
        let mut m = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let v = m.entry(address.to_string()).or_default();
        if v.len() < IDLE_PER_SERVER {
            v.push(s);
        }
    }

    /// Reads one fragment into `dst`'s spare capacity. A connection goes back to the pool only after a
    /// whole answer, so that none is reused out of step.
    pub async fn read(
        &self,
        address: &str,
        req: RawRead,
        dst: &mut BytesMut,
    ) -> Result<(), RawError> {
        let mut s = self.take(address).await?;
        let r = tokio::time::timeout(READ_TIMEOUT, read_fragment(&mut s, &req, dst))
            .await
            .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()));
        if matches!(r, Ok(()) | Err(RawError::Refused(_))) {
            self.give_back(address, s);
        }
        r
    }

    /// Reads a block's `k` data fragments (`sources[i]` holds member `i`) into one buffer, each
    /// straight into its place, and cuts it to `block_len`. `None` when any read fails. The caller
    /// checks the bytes against the block's hash: the server checked no crc32c.
    pub async fn read_block(
        &self,
        volume: u64,
        offset: u64,
        frag_len: usize,
        block_len: usize,
        sources: &[Source<'_>],
    ) -> Option<Bytes> {
        let k = sources.len();
        if k == 0 || frag_len == 0 || frag_len > MAX_READ as usize || block_len > k * frag_len {
            return None;
        }
        // One allocation cut into the k fragments' places; each read fills its own.
        let mut rest = BytesMut::with_capacity(k * frag_len);
        let mut places = Vec::with_capacity(k);
        for _ in 0..k {
            let tail = rest.split_off(frag_len.min(rest.capacity()));
            places.push(std::mem::replace(&mut rest, tail));
        }
        let reads = sources.iter().zip(places).map(|(s, mut place)| {
            let req = RawRead {
                volume,
                member: s.member,
                generation: s.generation,
                offset,
                len: frag_len as u32,
            };
            async move {
                self.read(s.address, req, &mut place)
                    .await
                    .ok()
                    .map(|()| place)
            }
        });
        let mut filled = futures::future::join_all(reads).await.into_iter();
        let mut block = filled.next()??;
        for place in filled {
            // Contiguous pieces of one allocation: joining them moves no bytes.
            block.unsplit(place?);
        }
        block.truncate(block_len);
        Some(block.freeze())
    }
}

/// How long one raw read may take before the connection is given up.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_named() {
        let r = RawRead {
            volume: 7,
            member: 3,
            generation: 2,
            offset: 1 << 33,
            len: 699_051,
        };
        assert_eq!(RawRead::decode(&r.encode()), Ok(r));
        let mut b = r.encode();
        b[0] = b'P';
        assert!(RawRead::decode(&b).unwrap_err().contains("not a raw read"));
        let too_big = RawRead {
            len: MAX_READ + 1,
            ..r
        };
        assert!(
            RawRead::decode(&too_big.encode())
                .unwrap_err()
                .contains("must be 1 to")
        );
        assert!(is_raw(MAGIC[0]));
        assert!(!is_raw(b'P'));
    }

    #[tokio::test]
    async fn a_fragment_lands_after_what_the_buffer_holds() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let req = RawRead {
            volume: 1,
            member: 0,
            generation: 1,
            offset: 0,
            len: 100_000,
        };
        let srv = tokio::spawn(async move {
            let got = read_request(&mut server).await.unwrap().unwrap().unwrap();
            let body: Vec<u8> = (0..got.len).map(|i| (i % 251) as u8).collect();
            server.write_all(&ok_header(got.len)).await.unwrap();
            server.write_all(&body).await.unwrap();
            let bad = read_request(&mut server).await.unwrap().unwrap().unwrap();
            write_error(&mut server, &format!("no member {} here", bad.member))
                .await
                .unwrap();
            assert!(read_request(&mut server).await.unwrap().is_none());
        });
        let mut dst = BytesMut::with_capacity(100_010);
        dst.extend_from_slice(b"0123456789");
        read_fragment(&mut client, &req, &mut dst).await.unwrap();
        assert_eq!(&dst[..10], b"0123456789");
        assert_eq!(dst.len(), 100_010);
        assert!(
            dst[10..]
                .iter()
                .enumerate()
                .all(|(i, b)| *b == (i % 251) as u8)
        );
        let mut small = BytesMut::with_capacity(req.len as usize);
        let err = read_fragment(&mut client, &RawRead { member: 9, ..req }, &mut small)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RawError::Refused(ref m) if m == "no member 9 here"),
            "{err}"
        );
        drop(client);
        srv.await.unwrap();
    }
}
