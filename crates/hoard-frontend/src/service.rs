//! The public `BlockStore` gRPC service: wire validation, then the put and get paths.

use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use hoard_proto::parse_hash;
use hoard_proto::v1::{self, block_store_server::BlockStore, put_request::Msg};
use hoard_types::{BlockHash, MAX_BLOCK_LEN};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::{Frontend, FrontendError};

/// Bytes per message when streaming a block back: well under the 4 MiB message limit that gRPC clients
/// have by default, so that any of them can read a whole block without raising it.
const GET_CHUNK: usize = 1 << 20;
/// Hashes one FindMissing call may ask about.
const MAX_FIND_MISSING: usize = 100_000;

#[derive(Clone)]
pub struct BlockStoreService {
    fe: Arc<Frontend>,
}

impl BlockStoreService {
    pub fn new(fe: Arc<Frontend>) -> Self {
        BlockStoreService { fe }
    }
}

/// A put's block as it arrived, and the room it holds in the frontend's put memory until dropped.
struct Arrived<'a> {
    data: Bytes,
    expected: Option<BlockHash>,
    _room: tokio::sync::SemaphorePermit<'a>,
}

/// Reads a put stream: the header, then chunks adding up to exactly the header's size. The block waits
/// for room in the frontend's put memory before its chunks are read, and must arrive as fast as a raw
/// put's ([`hoard_net::listen::body_deadline`]).
async fn read_put_stream(
    fe: &Frontend,
    mut stream: Streaming<v1::PutRequest>,
) -> Result<Arrived<'_>, Status> {
    let header = match stream.next().await {
        Some(Ok(v1::PutRequest {
            msg: Some(Msg::Header(h)),
        })) => h,
        Some(Ok(_)) => {
            return Err(Status::invalid_argument(
                "the put stream must start with a header",
            ));
        }
        Some(Err(s)) => return Err(s),
        None => return Err(Status::invalid_argument("empty put stream: no header")),
    };
    if header.size == 0 {
        return Err(Status::invalid_argument(
            "empty block: blocks hold 1 to 4194304 bytes",
        ));
    }
    if header.size > MAX_BLOCK_LEN {
        return Err(Status::invalid_argument(format!(
            "block of {} bytes is over the 4 MiB limit ({MAX_BLOCK_LEN} bytes)",
            header.size
        )));
    }
    let expected = if header.expected_hash.is_empty() {
        None
    } else {
        Some(parse_hash(&header.expected_hash)?)
    };
    let size = header.size as usize;
    let room = fe
        .put_room(size)
        .await
        .ok_or_else(|| Status::unavailable("the frontend is stopping"))?;
    let deadline = hoard_net::listen::body_deadline(size);
    let data = tokio::time::timeout(deadline, read_put_body(&mut stream, size))
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "the block's {size} bytes did not arrive within {:.1} s of the put's header",
                deadline.as_secs_f64()
            ))
        })??;
    Ok(Arrived {
        data,
        expected,
        _room: room,
    })
}

/// The chunks of a put stream, exactly `size` bytes.
async fn read_put_body(
    stream: &mut Streaming<v1::PutRequest>,
    size: usize,
) -> Result<Bytes, Status> {
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut got = 0usize;
    while let Some(msg) = stream.next().await {
        let chunk = match msg?.msg {
            Some(Msg::Chunk(c)) => c,
            Some(Msg::Header(_)) => {
                return Err(Status::invalid_argument(
                    "a second header in one put stream",
                ));
            }
            None => continue,
        };
        got += chunk.len();
        if got > size {
            return Err(Status::invalid_argument(format!(
                "the stream carries more bytes than the header's size of {size}"
            )));
        }
        // A block sent as one chunk is used as is, without a copy.
        match (&mut first, &mut buf) {
            (None, None) => first = Some(chunk),
            (Some(f), None) => {
                let mut b = BytesMut::with_capacity(size);
                b.extend_from_slice(f);
                b.extend_from_slice(&chunk);
                buf = Some(b);
                first = None;
            }
            (_, Some(b)) => b.extend_from_slice(&chunk),
        }
    }
    if got != size {
        return Err(Status::invalid_argument(format!(
            "the header announced {size} bytes but the stream carried {got}"
        )));
    }
    Ok(match (first, buf) {
        (Some(f), None) => f,
        (_, Some(b)) => b.freeze(),
        (None, None) => Bytes::new(),
    })
}

type GetStream = Pin<Box<dyn Stream<Item = Result<v1::GetResponse, Status>> + Send>>;

#[tonic::async_trait]
impl BlockStore for BlockStoreService {
    async fn put(
        &self,
        req: Request<Streaming<v1::PutRequest>>,
    ) -> Result<Response<v1::PutResponse>, Status> {
        let arrived = read_put_stream(&self.fe, req.into_inner()).await?;
        let (data, expected) = (arrived.data.clone(), arrived.expected);
        let size = data.len() as u64;
        let out = self.fe.put(data, expected).await.map_err(|e| {
            log_failure("put", &e);
            e.to_status()
        })?;
        Ok(Response::new(v1::PutResponse {
            hash: out.hash.to_hex(),
            size,
            deduplicated: out.deduplicated,
        }))
    }

    type GetStream = GetStream;

    async fn get(&self, req: Request<v1::GetRequest>) -> Result<Response<GetStream>, Status> {
        let req = req.into_inner();
        let hash = parse_hash(&req.hash)?;
        let (bytes, block_len) = self
            .fe
            .get(hash, req.offset, req.length)
            .await
            .map_err(|e| {
                log_failure("get", &e);
                e.to_status()
            })?;
        // Each fragment slice goes out as its own message (split further past GET_CHUNK): no copy.
        let mut msgs = Vec::new();
        for part in bytes {
            let mut at = 0;
            while at < part.len() {
                let end = (at + GET_CHUNK).min(part.len());
                msgs.push(Ok(v1::GetResponse {
                    block_len: if msgs.is_empty() { block_len } else { 0 },
                    data: part.slice(at..end),
                }));
                at = end;
            }
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(msgs))))
    }

    async fn stat(
        &self,
        req: Request<v1::StatRequest>,
    ) -> Result<Response<v1::StatResponse>, Status> {
        let hash = parse_hash(&req.get_ref().hash)?;
        let l = self.fe.locate(&hash).await.map_err(|e| e.to_status())?;
        Ok(Response::new(v1::StatResponse {
            hash: hash.to_hex(),
            size: l.location.block_len,
            volume: l.location.volume,
            offset: l.location.offset,
            created_unix_ms: l.created_unix_ms,
            volume_state: l.volume.state.clone(),
            geometry: format!("{}+{}", l.volume.k, l.volume.m),
        }))
    }

    async fn locate(
        &self,
        req: Request<v1::LocateRequest>,
    ) -> Result<Response<v1::LocateResponse>, Status> {
        let hash = parse_hash(&req.get_ref().hash)?;
        let l = self.fe.locate(&hash).await.map_err(|e| e.to_status())?;
        Ok(Response::new(v1::LocateResponse {
            volume: l.location.volume,
            offset: l.location.offset,
            frag_len: l.location.frag_len,
            block_len: l.location.block_len,
            k: l.volume.k,
            m: l.volume.m,
            crcs: l.location.crcs.clone(),
            members: l
                .volume
                .members
                .iter()
                .map(|m| v1::FragmentSource {
                    member: m.index,
                    address: m.address.clone(),
                    generation: m.generation,
                    state: m.state.clone(),
                })
                .collect(),
        }))
    }

    async fn find_missing(
        &self,
        req: Request<v1::FindMissingRequest>,
    ) -> Result<Response<v1::FindMissingResponse>, Status> {
        let hashes = parse_hashes(&req.get_ref().hashes, "FindMissing")?;
        let missing = self
            .fe
            .find_missing(&hashes)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(v1::FindMissingResponse {
            missing: missing.iter().map(|h| h.to_hex()).collect(),
        }))
    }

    async fn delete_token(
        &self,
        _req: Request<v1::DeleteTokenRequest>,
    ) -> Result<Response<v1::DeleteTokenResponse>, Status> {
        let t = self.fe.delete_token().await.map_err(|e| e.to_status())?;
        Ok(Response::new(t))
    }

    async fn delete(
        &self,
        req: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        let req = req.into_inner();
        let hashes = parse_hashes(&req.hashes, "Delete")?;
        let results = self.fe.delete(&hashes, req.token).await.map_err(|e| {
            log_failure("delete", &e);
            e.to_status()
        })?;
        Ok(Response::new(v1::DeleteResponse {
            results: results.into_iter().map(|r| r as i32).collect(),
        }))
    }

    async fn undelete(
        &self,
        req: Request<v1::UndeleteRequest>,
    ) -> Result<Response<v1::UndeleteResponse>, Status> {
        let hashes = parse_hashes(&req.get_ref().hashes, "Undelete")?;
        let results = self.fe.undelete(&hashes).await.map_err(|e| {
            log_failure("undelete", &e);
            e.to_status()
        })?;
        Ok(Response::new(v1::UndeleteResponse {
            results: results.into_iter().map(|r| r as i32).collect(),
        }))
    }
}

/// The hashes of a batch request, at most [`MAX_FIND_MISSING`] of them.
fn parse_hashes(raw: &[String], call: &str) -> Result<Vec<BlockHash>, Status> {
    if raw.len() > MAX_FIND_MISSING {
        return Err(Status::invalid_argument(format!(
            "{} hashes in one {call} call; at most {MAX_FIND_MISSING}",
            raw.len()
        )));
    }
    raw.iter().map(|h| parse_hash(h)).collect()
}

/// Logs a failure where it is handled: bad input at debug, the cell's own trouble at warn.
pub(crate) fn log_failure(op: &str, e: &FrontendError) {
    match e {
        FrontendError::Invalid(_) | FrontendError::NotFound(_) | FrontendError::OutOfRange(_) => {
            tracing::debug!("{op}: {e}")
        }
        _ => tracing::warn!("{op}: {e}"),
    }
}
