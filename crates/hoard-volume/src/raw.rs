//! The server side of raw fragment reads and appends (see [`hoard_proto::raw`]): the volume server's
//! listener hands gRPC connections to tonic and serves raw ones itself, answering each read with
//! `sendfile(2)` from the page cache and reading each appended fragment straight into the page-aligned
//! buffer that is written to disk.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use hoard_net::listen::{self, Budget};
use hoard_proto::raw::{self, RawAppend, RawRead, Request};
use hoard_types::BlockHash;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;

use crate::aligned::AlignedBuf;
use crate::format::BlockRecord;
use crate::store::VolumeStore;

/// How long a raw read may wait for a client that does not take its bytes, and an append for its
/// fragment's bytes.
const IDLE: Duration = listen::IDLE;

/// Bounds on what raw connections may hold at once. Past them, new raw connections and appends wait
/// (their clients see the back-pressure as a slower answer), so a burst of clients cannot take the
/// server's memory.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Raw connections served at once; a connection past it waits up to 30 s for a slot.
    pub connections: usize,
    /// Bytes of appended fragments held in memory at once; an append waits for room before its
    /// fragment is read off the connection. A fragment larger than the whole budget waits for all of it.
    pub append_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 1024,
            append_bytes: 256 << 20,
        }
    }
}

/// What the raw connections of one listener share.
struct Shared {
    store: Arc<VolumeStore>,
    appends: Budget,
}

/// Accepts connections on `listener`; raw ones are served here, the others come out of the returned
/// stream for the gRPC server. Accepting stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    store: Arc<VolumeStore>,
) -> ReceiverStream<std::io::Result<listen::GrpcConn>> {
    incoming_with(listener, store, Limits::default())
}

/// [`incoming`] with explicit limits.
pub fn incoming_with(
    listener: TcpListener,
    store: Arc<VolumeStore>,
    limits: Limits,
) -> ReceiverStream<std::io::Result<listen::GrpcConn>> {
    const WAITS: &str = "hoard_volume_raw_waits_total";
    let shared = Arc::new(Shared {
        store,
        appends: Budget::new(limits.append_bytes, WAITS, "append_memory"),
    });
    let raw = listen::RawListener {
        connections: limits.connections,
        connections_gauge: "hoard_volume_raw_connections",
        waits_counter: WAITS,
    };
    listen::split_incoming(listener, raw, move |stream| {
        let shared = Arc::clone(&shared);
        async move { serve(&shared, stream).await }
    })
}

/// Serves raw requests on one connection until the client closes it or something goes wrong mid-answer.
async fn serve(shared: &Shared, mut stream: TcpStream) {
    loop {
        let Some(req) = listen::next_request(&mut stream).await else {
            return;
        };
        let req = match req {
            Ok(r) => r,
            Err(why) => {
                // A malformed request leaves the stream out of step: answer, then close.
                let _ = raw::write_failure(&mut stream, raw::STATUS_MALFORMED, &why).await;
                return;
            }
        };
        match req {
            Request::Read(req) => match answer(&shared.store, stream, req).await {
                Some(s) => stream = s,
                None => return,
            },
            Request::Append(req) => {
                if !append(shared, &mut stream, req).await {
                    return;
                }
            }
            Request::Put(_) => {
                let why = "blocks are put on a frontend, not a volume server";
                let _ = raw::write_failure(&mut stream, raw::STATUS_MALFORMED, why).await;
                return;
            }
        }
    }
}

/// Answers one read; gives the connection back when it is still in step.
async fn answer(
    store: &Arc<VolumeStore>,
    mut stream: TcpStream,
    req: RawRead,
) -> Option<TcpStream> {
    let extent = match store.extent(req.volume, req.member) {
        Ok(e) => e,
        Err(e) => {
            raw::write_error(&mut stream, &e.to_string()).await.ok()?;
            return Some(stream);
        }
    };
    let file_offset = match extent.raw_source(req.generation, req.offset, req.len) {
        Ok(at) => at,
        Err(e) => {
            raw::write_error(&mut stream, &e.to_string()).await.ok()?;
            return Some(stream);
        }
    };
    stream.write_all(&raw::ok_header(req.len)).await.ok()?;
    // sendfile blocks while it reads from the disk what the page cache does not hold: off the async
    // workers, with the connection (and so its descriptor) owned by the blocking task until it is done.
    let (stream, sent) = tokio::task::spawn_blocking(move || {
        let sent = send_range(&stream, extent.cached_dat(), file_offset, req.len as usize);
        (stream, sent)
    })
    .await
    .ok()?;
    match sent {
        Ok(()) => {
            metrics::counter!("hoard_volume_read_bytes_total").increment(u64::from(req.len));
            metrics::counter!("hoard_volume_raw_read_bytes_total").increment(u64::from(req.len));
            Some(stream)
        }
        Err(e) => {
            // The header promised bytes that did not all go: the client sees a short read.
            tracing::warn!(
                volume = req.volume,
                member = req.member,
                "raw read of {} bytes at {}: {e}",
                req.len,
                req.offset
            );
            None
        }
    }
}

/// Takes one append's fragment off the stream and writes it; `false` when the connection is done for.
async fn append(shared: &Shared, stream: &mut TcpStream, req: RawAppend) -> bool {
    // Checked before the fragment takes any memory: an append that would be refused anyway (a bad
    // record, no such extent, a stale epoch, bytes already written) has its fragment read past in small
    // pieces and is answered, so that bogus headers cannot hold the append budget.
    let checked = BlockRecord::checked(
        BlockHash::from_bytes(req.hash),
        req.offset,
        req.frag_len,
        req.block_len,
        req.crcs.clone(),
    )
    .map_err(crate::VolumeError::BadRequest)
    .and_then(|record| {
        let extent = shared.store.extent(req.volume, req.member)?;
        extent.check_append(req.generation, req.epoch, &record)?;
        Ok((extent, record))
    });
    let (extent, record) = match checked {
        Ok(x) => x,
        Err(e) => {
            if !skip(stream, req.frag_len as usize).await {
                return false;
            }
            return answer_append(stream, &req, Err(e)).await;
        }
    };
    let Some(_room) = shared.appends.room(req.frag_len as usize).await else {
        return false;
    };
    // The fragment goes straight into the buffer that O_DIRECT writes from. It is read off the stream
    // before anything else is checked, so that the stream stays in step whatever the answer.
    let mut buf = AlignedBuf::with_len(req.frag_len as usize);
    let deadline = listen::body_deadline(req.frag_len as usize);
    match tokio::time::timeout(deadline, stream.read_exact(buf.as_mut_slice())).await {
        Ok(Ok(_)) => {}
        _ => return false,
    }
    shared
        .store
        .injected_write_delay(req.volume, req.member)
        .await;
    let res = extent.append(req.generation, req.epoch, record, buf).await;
    answer_append(stream, &req, res).await
}

/// Reads and drops `n` bytes of a request's body, within its deadline; `false` when they did not come.
async fn skip(stream: &mut TcpStream, n: usize) -> bool {
    let mut left = n;
    let mut scratch = [0u8; 16 << 10];
    let drained = tokio::time::timeout(listen::body_deadline(n), async {
        while left > 0 {
            let want = left.min(scratch.len());
            match stream.read(&mut scratch[..want]).await {
                Ok(0) | Err(_) => return false,
                Ok(got) => left -= got,
            }
        }
        true
    })
    .await;
    drained.unwrap_or(false)
}

/// Answers an append; `false` when the answer could not be sent.
async fn answer_append(
    stream: &mut TcpStream,
    req: &RawAppend,
    res: Result<(), crate::VolumeError>,
) -> bool {
    let sent = match res {
        Ok(()) => {
            let n = u64::from(req.frag_len);
            metrics::counter!("hoard_volume_append_bytes_total").increment(n);
            metrics::counter!("hoard_volume_raw_append_bytes_total").increment(n);
            stream.write_all(&raw::ok_header(0)).await
        }
        Err(e) => {
            tracing::warn!(
                volume = req.volume,
                member = req.member,
                "raw append failed: {e}"
            );
            // A full disk answers with the gRPC code it would over gRPC, so that the frontend tells
            // meta "full" (seal the volume) rather than "failed" (suspect the disk).
            if matches!(e, crate::VolumeError::DiskFull { .. }) {
                let code = tonic::Code::ResourceExhausted as u8;
                return raw::write_put_failure(stream, code, &e.to_string())
                    .await
                    .is_ok();
            }
            let status = if e.is_unavailable() {
                raw::STATUS_UNAVAILABLE
            } else {
                raw::STATUS_ERROR
            };
            raw::write_failure(stream, status, &e.to_string()).await
        }
    };
    sent.is_ok()
}

/// `sendfile` of `[offset, offset + len)` of `file` to the (non-blocking) socket, waiting with `poll`
/// whenever the socket's buffer is full.
fn send_range(
    stream: &TcpStream,
    file: &std::fs::File,
    offset: u64,
    len: usize,
) -> std::io::Result<()> {
    let (out_fd, in_fd) = (stream.as_raw_fd(), file.as_raw_fd());
    let mut off = offset as libc::off_t;
    let mut left = len;
    while left > 0 {
        // SAFETY: both descriptors are open for the whole call (the socket and the extent are owned by
        // the caller); `off` is a live off_t.
        let n = unsafe { libc::sendfile(out_fd, in_fd, &mut off, left) };
        if n > 0 {
            left -= n as usize;
            continue;
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the extent file ends early",
            ));
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock => wait_writable(out_fd)?,
            std::io::ErrorKind::Interrupted => {}
            _ => return Err(e),
        }
    }
    Ok(())
}

fn wait_writable(fd: libc::c_int) -> std::io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    loop {
        // SAFETY: one live pollfd.
        let r = unsafe { libc::poll(&mut p, 1, IDLE.as_millis() as libc::c_int) };
        match r {
            1 if p.revents & (libc::POLLERR | libc::POLLHUP) != 0 => {
                return Err(std::io::ErrorKind::ConnectionReset.into());
            }
            1 => return Ok(()),
            0 => return Err(std::io::ErrorKind::TimedOut.into()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extent::MemberFile;
    use crate::format::BlockRecord;
    use crate::store::VolumeStoreConfig;
    use bytes::{Bytes, BytesMut};
    use hoard_proto::raw::RawError;
    use hoard_types::BlockHash;
    use tokio::io::AsyncWriteExt;
    use tokio_stream::StreamExt;

    /// A store with member 1 of volume 5 (2+1), fenced at epoch 1.
    fn store_with_extent(dir: &std::path::Path) -> (Arc<VolumeStore>, Arc<crate::extent::Extent>) {
        let store = Arc::new(
            VolumeStore::open(&VolumeStoreConfig {
                node_id: "n1".into(),
                disks: vec![dir.join("d0")],
                disk_capacity: Some(1 << 30),
            })
            .unwrap(),
        );
        let disk_id = store.disks()[0].id.clone();
        let extent = store
            .create_extent(MemberFile {
                format: 1,
                volume: 5,
                member: 1,
                k: 2,
                m: 1,
                generation: 1,
                epoch: 0,
                capacity: 1 << 24,
                disk_id,
                created_unix_ms: 0,
            })
            .unwrap();
        extent.fence(1, 1).unwrap();
        (store, extent)
    }

    /// Serves `store` on a loopback port with `limits`: the address, and the stream of connections
    /// handed to gRPC (accepting stops when it is dropped).
    async fn serve_on_loopback(
        store: &Arc<VolumeStore>,
        limits: Limits,
    ) -> (
        std::net::SocketAddr,
        ReceiverStream<std::io::Result<listen::GrpcConn>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, incoming_with(listener, Arc::clone(store), limits))
    }

    /// An append of `frag` at `offset` to the extent of [`store_with_extent`], under its epoch.
    fn append_of(frag: &[u8], offset: u64) -> hoard_proto::raw::RawAppend {
        hoard_proto::raw::RawAppend {
            volume: 5,
            member: 1,
            generation: 1,
            epoch: 1,
            hash: *BlockHash::of(&offset.to_le_bytes()).as_bytes(),
            offset,
            frag_len: frag.len() as u32,
            block_len: 2 * frag.len() as u32,
            crcs: vec![0, crc32c::crc32c(frag), 0],
        }
    }

    fn refused(r: Result<(), RawError>) -> String {
        match r {
            Err(RawError::Refused(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raw_reads_send_stored_bytes_and_name_what_they_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let (store, extent) = store_with_extent(dir.path());
        // The fragment of a 600,000-byte block in a 2+1 volume: 300,000 bytes padded to whole pages.
        let frag: Bytes = (0..303_104u32).map(|i| (i % 253) as u8).collect();
        let record = BlockRecord {
            hash: BlockHash::of(b"block"),
            offset: 0,
            frag_len: frag.len() as u32,
            block_len: 600_000,
            crcs: vec![crc32c::crc32c(&frag); 3],
        };
        extent.append(1, 1, record, frag.clone()).await.unwrap();

        let (addr, mut grpc) = serve_on_loopback(&store, Limits::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let read = RawRead {
            volume: 5,
            member: 1,
            generation: 1,
            offset: 0,
            len: frag.len() as u32,
        };
        // Refusals name the problem and leave the connection in step for the next read.
        let mut buf = BytesMut::with_capacity(frag.len());
        let m = refused(
            hoard_proto::raw::read_fragment(&mut s, &RawRead { volume: 99, ..read }, &mut buf)
                .await,
        );
        assert!(m.contains("no extent for volume 99 member 1"), "{m}");
        let m = refused(
            hoard_proto::raw::read_fragment(
                &mut s,
                &RawRead {
                    generation: 2,
                    ..read
                },
                &mut buf,
            )
            .await,
        );
        assert!(m.contains("generation 1, asked for 2"), "{m}");
        let m = refused(
            hoard_proto::raw::read_fragment(&mut s, &RawRead { offset: 1, ..read }, &mut buf).await,
        );
        assert!(m.contains("lies past the 303104 bytes written"), "{m}");
        assert!(buf.is_empty());
        // The stored bytes, twice on one connection, and a piece from the middle.
        for _ in 0..2 {
            let mut buf = BytesMut::with_capacity(frag.len());
            hoard_proto::raw::read_fragment(&mut s, &read, &mut buf)
                .await
                .unwrap();
            assert!(buf == frag);
        }
        let mut buf = BytesMut::with_capacity(1000);
        let mid = RawRead {
            offset: 150_000,
            len: 1000,
            ..read
        };
        hoard_proto::raw::read_fragment(&mut s, &mid, &mut buf)
            .await
            .unwrap();
        assert!(buf[..] == frag[150_000..151_000]);

        // A malformed request is answered as such, and the connection closed: nothing reuses it.
        let mut buf = BytesMut::with_capacity(1);
        match hoard_proto::raw::read_fragment(&mut s, &RawRead { len: 0, ..read }, &mut buf).await {
            Err(RawError::Protocol(m)) => assert!(m.contains("could not parse"), "{m}"),
            other => panic!("expected a protocol error, got {other:?}"),
        }
        assert!(matches!(
            hoard_proto::raw::read_fragment(&mut s, &read, &mut buf).await,
            Err(RawError::Io(_))
        ));

        // Blocks are put on frontends: a volume server names that and closes the connection.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let put = hoard_proto::raw::RawPut {
            len: 3,
            expected: None,
        };
        match hoard_proto::raw::put_block(&mut s, &put, &Bytes::from_static(b"abc")).await {
            Err(RawError::Protocol(m)) => assert!(m.contains("put on a frontend"), "{m}"),
            other => panic!("expected a protocol error, got {other:?}"),
        }

        // A connection that does not start with the magic byte goes to the gRPC server once it has
        // sent the whole HTTP/2 preface.
        let mut other = TcpStream::connect(addr).await.unwrap();
        other
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let handed = tokio::time::timeout(Duration::from_secs(5), grpc.next())
            .await
            .expect("the connection reaches the gRPC stream")
            .unwrap()
            .unwrap();
        assert_eq!(handed.peer_addr().unwrap(), other.local_addr().unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raw_appends_are_durable_and_refusals_keep_the_connection_in_step() {
        use hoard_proto::raw::{RawAppend, append_fragment, read_fragment};
        let dir = tempfile::tempdir().unwrap();
        let (store, extent) = store_with_extent(dir.path());
        let (addr, _grpc) = serve_on_loopback(&store, Limits::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();

        // Page-sized, so that it takes the O_DIRECT path from the buffer it was read into.
        let frag: Bytes = (0..16 * 4096u32).map(|i| (i % 249) as u8).collect();
        let crc = crc32c::crc32c(&frag);
        let at = |offset: u64| append_of(&frag, offset);
        append_fragment(&mut s, &at(0), &frag).await.unwrap();
        assert_eq!(extent.records(), 1);

        let next = frag.len() as u64;
        let refusals = [
            (at(8192), "overlap bytes already written"),
            (at(0), "extents are append-only"),
            (
                RawAppend {
                    epoch: 0,
                    ..at(next)
                },
                "fenced at epoch 1; request carried epoch 0",
            ),
            (
                RawAppend {
                    crcs: vec![0, crc ^ 1, 0],
                    ..at(next)
                },
                "does not match its crc32c",
            ),
            (
                RawAppend {
                    volume: 99,
                    ..at(next)
                },
                "no extent for volume 99 member 1",
            ),
            (
                RawAppend {
                    crcs: vec![crc],
                    ..at(next)
                },
                "record has 1 crcs, volume has 3 members",
            ),
        ];
        for (req, why) in refusals {
            let m = refused(append_fragment(&mut s, &req, &frag).await);
            assert!(m.contains(why), "{m}");
        }
        assert_eq!(extent.records(), 1, "a refused append wrote a record");

        // The connection is still in step: another append, then both fragments read back.
        let second = at(frag.len() as u64);
        append_fragment(&mut s, &second, &frag).await.unwrap();
        for offset in [0, second.offset] {
            let mut buf = BytesMut::with_capacity(frag.len());
            let read = RawRead {
                volume: 5,
                member: 1,
                generation: 1,
                offset,
                len: frag.len() as u32,
            };
            read_fragment(&mut s, &read, &mut buf).await.unwrap();
            assert!(buf == frag, "fragment at {offset} differs");
        }
        // Durable: a reopened extent finds both records.
        assert_eq!(extent.records(), 2);
        let path = extent.dir.clone();
        drop(extent);
        drop(store);
        let (reopened, scan) = crate::extent::Extent::open(&path).unwrap();
        assert_eq!(scan.records, 2);
        assert_eq!(reopened.data_len(), 2 * frag.len() as u64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_to_a_failed_extent_answers_unavailable() {
        use hoard_proto::raw::append_fragment;
        let dir = tempfile::tempdir().unwrap();
        let (store, extent) = store_with_extent(dir.path());
        let (addr, _grpc) = serve_on_loopback(&store, Limits::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        extent.fail("the disk went away".into());
        let frag = Bytes::from(vec![3u8; 4096]);
        let req = append_of(&frag, 0);
        match append_fragment(&mut s, &req, &frag).await {
            Err(RawError::Unavailable(m)) => assert!(m.contains("the disk went away"), "{m}"),
            other => panic!("expected unavailable, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_limits_connections_and_appends_wait_rather_than_fail() {
        use hoard_proto::raw::{append_fragment, read_fragment};
        let dir = tempfile::tempdir().unwrap();
        let (store, extent) = store_with_extent(dir.path());
        let limits = Limits {
            connections: 1,
            append_bytes: listen::UNIT,
        };
        let (addr, _grpc) = serve_on_loopback(&store, limits).await;

        // A fragment four times the append budget still goes in: it waits for all of the budget.
        let frag = Bytes::from(vec![8u8; 4 * listen::UNIT]);
        let req = append_of(&frag, 0);
        let mut first = TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            append_fragment(&mut first, &req, &frag),
        )
        .await
        .expect("an append larger than the budget is not left waiting")
        .unwrap();
        assert_eq!(extent.records(), 1);

        // A second raw connection waits for the first one's slot.
        let read = RawRead {
            volume: 5,
            member: 1,
            generation: 1,
            offset: 0,
            len: 4096,
        };
        let second = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut buf = BytesMut::with_capacity(4096);
            read_fragment(&mut s, &read, &mut buf).await.map(|()| buf)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !second.is_finished(),
            "a connection past the limit was served"
        );
        drop(first);
        let got = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("served once the first connection closed")
            .unwrap()
            .unwrap();
        assert!(got[..] == frag[..4096]);
    }
}
