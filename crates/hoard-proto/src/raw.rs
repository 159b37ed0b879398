//! Raw fragment reads and appends, and raw block puts: a small binary protocol that shares the gRPC port
//! of the volume server (reads, appends) and of the frontend (puts), for the hot paths that move whole
//! fragments and blocks.
//!
//! gRPC costs a user-space copy on each side of every message (the encoder writes the fragment into its
//! frame buffer; the decoder gathers HTTP/2 frames into another). Here the bytes are copied once, by the
//! kernel: a read is answered with `sendfile(2)` straight from the page cache into the socket, and lands
//! in its place in the reader's block buffer; an append is written from the sender's stripe buffer and
//! read by the volume server straight into the page-aligned buffer it writes to disk with O_DIRECT.
//!
//! The server does not check a read fragment's crc32c on this path; the client checks the whole block
//! against its BLAKE3 hash, which is the stronger check, and on a mismatch reads again over gRPC, where
//! every fragment's crc32c is checked and a corrupt one is reported and rewritten. An append is checked
//! against the crc32c in its record before it is written, as over gRPC. A put is read straight into the
//! buffer the frontend hashes and encodes from, and answered as the gRPC `Put` would be (its failures
//! carry the same gRPC code and message).
//!
//! A connection carries one request at a time, in order; all integers are little-endian.
//!
//! ```text
//! read     = READ_MAGIC(4) volume(u64) member(u32) generation(u64) offset(u64) len(u32)   36 bytes
//! append   = APPEND_MAGIC(4) volume(u64) member(u32) generation(u64) epoch(u64)
//!            hash(32) offset(u64) frag_len(u32) block_len(u32) width(u16) crcs(u32 x width)
//!            then frag_len bytes of fragment
//! put      = PUT_MAGIC(4) len(u32) has_expected(u8) expected_hash(32)                      41 bytes
//!            then len bytes of block (1 B to 4 MiB)
//! response = status(u8) n(u32) then n bytes: the fragment of a read (status 0; an append's is empty;
//!            a put's is the block's hash(32) and deduplicated(u8)) or a UTF-8 error (status 1:
//!            refused; status 2: the member cannot take writes now; status 3: the request was
//!            malformed and the server closes the connection; status 4: the put failed, and the
//!            message starts with its gRPC code(u8))
//! ```
//!
//! A gRPC connection starts with the HTTP/2 preface (`PRI * HTTP/2.0`); a raw one with a magic whose
//! first byte is not ASCII, so the server tells them apart by the first byte.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const MAGIC: [u8; 4] = [0xF7, b'H', b'F', b'1'];
pub const APPEND_MAGIC: [u8; 4] = [0xF7, b'H', b'A', b'1'];
pub const PUT_MAGIC: [u8; 4] = [0xF7, b'H', b'P', b'1'];
pub const PUT_HEADER_LEN: usize = 4 + 4 + 1 + 32;
pub const REQUEST_LEN: usize = 36;
/// The shortest request of any kind (a read): a new raw connection must send this many bytes at once.
pub const MIN_REQUEST_LEN: usize = REQUEST_LEN;
/// An append's header before its crcs.
const APPEND_FIXED_LEN: usize = 4 + 8 + 4 + 8 + 8 + 32 + 8 + 4 + 4 + 2;
/// The largest fragment a raw read may ask for.
pub const MAX_READ: u32 = 16 * 1024 * 1024;
/// The largest fragment an append may carry: a whole block of the largest size (`k` = 1), page aligned.
pub const MAX_APPEND: u32 = hoard_types::MAX_BLOCK_LEN as u32 + hoard_types::DIRECT_ALIGN as u32;
/// The most members (so crcs) a volume may have.
const MAX_WIDTH: usize = 64;
pub const STATUS_OK: u8 = 0;
pub const STATUS_ERROR: u8 = 1;
/// The member cannot take writes now (its extent or disk failed); gRPC's `UNAVAILABLE`.
pub const STATUS_UNAVAILABLE: u8 = 2;
/// The request could not be parsed; the server closes the connection after this answer.
pub const STATUS_MALFORMED: u8 = 3;
/// The put failed; the message starts with the gRPC code (one byte) it failed with.
pub const STATUS_FAILED: u8 = 4;
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

/// One fragment append: the fragment of block `hash` for member `member` of `volume`, written at
/// `offset` of the member's data region under the write lease `epoch`, with the block's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawAppend {
    pub volume: u64,
    pub member: u32,
    pub generation: u64,
    pub epoch: u64,
    pub hash: [u8; 32],
    pub offset: u64,
    pub frag_len: u32,
    pub block_len: u32,
    /// The crc32c of every member's fragment, in member order.
    pub crcs: Vec<u32>,
}

impl RawAppend {
    /// The request up to the fragment's bytes, which follow it.
    pub fn encode_header(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(APPEND_FIXED_LEN + 4 * self.crcs.len());
        b.extend_from_slice(&APPEND_MAGIC);
        b.extend_from_slice(&self.volume.to_le_bytes());
        b.extend_from_slice(&self.member.to_le_bytes());
        b.extend_from_slice(&self.generation.to_le_bytes());
        b.extend_from_slice(&self.epoch.to_le_bytes());
        b.extend_from_slice(&self.hash);
        b.extend_from_slice(&self.offset.to_le_bytes());
        b.extend_from_slice(&self.frag_len.to_le_bytes());
        b.extend_from_slice(&self.block_len.to_le_bytes());
        b.extend_from_slice(&(self.crcs.len() as u16).to_le_bytes());
        for c in &self.crcs {
            b.extend_from_slice(&c.to_le_bytes());
        }
        b
    }

    /// The fixed part of the header; the crcs (as many as it says) are read after it.
    fn decode_fixed(b: &[u8; APPEND_FIXED_LEN]) -> Result<(RawAppend, usize), String> {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let a = RawAppend {
            volume: u64_at(4),
            member: u32_at(12),
            generation: u64_at(16),
            epoch: u64_at(24),
            hash: b[32..64].try_into().expect("32 bytes"),
            offset: u64_at(64),
            frag_len: u32_at(72),
            block_len: u32_at(76),
            crcs: Vec::new(),
        };
        let width = u16::from_le_bytes(b[80..82].try_into().expect("2 bytes")) as usize;
        if a.frag_len == 0 || a.frag_len > MAX_APPEND {
            return Err(format!(
                "raw append of {} bytes: must be 1 to {MAX_APPEND}",
                a.frag_len
            ));
        }
        if width == 0 || width > MAX_WIDTH {
            return Err(format!(
                "raw append with {width} crcs: a volume has 1 to {MAX_WIDTH} members"
            ));
        }
        Ok((a, width))
    }
}

/// One block put: `len` bytes of block follow, which must hash to `expected` when it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawPut {
    pub len: u32,
    pub expected: Option<[u8; 32]>,
}

impl RawPut {
    pub fn encode(&self) -> [u8; PUT_HEADER_LEN] {
        let mut b = [0u8; PUT_HEADER_LEN];
        b[..4].copy_from_slice(&PUT_MAGIC);
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        if let Some(h) = &self.expected {
            b[8] = 1;
            b[9..].copy_from_slice(h);
        }
        b
    }

    pub fn decode(b: &[u8; PUT_HEADER_LEN]) -> Result<RawPut, String> {
        if b[..4] != PUT_MAGIC {
            return Err(format!("not a raw put (starts {:02x?})", &b[..4]));
        }
        let len = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
        // Sizes are checked by the client before it sends: a bad one here means the two sides are out
        // of step, and the block's bytes (if any) cannot be skipped safely.
        if len == 0 || u64::from(len) > hoard_types::MAX_BLOCK_LEN {
            return Err(format!(
                "raw put of {len} bytes: blocks hold 1 to {} bytes",
                hoard_types::MAX_BLOCK_LEN
            ));
        }
        let expected = match b[8] {
            0 => None,
            1 => Some(b[9..].try_into().expect("32 bytes")),
            f => return Err(format!("raw put: bad expected-hash flag {f}")),
        };
        Ok(RawPut { len, expected })
    }
}

/// What a put answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutAnswer {
    pub hash: [u8; 32],
    pub deduplicated: bool,
}

impl PutAnswer {
    pub fn encode(&self) -> [u8; 5 + 33] {
        let mut b = [0u8; 5 + 33];
        b[..5].copy_from_slice(&ok_header(33));
        b[5..37].copy_from_slice(&self.hash);
        b[37] = u8::from(self.deduplicated);
        b
    }
}

/// A request as the server reads it. An append's fragment bytes and a put's block follow on the
/// stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Read(RawRead),
    Append(RawAppend),
    Put(RawPut),
}

/// Fills `b`; `false` when the peer closed the connection before its first byte.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, b: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < b.len() {
        let n = r.read(&mut b[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(true)
}

/// Reads the next request (for an append, up to its fragment's bytes); `None` when the peer closed the
/// connection between requests. A malformed request leaves the stream out of step: answer, then close.
pub async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Result<Request, String>>> {
    let mut magic = [0u8; 4];
    if !read_full(r, &mut magic).await? {
        return Ok(None);
    }
    read_request_after(r, magic).await
}

/// [`read_request`] with deadlines: the next request's first byte must come within `idle`, and the
/// rest of its header within `header` of that byte. A peer that misses either gets `TimedOut`.
pub async fn read_request_timed<R: AsyncRead + Unpin>(
    r: &mut R,
    idle: Duration,
    header: Duration,
) -> std::io::Result<Option<Result<Request, String>>> {
    let timed_out = |_| std::io::Error::from(std::io::ErrorKind::TimedOut);
    let mut magic = [0u8; 4];
    let n = tokio::time::timeout(idle, r.read(&mut magic[..1]))
        .await
        .map_err(timed_out)??;
    if n == 0 {
        return Ok(None);
    }
    tokio::time::timeout(header, async {
        r.read_exact(&mut magic[1..]).await?;
        read_request_after(r, magic).await
    })
    .await
    .map_err(timed_out)?
}

/// The rest of a request whose magic has been read.
async fn read_request_after<R: AsyncRead + Unpin>(
    r: &mut R,
    magic: [u8; 4],
) -> std::io::Result<Option<Result<Request, String>>> {
    if magic == MAGIC {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&magic);
        r.read_exact(&mut b[4..]).await?;
        return Ok(Some(RawRead::decode(&b).map(Request::Read)));
    }
    if magic == PUT_MAGIC {
        let mut b = [0u8; PUT_HEADER_LEN];
        b[..4].copy_from_slice(&magic);
        r.read_exact(&mut b[4..]).await?;
        return Ok(Some(RawPut::decode(&b).map(Request::Put)));
    }
    if magic != APPEND_MAGIC {
        return Ok(Some(Err(format!(
            "not a raw request (starts {magic:02x?})"
        ))));
    }
    let mut b = [0u8; APPEND_FIXED_LEN];
    b[..4].copy_from_slice(&magic);
    r.read_exact(&mut b[4..]).await?;
    let (mut a, width) = match RawAppend::decode_fixed(&b) {
        Ok(x) => x,
        Err(why) => return Ok(Some(Err(why))),
    };
    let mut crcs = vec![0u8; 4 * width];
    r.read_exact(&mut crcs).await?;
    a.crcs = crcs
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    Ok(Some(Ok(Request::Append(a))))
}

pub fn ok_header(len: u32) -> [u8; 5] {
    let mut h = [STATUS_OK, 0, 0, 0, 0];
    h[1..].copy_from_slice(&len.to_le_bytes());
    h
}

/// Answers with a refusal (`STATUS_ERROR`) naming the problem.
pub async fn write_error<W: AsyncWrite + Unpin>(w: &mut W, msg: &str) -> std::io::Result<()> {
    write_failure(w, STATUS_ERROR, msg).await
}

/// Answers a put that failed with gRPC code `code` (and an append refused for a full disk, with
/// `RESOURCE_EXHAUSTED`).
pub async fn write_put_failure<W: AsyncWrite + Unpin>(
    w: &mut W,
    code: u8,
    msg: &str,
) -> std::io::Result<()> {
    write_answer(w, STATUS_FAILED, &[code], msg).await
}

/// Answers with a failure of the given status (`STATUS_ERROR` or `STATUS_UNAVAILABLE`).
pub async fn write_failure<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u8,
    msg: &str,
) -> std::io::Result<()> {
    write_answer(w, status, &[], msg).await
}

/// A failure's answer: the status, then `prefix` and the message, cut (on a character boundary) so
/// that both fit in [`MAX_ERROR`] bytes.
async fn write_answer<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u8,
    prefix: &[u8],
    msg: &str,
) -> std::io::Result<()> {
    let mut end = msg.len().min(MAX_ERROR - prefix.len());
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    let n = prefix.len() + end;
    let mut out = Vec::with_capacity(5 + n);
    out.push(status);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(prefix);
    out.extend_from_slice(&msg.as_bytes()[..end]);
    w.write_all(&out).await
}

#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("raw request: {0}")]
    Io(#[from] std::io::Error),
    /// The server refused the request; the connection stays usable.
    #[error("volume server: {0}")]
    Refused(String),
    /// The member cannot take writes now (its extent or disk failed); the connection stays usable.
    #[error("volume server: {0}")]
    Unavailable(String),
    /// The put failed with this gRPC code and message; the connection stays usable.
    #[error("{message}")]
    Failed { code: u8, message: String },
    /// The two sides disagree on the protocol (a malformed request or answer); the connection is
    /// dropped.
    #[error("raw request: {0}")]
    Protocol(String),
}

impl RawError {
    /// The server answered: the connection is in step for the next request.
    pub fn answered(&self) -> bool {
        matches!(
            self,
            RawError::Refused(_) | RawError::Unavailable(_) | RawError::Failed { .. }
        )
    }
}

/// Reads a response's status and length; a failure's message is read and returned as the error.
async fn read_status<S: AsyncRead + Unpin>(s: &mut S) -> Result<u32, RawError> {
    let mut h = [0u8; 5];
    s.read_exact(&mut h).await?;
    let n = u32::from_le_bytes(h[1..].try_into().expect("4 bytes"));
    match h[0] {
        STATUS_OK => Ok(n),
        st @ (STATUS_ERROR | STATUS_UNAVAILABLE | STATUS_FAILED | STATUS_MALFORMED)
            if n as usize <= MAX_ERROR =>
        {
            let mut msg = vec![0u8; n as usize];
            s.read_exact(&mut msg).await?;
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            Err(match (st, msg.split_first()) {
                (STATUS_ERROR, _) => RawError::Refused(text(&msg)),
                (STATUS_UNAVAILABLE, _) => RawError::Unavailable(text(&msg)),
                (STATUS_FAILED, Some((&code, rest))) => RawError::Failed {
                    code,
                    message: text(rest),
                },
                (STATUS_FAILED, None) => RawError::Protocol("a failed put without its code".into()),
                _ => RawError::Protocol(format!(
                    "the server could not parse the request: {}",
                    text(&msg)
                )),
            })
        }
        st => Err(RawError::Protocol(format!("bad response status {st}"))),
    }
}

/// Sends `req` and reads the fragment into `dst`'s spare capacity (which must hold `req.len` more
/// bytes), so that fragments land where the caller wants them without another copy.
pub async fn read_fragment<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    req: &RawRead,
    dst: &mut BytesMut,
) -> Result<(), RawError> {
    s.write_all(&req.encode()).await?;
    let n = read_status(s).await?;
    if n != req.len {
        return Err(RawError::Protocol(format!(
            "asked for {} bytes, server sends {n}",
            req.len
        )));
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

/// Sends one append, the header and the fragment in one vectored write, and waits for the answer: the
/// server answers once the fragment and its record are durable.
pub async fn append_fragment<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    req: &RawAppend,
    fragment: &Bytes,
) -> Result<(), RawError> {
    if fragment.len() != req.frag_len as usize {
        return Err(RawError::Protocol(format!(
            "fragment has {} bytes, the request says {}",
            fragment.len(),
            req.frag_len
        )));
    }
    let mut out = Bytes::from(req.encode_header()).chain(fragment.clone());
    s.write_all_buf(&mut out).await?;
    match read_status(s).await? {
        0 => Ok(()),
        n => Err(RawError::Protocol(format!(
            "an append is answered with no bytes, server sends {n}"
        ))),
    }
}

/// Sends one put, the header and the block in one vectored write, and waits for the answer: the frontend
/// answers once the block is durable (or was already stored).
pub async fn put_block<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    req: &RawPut,
    block: &Bytes,
) -> Result<PutAnswer, RawError> {
    if block.len() != req.len as usize {
        return Err(RawError::Protocol(format!(
            "block has {} bytes, the request says {}",
            block.len(),
            req.len
        )));
    }
    let mut out = Bytes::copy_from_slice(&req.encode()).chain(block.clone());
    s.write_all_buf(&mut out).await?;
    let n = read_status(s).await?;
    if n != 33 {
        return Err(RawError::Protocol(format!(
            "a put is answered with 33 bytes, server sends {n}"
        )));
    }
    let mut b = [0u8; 33];
    s.read_exact(&mut b).await?;
    Ok(PutAnswer {
        hash: b[..32].try_into().expect("32 bytes"),
        deduplicated: b[32] != 0,
    })
}

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
            let Request::Read(got) = read_request(&mut server).await.unwrap().unwrap().unwrap()
            else {
                panic!("expected a read")
            };
            let body: Vec<u8> = (0..got.len).map(|i| (i % 251) as u8).collect();
            server.write_all(&ok_header(got.len)).await.unwrap();
            server.write_all(&body).await.unwrap();
            let Request::Read(bad) = read_request(&mut server).await.unwrap().unwrap().unwrap()
            else {
                panic!("expected a read")
            };
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

    /// The next request on a test server's stream, and the bytes that follow it (an append's fragment,
    /// a put's block).
    async fn next_with_body(server: &mut tokio::io::DuplexStream) -> (Request, Vec<u8>) {
        let req = read_request(server).await.unwrap().unwrap().unwrap();
        let n = match &req {
            Request::Append(a) => a.frag_len,
            Request::Put(p) => p.len,
            Request::Read(_) => 0,
        };
        let mut body = vec![0u8; n as usize];
        server.read_exact(&mut body).await.unwrap();
        (req, body)
    }

    #[test]
    fn put_headers_round_trip_and_bad_ones_are_named() {
        for expected in [None, Some([0x5A; 32])] {
            let p = RawPut {
                len: 4 << 20,
                expected,
            };
            assert_eq!(RawPut::decode(&p.encode()), Ok(p));
        }
        let p = RawPut {
            len: 1,
            expected: None,
        };
        for (len, says) in [
            (0, "raw put of 0 bytes"),
            ((4 << 20) + 1, "blocks hold 1 to"),
        ] {
            let err = RawPut::decode(&RawPut { len, ..p }.encode()).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
        let mut b = p.encode();
        b[8] = 2;
        assert!(RawPut::decode(&b).unwrap_err().contains("flag 2"));
        b[0] = b'G';
        assert!(RawPut::decode(&b).unwrap_err().contains("not a raw put"));
    }

    #[tokio::test]
    async fn puts_carry_their_block_and_failures_keep_the_connection_in_step() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let block: Bytes = (0..300_000u32).map(|i| (i % 239) as u8).collect();
        let srv = tokio::spawn(async move {
            let mut got = Vec::new();
            // A failure first: the success after it shows the connection stayed in step.
            for answer in [false, true] {
                let (Request::Put(p), body) = next_with_body(&mut server).await else {
                    panic!("expected a put")
                };
                got.push((p, body));
                if answer {
                    let a = PutAnswer {
                        hash: [7; 32],
                        deduplicated: true,
                    };
                    server.write_all(&a.encode()).await.unwrap();
                } else {
                    write_put_failure(
                        &mut server,
                        3,
                        "expected hash 5a5a but the bytes hash to 0707",
                    )
                    .await
                    .unwrap();
                }
            }
            assert!(read_request(&mut server).await.unwrap().is_none());
            got
        });
        let plain = RawPut {
            len: block.len() as u32,
            expected: None,
        };
        let checked = RawPut {
            expected: Some([0x5A; 32]),
            ..plain
        };
        match put_block(&mut client, &checked, &block).await {
            Err(RawError::Failed { code: 3, message }) => {
                assert_eq!(message, "expected hash 5a5a but the bytes hash to 0707")
            }
            other => panic!("expected a failed put, got {other:?}"),
        }
        let a = put_block(&mut client, &plain, &block).await.unwrap();
        assert_eq!(
            a,
            PutAnswer {
                hash: [7; 32],
                deduplicated: true
            }
        );
        // A block that disagrees with its header is not sent.
        let short = RawPut { len: 10, ..plain };
        assert!(matches!(
            put_block(&mut client, &short, &block).await,
            Err(RawError::Protocol(_))
        ));
        drop(client);
        let got = srv.await.unwrap();
        assert_eq!(got.len(), 2);
        for (i, (p, body)) in got.iter().enumerate() {
            assert_eq!(*p, [checked, plain][i]);
            assert!(body[..] == block[..], "put {i} carried other bytes");
        }
    }

    fn sample_append(frag_len: u32) -> RawAppend {
        RawAppend {
            volume: 9,
            member: 4,
            generation: 3,
            epoch: 12,
            hash: [0xAB; 32],
            offset: 1 << 32,
            frag_len,
            block_len: 6 * frag_len - 5,
            crcs: (0..9).map(|i| 0x1000_0000 + i).collect(),
        }
    }

    #[tokio::test]
    async fn appends_carry_their_fragment_and_bad_headers_are_named() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let req = sample_append(50_000);
        let frag: Bytes = (0..req.frag_len).map(|i| (i % 241) as u8).collect();
        let srv = tokio::spawn(async move {
            let mut got = Vec::new();
            for answer in [None, Some("disk d1 failed")] {
                let (Request::Append(a), body) = next_with_body(&mut server).await else {
                    panic!("expected an append")
                };
                got.push((a, body));
                match answer {
                    None => server.write_all(&ok_header(0)).await.unwrap(),
                    Some(m) => write_failure(&mut server, STATUS_UNAVAILABLE, m)
                        .await
                        .unwrap(),
                }
            }
            // Nonsense after good requests is named, not taken for an append.
            let bad = read_request(&mut server).await.unwrap().unwrap();
            (got, bad)
        });
        append_fragment(&mut client, &req, &frag).await.unwrap();
        match append_fragment(&mut client, &req, &frag).await {
            Err(RawError::Unavailable(m)) => assert_eq!(m, "disk d1 failed"),
            other => panic!("expected unavailable, got {other:?}"),
        }
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let (got, bad) = srv.await.unwrap();
        for (a, body) in got {
            assert_eq!(a, req);
            assert!(body == frag);
        }
        assert!(bad.unwrap_err().contains("not a raw request"));

        // A fragment that disagrees with its header is refused before anything is sent.
        let (mut client, _server) = tokio::io::duplex(1 << 16);
        let err = append_fragment(&mut client, &req, &frag.slice(1..))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("fragment has 49999 bytes"),
            "{err}"
        );

        // Headers the server cannot trust are named.
        for (bad, why) in [
            (
                RawAppend {
                    frag_len: 0,
                    ..sample_append(1)
                },
                "must be 1 to",
            ),
            (
                RawAppend {
                    frag_len: MAX_APPEND + 1,
                    ..sample_append(1)
                },
                "must be 1 to",
            ),
            (
                RawAppend {
                    crcs: vec![],
                    ..sample_append(1)
                },
                "a volume has 1 to",
            ),
            (
                RawAppend {
                    crcs: vec![0; MAX_WIDTH + 1],
                    ..sample_append(1)
                },
                "a volume has 1 to",
            ),
        ] {
            let mut r: &[u8] = &bad.encode_header();
            let err = read_request(&mut r).await.unwrap().unwrap().unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
