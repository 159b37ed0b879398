//! A Rust client of Hoard's public `BlockStore` service, for sync clients, the CLI, tests and benchmarks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hoard_erasure::Codec;
use hoard_proto::v1::{self, block_store_client::BlockStoreClient, put_request::Msg};
use hoard_types::ExtentId;
use hoard_types::{BlockHash, Geometry};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

/// Bytes per message when streaming a block to the cell. A whole block fits one message, which the
/// frontend then uses without reassembling it.
pub const PUT_CHUNK: usize = hoard_types::MAX_BLOCK_LEN as usize;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("cannot reach {0}: {1}")]
    Connect(String, String),
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    #[error("the cell answered a malformed hash {0:?}")]
    BadAnswer(String),
}

impl ClientError {
    /// The gRPC code of the answer, when the cell answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// What a put answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Put {
    pub hash: BlockHash,
    pub deduplicated: bool,
}

/// Codecs by `(k, m)`.
type Codecs = HashMap<(u32, u32), Arc<Codec>>;

/// One frontend the client spreads calls over.
#[derive(Clone)]
struct Frontend {
    url: String,
    inner: BlockStoreClient<Channel>,
    /// The frontend's `host:port` for raw puts; `None` when puts go by gRPC only.
    raw_puts: Option<String>,
    /// Until when puts go by gRPC because a raw put went unanswered (a frontend that does not speak
    /// the raw protocol, or a connection that broke).
    raw_puts_off_until: Arc<Mutex<Option<Instant>>>,
    /// Until when calls avoid this frontend because a call to it failed (unless all are avoided).
    avoid_until: Arc<Mutex<Option<Instant>>>,
}

/// A client of one or more frontends. Calls are spread over the frontends in turn; a call that fails
/// because its frontend did not answer (unavailable, connection broken) is sent again to the next one,
/// each frontend tried at most once. Every call is safe to send twice: blocks are stored by hash, reads
/// change nothing, a delete or undelete sent twice leaves the block as the first left it (the second
/// answers `already_deleted` or `not_deleted`).
#[derive(Clone)]
pub struct Client {
    frontends: Arc<Vec<Frontend>>,
    /// The next frontend to start a call at.
    turn: Arc<std::sync::atomic::AtomicUsize>,
    /// Whether puts go by the raw protocol where a frontend speaks it.
    raw_puts: bool,
    /// Volume servers, for direct reads.
    volumes: Arc<hoard_net::VolumeClients>,
    /// Codecs by geometry, for direct reads that need parity.
    codecs: Arc<Mutex<Codecs>>,
    /// Idle raw connections by server address (volume servers for reads, the frontend for puts).
    raw: Arc<hoard_net::Pool>,
    /// Recent direct reads, for when to hedge one around a member that does not answer.
    read_latencies: Arc<hoard_net::Latencies>,
}

/// How long a raw put may take before the client gives up on it and puts over gRPC.
const RAW_PUT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long puts go by gRPC after a raw put went unanswered.
const RAW_PUT_BACKOFF: Duration = Duration::from_secs(60);

/// How long calls avoid a frontend after a call to it failed.
const AVOID: Duration = Duration::from_secs(5);

/// The frontends an endpoint names: a comma list of URLs; a plain `http://` URL whose host name has
/// several addresses stands for each of them.
pub fn endpoints(spec: &str) -> Result<Vec<String>, ClientError> {
    let mut out = Vec::new();
    for url in spec.split(',').map(str::trim) {
        if url.is_empty() {
            return Err(ClientError::Endpoint(
                spec.to_string(),
                "an empty entry in the list of frontends".into(),
            ));
        }
        let ep = hoard_net::endpoint(url)
            .map_err(|e| ClientError::Endpoint(url.to_string(), e.to_string()))?;
        let uri = ep.uri();
        let (Some("http"), Some(host)) = (uri.scheme_str(), uri.host()) else {
            out.push(url.to_string());
            continue;
        };
        let port = uri.port_u16().unwrap_or(80);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<std::net::IpAddr>().is_ok() {
            out.push(url.to_string());
            continue;
        }
        use std::net::ToSocketAddrs;
        let mut addrs: Vec<std::net::SocketAddr> = match (host, port).to_socket_addrs() {
            Ok(a) => a.collect(),
            // Unresolvable now: kept by name, so that the connection names it when it fails.
            Err(_) => Vec::new(),
        };
        addrs.sort();
        addrs.dedup();
        if addrs.len() <= 1 {
            out.push(url.to_string());
        } else {
            out.extend(addrs.iter().map(|a| format!("http://{a}")));
        }
    }
    out.dedup();
    Ok(out)
}

/// Whether an error says the frontend did not answer (rather than what the cell answered): the call
/// may go to another frontend.
fn frontend_failed(e: &ClientError) -> bool {
    match e {
        ClientError::Connect(..) => true,
        ClientError::Status(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        _ => false,
    }
}

impl Client {
    /// Connects to one or more frontends ([`endpoints`]), e.g. `http://127.0.0.1:7700` or
    /// `http://fe1:7700,http://fe2:7700`. Fails only when none can be reached; the others are
    /// connected on first use.
    pub async fn connect(spec: &str) -> Result<Client, ClientError> {
        let urls = endpoints(spec)?;
        let eps = urls
            .iter()
            .map(|u| Self::endpoint(u).map(|e| (u.clone(), e)))
            .collect::<Result<Vec<_>, _>>()?;
        let tries = futures::future::join_all(eps.iter().map(|(_, ep)| ep.connect())).await;
        let mut errors = Vec::new();
        let mut frontends = Vec::new();
        for ((url, ep), c) in eps.iter().zip(tries) {
            let channel = match c {
                Ok(ch) => ch,
                Err(e) => {
                    errors.push(ClientError::Connect(url.clone(), source_chain(&e)));
                    ep.connect_lazy()
                }
            };
            frontends.push(Self::frontend(url, ep, channel));
        }
        if errors.len() == eps.len() {
            return Err(errors.swap_remove(0));
        }
        for e in errors {
            // Reached some: the others are tried again when their turn comes.
            tracing::warn!("{e}");
        }
        Ok(Self::from_frontends(frontends))
    }

    /// A client that connects on first use (and reconnects after failures).
    pub fn connect_lazy(spec: &str) -> Result<Client, ClientError> {
        let frontends = endpoints(spec)?
            .iter()
            .map(|u| Self::endpoint(u).map(|ep| Self::frontend(u, &ep, ep.connect_lazy())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_frontends(frontends))
    }

    /// With `false`, puts go by gRPC, as from clients in other languages; by default they go by the
    /// raw protocol on the frontend's port (the block is read straight into the frontend's buffer),
    /// falling back to gRPC whenever a raw put goes unanswered.
    pub fn with_raw_puts(mut self, on: bool) -> Client {
        self.raw_puts = on;
        self
    }

    /// The frontends this client spreads its calls over.
    pub fn frontend_urls(&self) -> Vec<String> {
        self.frontends.iter().map(|f| f.url.clone()).collect()
    }

    fn endpoint(url: &str) -> Result<Endpoint, ClientError> {
        hoard_net::endpoint(url)
            .map(|e| e.connect_timeout(Duration::from_secs(5)))
            .map_err(|e| ClientError::Endpoint(url.to_string(), e.to_string()))
    }

    fn frontend(url: &str, ep: &Endpoint, channel: Channel) -> Frontend {
        Frontend {
            url: url.to_string(),
            inner: BlockStoreClient::new(channel)
                .max_decoding_message_size(hoard_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(hoard_proto::MAX_MESSAGE_BYTES),
            raw_puts: raw_address(ep),
            raw_puts_off_until: Default::default(),
            avoid_until: Default::default(),
        }
    }

    fn from_frontends(frontends: Vec<Frontend>) -> Client {
        Client {
            frontends: Arc::new(frontends),
            turn: Default::default(),
            raw_puts: true,
            volumes: Default::default(),
            codecs: Default::default(),
            raw: Default::default(),
            read_latencies: Default::default(),
        }
    }

    /// The order in which a call tries the frontends: from the next in turn, those not avoided first.
    fn order(&self) -> Vec<&Frontend> {
        let n = self.frontends.len();
        let start = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        let avoided = |f: &Frontend| {
            f.avoid_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|t| now < t)
        };
        let (mut ok, bad): (Vec<&Frontend>, Vec<&Frontend>) = (0..n)
            .map(|i| &self.frontends[(start + i) % n])
            .partition(|f| !avoided(f));
        ok.extend(bad);
        ok
    }

    /// Runs `call` on the frontends in [`Client::order`] until one answers; what the cell answered
    /// (an error with a code other than unavailable) ends it at once.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(Frontend) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let order = self.order();
        let last = order.len() - 1;
        let mut i = 0;
        loop {
            let f = order[i];
            match call(f.clone()).await {
                Err(e) if i < last && frontend_failed(&e) => {
                    tracing::warn!(
                        "frontend {} failed ({e}); trying {}",
                        f.url,
                        order[i + 1].url
                    );
                    *f.avoid_until.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Instant::now() + AVOID);
                    i += 1;
                }
                r => return r,
            }
        }
    }

    /// Reads a whole block straight from the volume servers that hold its data fragments (one hop
    /// fewer than through the frontend), checking each fragment's crc32c and the block's BLAKE3. Falls
    /// back to the frontend, which decodes from parity, whenever a fragment cannot be read as is.
    pub async fn get_direct(&self, hash: &BlockHash) -> Result<Bytes, ClientError> {
        let mut parts = self.get_direct_parts(hash).await?;
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one part"));
        }
        let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
        for p in parts {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }

    /// [`Client::get_direct`] without joining the block into one buffer: its bytes in order, as the
    /// data fragments arrived (for callers that write them out with vectored I/O). The BLAKE3 check
    /// covers the parts together.
    pub async fn get_direct_parts(&self, hash: &BlockHash) -> Result<Vec<Bytes>, ClientError> {
        let loc = self
            .call(|f| async move {
                Ok(f.inner
                    .clone()
                    .locate(v1::LocateRequest {
                        hash: hash.to_hex(),
                    })
                    .await?
                    .into_inner())
            })
            .await?;
        if let Some(block) = self.read_raw(hash, &loc).await {
            return Ok(vec![block]);
        }
        match self.read_direct(hash, &loc).await {
            Some(parts) => Ok(parts),
            None => Ok(vec![self.get(hash).await?]),
        }
    }

    /// The fast path of a direct read: `k` fragments from healthy members (data members first) by raw
    /// reads, data fragments straight into their places in one buffer, parity decoded when a data
    /// member is not healthy; the block checked against its hash. `None` leaves the read to the gRPC
    /// path, which checks each fragment's crc32c, reports and rewrites a corrupt one, and decodes
    /// around members that cannot be read.
    async fn read_raw(&self, hash: &BlockHash, loc: &v1::LocateResponse) -> Option<Bytes> {
        let (k, m) = (loc.k as usize, loc.m as usize);
        let frag_len = usize::try_from(loc.frag_len).ok()?;
        let block_len = usize::try_from(loc.block_len).ok()?;
        if k == 0
            || frag_len == 0
            || loc.frag_len > hoard_types::MAX_FRAGMENT_LEN
            || block_len == 0
            || loc.block_len > hoard_types::MAX_BLOCK_LEN
        {
            return None;
        }
        // The geometry is checked (by building its codec) before anything is sized by it.
        let codec = self.codec(loc.k, loc.m)?;
        let mut healthy: Vec<Option<hoard_net::Source>> = vec![None; k + m];
        for s in &loc.members {
            if readable(s) && (s.member as usize) < k + m && !s.address.is_empty() {
                healthy[s.member as usize] = Some(hoard_net::Source {
                    address: &s.address,
                    member: s.member,
                    generation: s.generation,
                });
            }
        }
        // Data fragments straight into their places in the block; when a data member is not healthy,
        // one parity fragment per missing one beside it, and the missing ones rebuilt where they
        // belong. A read that takes longer than recent ones is hedged with a read of every member.
        let (block, _hedged) = self
            .raw
            .read_hedged(
                &self.read_latencies,
                hoard_net::BlockRead {
                    volume: loc.volume,
                    offset: loc.offset,
                    frag_len,
                    block_len,
                    k,
                    sources: &healthy,
                },
                move |block, present, parity| {
                    codec.rebuild_block(block, present, parity, block_len).ok()
                },
            )
            .await?;
        let expected = *hash;
        tokio::task::spawn_blocking(move || {
            (BlockHash::from_bytes(*blake3::hash(&block).as_bytes()) == expected).then_some(block)
        })
        .await
        .ok()?
    }

    fn codec(&self, k: u32, m: u32) -> Option<Arc<Codec>> {
        let mut codecs = self.codecs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = codecs.get(&(k, m)) {
            return Some(Arc::clone(c));
        }
        let c = Arc::new(Codec::new(Geometry::new(k, m).ok()?).ok()?);
        codecs.insert((k, m), Arc::clone(&c));
        Some(c)
    }

    /// Reads `k` fragments from members meta lists as healthy, data members first, and decodes the
    /// block from parity when a data member is not among them. `None` sends the caller to the
    /// frontend: too few healthy members, a fragment that could not be read, or a hash mismatch.
    async fn read_direct(&self, hash: &BlockHash, loc: &v1::LocateResponse) -> Option<Vec<Bytes>> {
        let (k, m) = (loc.k as usize, loc.m as usize);
        if k == 0 || loc.members.len() != k + m || loc.crcs.len() != k + m {
            return None;
        }
        // Sizes from the answer are checked before anything is sized or sliced by them.
        if loc.frag_len == 0
            || loc.frag_len > hoard_types::MAX_FRAGMENT_LEN
            || loc.block_len == 0
            || loc.block_len > (k as u64).saturating_mul(loc.frag_len)
        {
            return None;
        }
        let chosen: Vec<&v1::FragmentSource> = loc
            .members
            .iter()
            .filter(|s| readable(s) && (s.member as usize) < k + m)
            .take(k)
            .collect();
        if chosen.len() < k {
            return None;
        }
        let reads = chosen.iter().map(|s| {
            let client = self.volumes.get(&s.address);
            let req = v1::ReadFragmentRequest {
                extent: Some(hoard_proto::convert::extent_ref(ExtentId {
                    volume: loc.volume,
                    member: s.member,
                    generation: s.generation,
                })),
                offset: loc.offset,
                frag_len: loc.frag_len as u32,
                expected_crc: loc.crcs[s.member as usize],
                hash: Bytes::copy_from_slice(hash.as_bytes()),
            };
            let index = s.member as usize;
            async move {
                let mut c = client.ok()?;
                let f = c.read_fragment(req).await.ok()?.into_inner().fragment;
                (f.len() as u64 == loc.frag_len).then_some((index, f))
            }
        });
        let got: Vec<(usize, Bytes)> = futures::future::join_all(reads)
            .await
            .into_iter()
            .collect::<Option<_>>()?;
        let block_len = loc.block_len;
        let frag_len = loc.frag_len as usize;
        let data_only = got.iter().all(|(i, _)| *i < k);
        let codec = if data_only {
            None
        } else {
            Some(self.codec(loc.k, loc.m)?)
        };
        let expected = *hash;
        // Decoding (when parity was read) and hashing leave the async workers free.
        tokio::task::spawn_blocking(move || {
            let data: Vec<Bytes> = match codec {
                None => {
                    let mut d = got;
                    d.sort_by_key(|(i, _)| *i);
                    d.into_iter().map(|(_, f)| f).collect()
                }
                Some(codec) => {
                    let mut slots: Vec<Option<Bytes>> = vec![None; k + m];
                    for (i, f) in got {
                        slots[i] = Some(f);
                    }
                    codec.decode_data(slots).ok()?
                }
            };
            let parts: Vec<Bytes> = hoard_erasure::slices(&data, 0, frag_len, 0, block_len)
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect();
            let mut h = blake3::Hasher::new();
            for p in &parts {
                h.update(p);
            }
            (BlockHash::from_bytes(*h.finalize().as_bytes()) == expected).then_some(parts)
        })
        .await
        .ok()?
    }

    /// Stores one block (1 B to 4 MiB).
    pub async fn put(&self, data: Bytes) -> Result<Put, ClientError> {
        self.put_checked(data, None).await
    }

    /// Stores one block, failing with `INVALID_ARGUMENT` unless it hashes to `expected`.
    pub async fn put_checked(
        &self,
        data: Bytes,
        expected: Option<BlockHash>,
    ) -> Result<Put, ClientError> {
        self.call(|f| {
            let data = data.clone();
            async move {
                if let Some(put) = self.put_raw(&f, &data, expected).await {
                    return put;
                }
                Self::put_grpc(&f, data, expected).await
            }
        })
        .await
    }

    /// A put by the raw protocol; `None` when it should go by gRPC instead. Sizes out of bounds go by
    /// gRPC, whose answer names the problem. A put is safe to send twice (blocks are stored by hash),
    /// so one that went unanswered is sent again by gRPC.
    async fn put_raw(
        &self,
        f: &Frontend,
        data: &Bytes,
        expected: Option<BlockHash>,
    ) -> Option<Result<Put, ClientError>> {
        if !self.raw_puts {
            return None;
        }
        let address = f.raw_puts.as_deref()?;
        if data.is_empty() || data.len() as u64 > hoard_types::MAX_BLOCK_LEN {
            return None;
        }
        {
            let mut off = f
                .raw_puts_off_until
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match *off {
                Some(until) if Instant::now() < until => return None,
                Some(_) => *off = None,
                None => {}
            }
        }
        let req = hoard_proto::raw::RawPut {
            len: data.len() as u32,
            expected: expected.map(|h| *h.as_bytes()),
        };
        match self.raw.put(address, &req, data, RAW_PUT_TIMEOUT).await {
            Ok(a) => Some(Ok(Put {
                hash: BlockHash::from_bytes(a.hash),
                deduplicated: a.deduplicated,
            })),
            Err(hoard_proto::raw::RawError::Failed { code, message }) => Some(Err(
                tonic::Status::new(tonic::Code::from_i32(i32::from(code)), message).into(),
            )),
            Err(e) => {
                tracing::warn!(
                    "raw put to {address} unanswered ({e}); putting by gRPC for a minute"
                );
                *f.raw_puts_off_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + RAW_PUT_BACKOFF);
                None
            }
        }
    }

    async fn put_grpc(
        f: &Frontend,
        data: Bytes,
        expected: Option<BlockHash>,
    ) -> Result<Put, ClientError> {
        let mut msgs = Vec::with_capacity(1 + data.len().div_ceil(PUT_CHUNK));
        msgs.push(v1::PutRequest {
            msg: Some(Msg::Header(v1::PutHeader {
                size: data.len() as u64,
                expected_hash: expected.map(|h| h.to_hex()).unwrap_or_default(),
            })),
        });
        let mut at = 0;
        while at < data.len() {
            let end = (at + PUT_CHUNK).min(data.len());
            msgs.push(v1::PutRequest {
                msg: Some(Msg::Chunk(data.slice(at..end))),
            });
            at = end;
        }
        let resp = f
            .inner
            .clone()
            .put(tokio_stream::iter(msgs))
            .await?
            .into_inner();
        let hash = resp
            .hash
            .parse()
            .map_err(|_| ClientError::BadAnswer(resp.hash.clone()))?;
        Ok(Put {
            hash,
            deduplicated: resp.deduplicated,
        })
    }

    /// Reads a whole block.
    pub async fn get(&self, hash: &BlockHash) -> Result<Bytes, ClientError> {
        self.get_range(hash, 0, 0).await
    }

    /// Reads `[offset, offset + length)` of a block; `length` 0 reads to its end.
    pub async fn get_range(
        &self,
        hash: &BlockHash,
        offset: u64,
        length: u64,
    ) -> Result<Bytes, ClientError> {
        self.get_raw(&hash.to_hex(), offset, length).await
    }

    /// Like [`Client::get_range`], with the hash as given (the cell validates it).
    pub async fn get_raw(
        &self,
        hash: &str,
        offset: u64,
        length: u64,
    ) -> Result<Bytes, ClientError> {
        let mut parts = self.get_parts(hash, offset, length).await?;
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one part"));
        }
        let mut out = BytesMut::with_capacity(parts.iter().map(|p| p.len()).sum());
        for p in parts {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }

    /// [`Client::get_raw`] without joining the bytes into one buffer: the parts in order, as the
    /// frontend's messages carried them (at most 1 MiB each, so that gRPC clients with the usual 4 MiB
    /// message limit can read any block), for callers that write them out with vectored I/O.
    pub async fn get_parts(
        &self,
        hash: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<Bytes>, ClientError> {
        // A read that breaks off midway is read again whole, from the next frontend.
        self.call(|f| async move {
            let mut stream = f
                .inner
                .clone()
                .get(v1::GetRequest {
                    hash: hash.to_string(),
                    offset,
                    length,
                })
                .await?
                .into_inner();
            let mut parts: Vec<Bytes> = Vec::new();
            while let Some(msg) = stream.next().await {
                parts.push(msg?.data);
            }
            Ok(parts)
        })
        .await
    }

    pub async fn stat(&self, hash: &str) -> Result<v1::StatResponse, ClientError> {
        self.call(|f| async move {
            Ok(f.inner
                .clone()
                .stat(v1::StatRequest {
                    hash: hash.to_string(),
                })
                .await?
                .into_inner())
        })
        .await
    }

    /// Of `hashes` (hex), the ones the cell does not hold.
    pub async fn find_missing(&self, hashes: &[String]) -> Result<Vec<String>, ClientError> {
        self.call(|f| async move {
            Ok(f.inner
                .clone()
                .find_missing(v1::FindMissingRequest {
                    hashes: hashes.to_vec(),
                })
                .await?
                .into_inner()
                .missing)
        })
        .await
    }

    /// A delete token, with the reference window and the delete grace. Take it before reading the
    /// references that decide what to delete.
    pub async fn delete_token(&self) -> Result<v1::DeleteTokenResponse, ClientError> {
        self.call(|f| async move {
            Ok(f.inner
                .clone()
                .delete_token(v1::DeleteTokenRequest {})
                .await?
                .into_inner())
        })
        .await
    }

    /// Deletes `hashes` under `token`: one result per hash, in order.
    pub async fn delete(
        &self,
        hashes: &[String],
        token: u64,
    ) -> Result<Vec<v1::DeleteResult>, ClientError> {
        let r = self
            .call(|f| async move {
                Ok(f.inner
                    .clone()
                    .delete(v1::DeleteRequest {
                        hashes: hashes.to_vec(),
                        token,
                    })
                    .await?
                    .into_inner())
            })
            .await?;
        Ok(r.results().collect())
    }

    /// Brings deleted blocks back within the grace: one result per hash, in order.
    pub async fn undelete(
        &self,
        hashes: &[String],
    ) -> Result<Vec<v1::UndeleteResult>, ClientError> {
        let r = self
            .call(|f| async move {
                Ok(f.inner
                    .clone()
                    .undelete(v1::UndeleteRequest {
                        hashes: hashes.to_vec(),
                    })
                    .await?
                    .into_inner())
            })
            .await?;
        Ok(r.results().collect())
    }
}

/// An error and its sources on one line.
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Where raw puts go: the frontend's `host:port` of a plain `http://` endpoint (the raw protocol has no
/// TLS, so `https://` endpoints put by gRPC).
fn raw_address(ep: &Endpoint) -> Option<String> {
    let uri = ep.uri();
    if uri.scheme_str() != Some("http") {
        return None;
    }
    Some(format!("{}:{}", uri.host()?, uri.port_u16().unwrap_or(80)))
}

/// Whether the cell lists a member as readable now.
fn readable(s: &v1::FragmentSource) -> bool {
    hoard_proto::convert::member_health(&s.state).is_ok_and(hoard_types::state::MemberHealth::is_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_names_one_or_more_frontends() {
        assert_eq!(
            endpoints("http://127.0.0.1:7700").unwrap(),
            ["http://127.0.0.1:7700"]
        );
        assert_eq!(
            endpoints(" http://127.0.0.1:1 ,http://127.0.0.1:2").unwrap(),
            ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
        for bad in [
            "",
            "http://127.0.0.1:1,",
            "http://127.0.0.1:1,,http://127.0.0.1:2",
        ] {
            let e = endpoints(bad).unwrap_err().to_string();
            assert!(e.contains("empty entry"), "{bad:?}: {e}");
        }
        // A name stands for each of its addresses, on the port given.
        let local = endpoints("http://localhost:7700").unwrap();
        assert!(!local.is_empty());
        assert!(
            local
                .iter()
                .all(|u| u.starts_with("http://") && u.ends_with(":7700")),
            "{local:?}"
        );
    }

    #[test]
    fn only_a_frontend_that_did_not_answer_sends_a_call_elsewhere() {
        let status = |c| ClientError::Status(tonic::Status::new(c, "x"));
        assert!(frontend_failed(&status(tonic::Code::Unavailable)));
        assert!(frontend_failed(&ClientError::Connect(
            "a".into(),
            "refused".into()
        )));
        for c in [
            tonic::Code::NotFound,
            tonic::Code::InvalidArgument,
            tonic::Code::DataLoss,
            tonic::Code::ResourceExhausted,
        ] {
            assert!(!frontend_failed(&status(c)), "{c:?}");
        }
    }
}
