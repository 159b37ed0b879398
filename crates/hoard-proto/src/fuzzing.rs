//! Entry points for fuzzing (`fuzz/`) and for the property tests that run the same code on every
//! change. Each takes arbitrary bytes, feeds them to a parser of this crate as the network would, and
//! panics only if a parser breaks its own promise (a value out of the bounds it checks, a request that
//! does not encode back to the bytes it came from). Not part of the API.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::raw::{self, Request};
use crate::v1;

/// A connection whose peer sends `input` and swallows whatever is written to it.
struct Replay<'a> {
    input: &'a [u8],
}

impl AsyncRead for Replay<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.input.len().min(buf.remaining());
        buf.put_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A server reading requests off a connection: every request it accepts is within the protocol's
/// bounds and encodes back to the bytes it was read from.
pub fn raw_requests(data: &[u8]) {
    let mut conn = Replay { input: data };
    futures::executor::block_on(async {
        for _ in 0..16 {
            let before = conn.input;
            let req = match raw::read_request(&mut conn).await {
                Ok(Some(Ok(r))) => r,
                _ => return,
            };
            let used = before.len() - conn.input.len();
            match &req {
                Request::Read(r) => {
                    assert!(r.len >= 1 && r.len <= raw::MAX_READ);
                    assert_eq!(&r.encode()[..], &before[..used]);
                }
                Request::Append(a) => {
                    assert!(a.frag_len >= 1 && a.frag_len <= raw::MAX_APPEND);
                    assert!(!a.crcs.is_empty() && a.crcs.len() <= 64);
                    assert_eq!(a.encode_header(), &before[..used]);
                    // The fragment follows; skip it as a server would.
                    let skip = (a.frag_len as usize).min(conn.input.len());
                    conn.input = &conn.input[skip..];
                }
                Request::Put(p) => {
                    assert!(p.len >= 1 && u64::from(p.len) <= hoard_types::MAX_BLOCK_LEN);
                    // Without an expected hash the hash bytes are not read.
                    let n = if p.expected.is_some() { used } else { 9 };
                    assert_eq!(&p.encode()[..n], &before[..n]);
                    let skip = (p.len as usize).min(conn.input.len());
                    conn.input = &conn.input[skip..];
                }
            }
        }
    });
}

/// A client reading a server's answers: whatever the server sends, the client takes no more bytes
/// than it asked for, and never more than the buffer it was given.
pub fn raw_answers(data: &[u8]) {
    futures::executor::block_on(async {
        let req = raw::RawRead {
            volume: 1,
            member: 0,
            generation: 1,
            offset: 0,
            len: 4096,
        };
        let mut conn = Replay { input: data };
        let mut dst = BytesMut::with_capacity(4096);
        if raw::read_fragment(&mut conn, &req, &mut dst).await.is_ok() {
            assert_eq!(dst.len(), 4096);
        }
        assert!(dst.len() <= 4096);
        let mut conn = Replay { input: data };
        let append = raw::RawAppend {
            volume: 1,
            member: 0,
            generation: 1,
            epoch: 1,
            hash: [0; 32],
            offset: 0,
            frag_len: 64,
            block_len: 64,
            crcs: vec![0; 3],
        };
        let _ = raw::append_fragment(&mut conn, &append, &Bytes::from(vec![0u8; 64])).await;
        let mut conn = Replay { input: data };
        let put = raw::RawPut {
            len: 3,
            expected: None,
        };
        let _ = raw::put_block(&mut conn, &put, &Bytes::from_static(b"abc")).await;
    });
}

/// Wire messages that carry block locations: decoding arbitrary bytes never panics, and a location
/// that converts to the domain type keeps its values.
pub fn wire_messages(data: &[u8]) {
    if let Ok(loc) = v1::BlockLocation::decode(data)
        && let Ok((hash, domain)) = loc.to_domain()
    {
        assert_eq!(hash.as_bytes().as_slice(), &loc.hash[..]);
        assert_eq!(domain.offset, loc.offset);
        assert_eq!(domain.frag_len, u64::from(loc.frag_len));
    }
    let _ = v1::HeartbeatRequest::decode(data);
    let _ = v1::LocateResponse::decode(data);
    let _ = v1::GetRequest::decode(data).map(|g| crate::parse_hash(&g.hash));
}

/// The same entry points under proptest, on every test run: arbitrary bytes after each magic, and
/// headers with extreme values.
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn magic() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(raw::MAGIC.to_vec()),
            Just(raw::APPEND_MAGIC.to_vec()),
            Just(raw::PUT_MAGIC.to_vec()),
            Just(Vec::new()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn requests_and_answers(m in magic(), rest in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut data = m;
            data.extend_from_slice(&rest);
            raw_requests(&data);
            raw_answers(&data);
            raw_answers(&rest);
            wire_messages(&rest);
        }

        #[test]
        fn reads_with_any_values(volume: u64, member: u32, generation: u64, offset: u64, len: u32) {
            let r = raw::RawRead { volume, member, generation, offset, len };
            raw_requests(&r.encode());
        }

        #[test]
        fn appends_with_any_values(offset: u64, frag_len: u32, block_len: u32, width in 0usize..80) {
            let a = raw::RawAppend {
                volume: 1,
                member: 0,
                generation: 1,
                epoch: 1,
                hash: [3; 32],
                offset,
                frag_len,
                block_len,
                crcs: vec![0; width],
            };
            raw_requests(&a.encode_header());
        }

        #[test]
        fn answers_with_any_status(status: u8, n: u32, body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut data = vec![status];
            data.extend_from_slice(&n.to_le_bytes());
            data.extend_from_slice(&body);
            raw_answers(&data);
        }
    }
}
