//! Pooled raw connections to volume servers and frontends, and whole-block reads over them: data
//! fragments straight into their places in one buffer, parity beside it when a data member is missing.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::Latencies;
use bytes::{Bytes, BytesMut};
use hoard_proto::raw::{
    MAX_READ, PutAnswer, RawAppend, RawError, RawPut, RawRead, append_fragment, put_block,
    read_fragment,
};
use tokio::net::TcpStream;

/// One whole-block read: the block's place in its volume and where each member is read from.
#[derive(Clone, Copy, Debug)]
pub struct BlockRead<'a> {
    pub volume: u64,
    pub offset: u64,
    pub frag_len: usize,
    pub block_len: usize,
    /// Data members.
    pub k: usize,
    /// `sources[i]` is where member `i` (data, then parity) is read from; `None` for a member that
    /// cannot be.
    pub sources: &'a [Option<Source<'a>>],
}

/// Where a data fragment of a block is read from.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    /// The volume server, `host:port`.
    pub address: &'a str,
    pub member: u32,
    pub generation: u64,
}

impl Source<'_> {
    /// The raw read of this member's fragment of the block at `offset` of `volume`.
    pub fn read_of(&self, volume: u64, offset: u64, len: u32) -> RawRead {
        RawRead {
            volume,
            member: self.member,
            generation: self.generation,
            offset,
            len,
        }
    }
}

/// Idle connections for raw requests, by server address.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<(TcpStream, Instant)>>>,
    /// Servers that let a hedged read down (its data fragment had not come when the hedge had the
    /// block), until when: whole-block reads go around them without waiting for the hedge delay.
    stuck: Mutex<HashMap<String, Instant>>,
}

/// How long a server that let a hedged read down is read around. Short: the first read after it
/// waits the hedge delay again and finds out whether the server answers.
const STUCK_FOR: Duration = Duration::from_secs(5);

/// Idle connections kept per server.
const IDLE_PER_SERVER: usize = 32;

/// How long a connection may sit idle in the pool: well under the time after which servers drop silent
/// connections, so that a request never goes out on a connection the server is closing.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// Whether an idle connection is still open: no bytes and no end-of-stream waiting on it.
fn still_open(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: a non-blocking peek of at most one byte into a live local buffer, on a socket `s` owns.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

impl Pool {
    async fn take(&self, address: &str) -> std::io::Result<TcpStream> {
        loop {
            let idle = {
                let mut m = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                m.get_mut(address).and_then(Vec::pop)
            };
            match idle {
                // A server that restarted, or closed the connection, shows it as an end of stream:
                // such a connection is dropped here rather than failing a request.
                Some((s, since)) if since.elapsed() < MAX_IDLE && still_open(&s) => return Ok(s),
                Some(_) => continue,
                None => break,
            }
        }
        let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        s.set_nodelay(true)?;
        Ok(s)
    }

    /// Keeps the connection for the next request if the server answered this one (so that it is in
    /// step), and passes the outcome on.
    fn finish<T>(
        &self,
        address: &str,
        s: TcpStream,
        r: Result<Result<T, RawError>, tokio::time::error::Elapsed>,
    ) -> Result<T, RawError> {
        let r =
            r.unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()));
        if r.as_ref().map_or_else(RawError::answered, |_| true) {
            let mut m = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let v = m.entry(address.to_string()).or_default();
            if v.len() < IDLE_PER_SERVER {
                v.push((s, Instant::now()));
            }
        }
        r
    }

    /// Reads one fragment into `dst`'s spare capacity.
    pub async fn read(
        &self,
        address: &str,
        req: RawRead,
        dst: &mut BytesMut,
    ) -> Result<(), RawError> {
        let mut s = self.take(address).await?;
        let r = tokio::time::timeout(READ_TIMEOUT, read_fragment(&mut s, &req, dst)).await;
        self.finish(address, s, r)
    }

    /// Appends one fragment; `Ok` once the member holds it durably. `timeout` bounds the whole request.
    pub async fn append(
        &self,
        address: &str,
        req: &RawAppend,
        fragment: &Bytes,
        timeout: Duration,
    ) -> Result<(), RawError> {
        // The deadline covers the connection too: a stopped server whose accept queue is full
        // does not even complete a connect.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut s = tokio::time::timeout_at(deadline, self.take(address))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let r = tokio::time::timeout_at(deadline, append_fragment(&mut s, req, fragment)).await;
        self.finish(address, s, r)
    }

    /// Puts one block on the frontend at `address`; `timeout` bounds the whole request.
    pub async fn put(
        &self,
        address: &str,
        req: &RawPut,
        block: &Bytes,
        timeout: Duration,
    ) -> Result<PutAnswer, RawError> {
        let mut s = self.take(address).await?;
        let r = tokio::time::timeout(timeout, put_block(&mut s, req, block)).await;
        self.finish(address, s, r)
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
        if block_len > sources.len() * frag_len {
            return None;
        }
        let sources: Vec<Option<Source>> = sources.iter().copied().map(Some).collect();
        let mut block = self.read_places(volume, offset, frag_len, &sources).await?;
        block.truncate(block_len);
        Some(block.freeze())
    }

    /// A whole block by raw reads (the members' `sources` as in [`BlockRead`]). When every data member
    /// has a source, the
    /// block is read as [`Pool::read_block`]; otherwise the data fragments that can be read and one
    /// parity fragment per missing one are handed to `rebuild` (off the async workers) with which data
    /// fragments are present, and it returns the block. Unchecked: the caller compares the block with
    /// its hash. `None` when there are too few sources or any read, or the rebuild, fails.
    pub async fn read_whole<F>(&self, read: BlockRead<'_>, rebuild: F) -> Option<Bytes>
    where
        F: FnOnce(BytesMut, &[bool], &mut [(usize, BytesMut)]) -> Option<Bytes> + Send + 'static,
    {
        let BlockRead {
            volume,
            offset,
            frag_len,
            block_len,
            k,
            sources,
        } = read;
        if k == 0 || sources.len() < k || block_len > k * frag_len {
            return None;
        }
        let data = &sources[..k];
        if data.iter().all(Option::is_some) {
            let data: Vec<Source> = data.iter().flatten().copied().collect();
            return self
                .read_block(volume, offset, frag_len, block_len, &data)
                .await;
        }
        let parity: Vec<Source> = sources[k..].iter().flatten().copied().collect();
        let (block, mut parity) = self
            .read_for_rebuild(volume, offset, frag_len, data, &parity)
            .await?;
        let present: Vec<bool> = data.iter().map(Option::is_some).collect();
        tokio::task::spawn_blocking(move || rebuild(block, &present, &mut parity))
            .await
            .ok()?
    }

    /// A whole-block read that a stopped or hung member cannot stall: [`Pool::read_whole`], raced
    /// after `latencies.hedge_after()` by [`Pool::read_first_k`]; the first to bring the block wins
    /// (when the first read fails, the hedge's answer is awaited; when the hedge, which asks every
    /// member, fails, the read gives up). A read that needs a server marked stuck starts with the first
    /// `k` of the others instead. Records the winning read's latency and answers whether the read went
    /// beyond the data members. Unchecked, as [`Pool::read_whole`].
    pub async fn read_hedged<F>(
        &self,
        latencies: &Latencies,
        read: BlockRead<'_>,
        rebuild: F,
    ) -> Option<(Bytes, bool)>
    where
        F: FnOnce(BytesMut, &[bool], &mut [(usize, BytesMut)]) -> Option<Bytes>
            + Clone
            + Send
            + 'static,
    {
        let started = Instant::now();
        // A data member on a server that just let a read down: the read goes to the first k of the
        // others (hedged all the same: a server marked wrongly may hold the one fragment missing).
        let around: Vec<Option<Source>> = {
            let mut stuck = self.stuck.lock().unwrap_or_else(|p| p.into_inner());
            stuck.retain(|_, until| *until > started);
            let is_stuck = |s: &Option<Source>| s.is_some_and(|s| stuck.contains_key(s.address));
            if read.sources[..read.k.min(read.sources.len())]
                .iter()
                .any(is_stuck)
            {
                read.sources
                    .iter()
                    .map(|s| if is_stuck(s) { None } else { *s })
                    .collect()
            } else {
                Vec::new()
            }
        };
        let primary = if around.iter().flatten().count() >= read.k {
            let around = BlockRead {
                sources: &around,
                ..read
            };
            let rebuild = rebuild.clone();
            futures::future::Either::Left(async move {
                self.first_k(around, rebuild).await.map(|(b, _)| b)
            })
        } else {
            futures::future::Either::Right(self.read_whole(read, rebuild.clone()))
        };
        let went_around = matches!(primary, futures::future::Either::Left(_));
        tokio::pin!(primary);
        let delay = latencies.hedge_after();
        if let Ok(block) = tokio::time::timeout(delay, &mut primary).await {
            if block.is_some() {
                latencies.record(started.elapsed());
            }
            return Some((block?, went_around));
        }
        let hedged_at = Instant::now();
        let hedge = self.first_k(read, rebuild);
        tokio::pin!(hedge);
        let (block, took) = tokio::select! {
            b = &mut primary => match b {
                Some(b) => (Some(b), started.elapsed()),
                None => (hedge.await.map(|(b, _)| b), hedged_at.elapsed()),
            },
            b = &mut hedge => match b {
                Some((b, late)) => {
                    self.mark_stuck(&read, &late);
                    (Some(b), hedged_at.elapsed())
                }
                // Every member was asked and fewer than k answered: the caller's checked path,
                // with its own timeouts, does better than waiting out the first read.
                None => (None, hedged_at.elapsed()),
            },
        };
        // What the winning read took from its own start: a hedge counted with the delay before it
        // would raise the delay with every hedge, until every read waited the longest.
        if block.is_some() {
            latencies.record(took);
        }
        Some((block?, true))
    }

    /// After a hedge had the block: a server whose data fragment was still out, and that answered
    /// none of the hedge's reads, is read around for [`STUCK_FOR`]. A server that answered some read
    /// was only slower than the first `k`, and is not marked.
    fn mark_stuck(&self, read: &BlockRead<'_>, late: &[usize]) {
        let asked = read.sources.iter().enumerate();
        let answered: HashSet<&str> = asked
            .filter(|(i, _)| !late.contains(i))
            .filter_map(|(_, s)| s.map(|s| s.address))
            .collect();
        let until = Instant::now() + STUCK_FOR;
        let mut stuck = self.stuck.lock().unwrap_or_else(|p| p.into_inner());
        for &i in late.iter().filter(|&&i| i < read.k) {
            if let Some(Some(s)) = read.sources.get(i)
                && !answered.contains(s.address)
            {
                stuck.insert(s.address.to_string(), until);
            }
        }
    }

    /// The hedge of a whole-block read: every member that has a source (`sources[i]` for member `i`,
    /// `k + m` of them) is asked at once, each fragment into its own buffer, and the block is made of
    /// the first `k` that arrive (the missing data fragments rebuilt from parity by `rebuild`, off the
    /// async workers); the reads still out are dropped. So a member that accepted the connection but
    /// does not answer costs nothing once `k` others have. Unchecked, as [`Pool::read_whole`].
    pub async fn read_first_k<F>(&self, read: BlockRead<'_>, rebuild: F) -> Option<Bytes>
    where
        F: FnOnce(BytesMut, &[bool], &mut [(usize, BytesMut)]) -> Option<Bytes> + Send + 'static,
    {
        self.first_k(read, rebuild).await.map(|(b, _)| b)
    }

    /// [`Pool::read_first_k`], and the members whose reads were still out when the block was made.
    async fn first_k<F>(&self, read: BlockRead<'_>, rebuild: F) -> Option<(Bytes, Vec<usize>)>
    where
        F: FnOnce(BytesMut, &[bool], &mut [(usize, BytesMut)]) -> Option<Bytes> + Send + 'static,
    {
        use futures::StreamExt;
        let BlockRead {
            volume,
            offset,
            frag_len,
            block_len,
            k,
            sources,
        } = read;
        if k == 0 || block_len > k * frag_len || frag_len > MAX_READ as usize {
            return None;
        }
        let mut reads: futures::stream::FuturesUnordered<_> = sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, (*s)?)))
            .map(|(i, s)| async move {
                let mut buf = BytesMut::with_capacity(frag_len);
                let req = s.read_of(volume, offset, frag_len as u32);
                let ok = self.read(s.address, req, &mut buf).await.is_ok();
                (i, ok.then_some(buf))
            })
            .collect();
        // Every member asked; those that answer or fail are struck off, and what is left was late.
        let mut late: Vec<usize> = (0..sources.len())
            .filter(|&i| sources[i].is_some())
            .collect();
        let mut got: Vec<(usize, BytesMut)> = Vec::with_capacity(k);
        while got.len() < k {
            let (i, f) = reads.next().await?;
            late.retain(|&l| l != i);
            if let Some(f) = f {
                got.push((i, f));
            }
        }
        drop(reads);
        let mut block = BytesMut::zeroed(k * frag_len);
        let mut present = vec![false; k];
        let mut parity = Vec::new();
        for (i, f) in got {
            if i < k {
                block[i * frag_len..(i + 1) * frag_len].copy_from_slice(&f);
                present[i] = true;
            } else {
                parity.push((i, f));
            }
        }
        if present.iter().all(|&p| p) {
            block.truncate(block_len);
            return Some((block.freeze(), late));
        }
        let block = tokio::task::spawn_blocking(move || rebuild(block, &present, &mut parity))
            .await
            .ok()??;
        Some((block, late))
    }

    /// What rebuilding a block's missing data fragments needs, read at once: the data fragments that have
    /// a source (`data[i]` for member `i`) into their places in one buffer, as [`Pool::read_places`],
    /// and one parity fragment per missing one, from the first sources of `parity`, each into its own
    /// buffer (with its member index). `None` when `parity` has too few sources or any read fails.
    async fn read_for_rebuild(
        &self,
        volume: u64,
        offset: u64,
        frag_len: usize,
        data: &[Option<Source<'_>>],
        parity: &[Source<'_>],
    ) -> Option<(BytesMut, Vec<(usize, BytesMut)>)> {
        let missing = data.iter().filter(|s| s.is_none()).count();
        if parity.len() < missing || frag_len > MAX_READ as usize {
            return None;
        }
        let parity_reads = parity[..missing].iter().map(|s| async move {
            let mut buf = BytesMut::with_capacity(frag_len);
            let req = s.read_of(volume, offset, frag_len as u32);
            self.read(s.address, req, &mut buf).await.ok()?;
            Some((s.member as usize, buf))
        });
        let (block, parity) = tokio::join!(
            self.read_places(volume, offset, frag_len, data),
            futures::future::join_all(parity_reads)
        );
        Some((block?, parity.into_iter().collect::<Option<_>>()?))
    }

    /// Reads the data fragments of a block that have a source (`sources[i]` for member `i`, `k` of
    /// them) into one buffer of `k * frag_len` bytes, each straight into its place; the places of the
    /// others are zeroed, for the caller to rebuild in place from parity. `None` when any read fails.
    pub async fn read_places(
        &self,
        volume: u64,
        offset: u64,
        frag_len: usize,
        sources: &[Option<Source<'_>>],
    ) -> Option<BytesMut> {
        let k = sources.len();
        if k == 0 || frag_len == 0 || frag_len > MAX_READ as usize {
            return None;
        }
        // One allocation cut into the k fragments' places; each read fills its own.
        let mut rest = BytesMut::with_capacity(k * frag_len);
        let mut places = Vec::with_capacity(k);
        for _ in 0..k {
            let tail = rest.split_off(frag_len.min(rest.capacity()));
            places.push(std::mem::replace(&mut rest, tail));
        }
        let reads = sources.iter().zip(places).map(|(s, mut place)| async move {
            match s {
                Some(s) => {
                    let req = s.read_of(volume, offset, frag_len as u32);
                    self.read(s.address, req, &mut place).await.ok()?;
                }
                None => place.resize(frag_len, 0),
            }
            Some(place)
        });
        let mut filled = futures::future::join_all(reads).await.into_iter();
        let mut block = filled.next()??;
        for place in filled {
            // Contiguous pieces of one allocation: joining them moves no bytes.
            block.unsplit(place?);
        }
        Some(block)
    }
}

/// How long one raw read may take before the connection is given up.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use hoard_proto::raw::{Request, ok_header, read_request};
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_pool_drops_connections_the_server_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // Answers one read per connection, then closes it, as a server that restarted would have.
        let srv = tokio::spawn(async move {
            let mut accepted = 0;
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                accepted += 1;
                let Request::Read(r) = read_request(&mut s).await.unwrap().unwrap().unwrap() else {
                    panic!("expected a read")
                };
                s.write_all(&ok_header(r.len)).await.unwrap();
                s.write_all(&vec![r.member as u8; r.len as usize])
                    .await
                    .unwrap();
            }
            accepted
        });
        let pool = Pool::default();
        let read = |member| RawRead {
            volume: 1,
            member,
            generation: 1,
            offset: 0,
            len: 1000,
        };
        let mut buf = BytesMut::with_capacity(1000);
        pool.read(&addr, read(1), &mut buf).await.unwrap();
        assert!(buf.iter().all(|b| *b == 1));
        // Give the close time to arrive, then read again: a fresh connection, not a failed read.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut buf = BytesMut::with_capacity(1000);
        pool.read(&addr, read(2), &mut buf).await.unwrap();
        assert!(buf.iter().all(|b| *b == 2));
        assert_eq!(srv.await.unwrap(), 2);
    }

    /// Serves raw reads on every connection: each fragment's bytes are its member's index.
    async fn serve(listener: tokio::net::TcpListener) {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                while let Ok(Some(Ok(Request::Read(r)))) = read_request(&mut s).await {
                    let body = vec![r.member as u8; r.len as usize];
                    if s.write_all(&ok_header(r.len)).await.is_err()
                        || s.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    }

    /// A server that accepts connections and never answers, as a SIGSTOPped one.
    async fn hang(listener: tokio::net::TcpListener) {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    }

    async fn server(hung: bool) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(if hung {
            futures::future::Either::Left(hang(listener))
        } else {
            futures::future::Either::Right(serve(listener))
        });
        addr
    }

    #[tokio::test]
    async fn a_read_around_a_stuck_server_is_still_hedged_and_only_silent_servers_are_marked() {
        // k = 2, m = 1: member 0 on `a`, 1 on `hung` (answers nothing), parity 2 on `b`.
        let (a, hung, b) = (server(false).await, server(true).await, server(false).await);
        let sources: Vec<Option<Source>> = [&a, &hung, &b]
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                Some(Source {
                    address: addr,
                    member: i as u32,
                    generation: 1,
                })
            })
            .collect();
        let read = BlockRead {
            volume: 1,
            offset: 0,
            frag_len: 100,
            block_len: 200,
            k: 2,
            sources: &sources,
        };
        let rebuild =
            |block: BytesMut, _: &[bool], _: &mut [(usize, BytesMut)]| Some(block.freeze());
        let pool = Pool::default();
        let latencies = Latencies::default();
        // The first read meets the hung server: hedged, the block made of `a` and `b`, and only the
        // server that answered none of its reads marked.
        let first = tokio::time::timeout(
            Duration::from_secs(5),
            pool.read_hedged(&latencies, read, rebuild),
        )
        .await
        .expect("a hung data member stalled the read");
        assert!(first.is_some_and(|(_, hedged)| hedged));
        {
            let stuck = pool.stuck.lock().unwrap();
            assert!(stuck.contains_key(&hung), "the silent server is not marked");
            assert!(!stuck.contains_key(&a), "a server that answered is marked");
        }
        // A healthy server marked wrongly (`a`): going around it leaves `hung` and `b`, k sources of
        // which one never answers. The read must still be hedged, not wait out the read timeout.
        {
            let mut stuck = pool.stuck.lock().unwrap();
            stuck.clear();
            stuck.insert(a.clone(), Instant::now() + STUCK_FOR);
        }
        let second = tokio::time::timeout(
            Duration::from_secs(5),
            pool.read_hedged(&latencies, read, rebuild),
        )
        .await
        .expect("a read around a wrongly marked server waited on the hung one");
        assert!(second.is_some());
    }
}
