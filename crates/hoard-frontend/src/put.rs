//! The write path (design §3): hash, dedup, reserve, encode, fan out, commit, answer.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hoard_erasure::Stripe;
use hoard_proto::raw::RawError;
use hoard_proto::v1;
use hoard_types::ExtentId;
use hoard_types::state::ProblemKind;
use hoard_types::{BlockHash, BlockLocation, MAX_BLOCK_LEN};
use tracing::Instrument;

use crate::writer::OpenVolume;
use crate::{Frontend, FrontendError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    pub hash: BlockHash,
    /// The cell already held the block; nothing new was written.
    pub deduplicated: bool,
}

/// The gRPC code a volume server's raw answer carries for an append its disk had no room for.
const DISK_FULL: u8 = tonic::Code::ResourceExhausted as u8;

/// Why one attempt on one volume failed.
struct AttemptFailure {
    member: Option<u32>,
    detail: String,
    /// What meta is told: `Unreachable` when the member's server did not answer at all, `Full` when
    /// its disk had no room, `WriteFailed` when it refused the append.
    kind: ProblemKind,
}

impl Frontend {
    /// Stores one block. Answers only after every member of the volume and meta hold it durably.
    pub async fn put(
        self: &Arc<Self>,
        data: Bytes,
        expected: Option<BlockHash>,
    ) -> Result<PutOutcome, FrontendError> {
        let started = Instant::now();
        let len = data.len() as u64;
        if len == 0 {
            return Err(FrontendError::Invalid(
                "empty block: blocks hold 1 to 4194304 bytes".into(),
            ));
        }
        if len > MAX_BLOCK_LEN {
            return Err(FrontendError::Invalid(format!(
                "block of {len} bytes is over the 4 MiB limit ({MAX_BLOCK_LEN} bytes)"
            )));
        }
        let d = data.clone();
        let hash = tokio::task::spawn_blocking(move || BlockHash::of(&d))
            .await
            .map_err(|e| FrontendError::Internal(e.to_string()))?;
        if let Some(want) = expected
            && want != hash
        {
            return Err(FrontendError::Invalid(format!(
                "expected hash {want} but the bytes hash to {hash}"
            )));
        }
        let span = tracing::info_span!("put", block = %hash.short(), len);
        self.store(data, hash, started).instrument(span).await
    }

    /// The put after hashing: dedup, then volumes until one takes the block.
    async fn store(
        self: &Arc<Self>,
        data: Bytes,
        hash: BlockHash,
        started: Instant,
    ) -> Result<PutOutcome, FrontendError> {
        let len = data.len() as u64;
        if self.is_live(&hash).await? {
            metrics::counter!("hoard_frontend_dedup_hits_total").increment(1);
            return Ok(PutOutcome {
                hash,
                deduplicated: true,
            });
        }

        let loc = self.write_new(&data, &hash).await?;
        let resp = self
            .meta()
            .commit(v1::CommitRequest {
                location: Some(v1::BlockLocation::from_domain(&hash, &loc, 0)),
            })
            .await
            .map_err(FrontendError::Meta)?
            .into_inner();
        metrics::histogram!("hoard_frontend_put_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("hoard_frontend_put_bytes_total").increment(len);
        if resp.inserted {
            self.watcher.offer(self, hash);
        }
        Ok(PutOutcome {
            hash,
            // Another put of the same bytes committed first; ours is garbage for compaction.
            deduplicated: !resp.inserted,
        })
    }

    /// Writes a block to an open volume, trying volumes until one takes it (every member durable),
    /// and answers where it went; nothing is committed in meta. Puts commit the location; compaction
    /// re-points a row to it.
    pub async fn write_new(
        self: &Arc<Self>,
        data: &Bytes,
        hash: &BlockHash,
    ) -> Result<BlockLocation, FrontendError> {
        let len = data.len() as u64;
        let mut stripe: Option<(hoard_types::Geometry, Arc<Stripe>)> = None;
        let mut last = String::new();
        for _attempt in 0..self.cfg.put_attempts.max(1) {
            let (vol, offset) = self.writer.reserve(self, hash, len).await?;
            let s = match &stripe {
                Some((g, s)) if *g == vol.geometry => Arc::clone(s),
                _ => {
                    let codec = self.codec(vol.geometry)?;
                    let d = data.clone();
                    let s = tokio::task::spawn_blocking(move || codec.encode(&d))
                        .await
                        .map_err(|e| FrontendError::Internal(e.to_string()))?
                        .map_err(|e| FrontendError::Internal(e.to_string()))?;
                    let s = Arc::new(s);
                    stripe = Some((vol.geometry, Arc::clone(&s)));
                    s
                }
            };
            match self.write_stripe(&vol, offset, hash, len, &s).await {
                Ok(()) => {}
                Err(f) => {
                    tracing::warn!(volume = vol.id(), member = ?f.member, "put attempt failed: {}", f.detail);
                    metrics::counter!("hoard_frontend_put_retries_total").increment(1);
                    last = format!("volume {}: {}", vol.id(), f.detail);
                    let address = f
                        .member
                        .and_then(|m| vol.info.members.get(m as usize))
                        .map(|m| m.address.clone());
                    self.writer
                        .retire(self, &vol, f.member, f.kind, f.detail)
                        .await;
                    // A server that does not answer fails every volume it serves: stop using them all
                    // rather than discovering it one put at a time.
                    if f.kind == ProblemKind::Unreachable
                        && let Some(a) = address
                    {
                        self.writer.retire_address(self, &a).await;
                    }
                    continue;
                }
            }
            return Ok(BlockLocation {
                volume: vol.id(),
                offset,
                frag_len: s.frag_len as u64,
                block_len: len,
                crcs: s.crcs.clone(),
            });
        }
        Err(FrontendError::Unavailable(format!(
            "put failed on {} volumes; last: {last}",
            self.cfg.put_attempts
        )))
    }

    /// The dedup check: whether the cell holds the block, as an assertion (the client will be told
    /// it is present). A deleted block within its grace comes back; a block whose volume is lost is
    /// not present, and the put writes it anew.
    async fn is_live(&self, hash: &BlockHash) -> Result<bool, FrontendError> {
        let resp = self
            .meta()
            .assert(v1::AssertRequest {
                hashes: vec![Bytes::copy_from_slice(hash.as_bytes())],
                revive: true,
            })
            .await
            .map_err(FrontendError::Meta)?;
        Ok(resp.get_ref().present.first().copied().unwrap_or(false))
    }

    /// Sends fragment `i` and the block record to member `i`, for every member, in parallel.
    async fn write_stripe(
        &self,
        vol: &OpenVolume,
        offset: u64,
        hash: &BlockHash,
        len: u64,
        stripe: &Stripe,
    ) -> Result<(), AttemptFailure> {
        let record = v1::BlockRecord {
            hash: Bytes::copy_from_slice(hash.as_bytes()),
            offset,
            frag_len: stripe.frag_len as u32,
            block_len: len as u32,
            crcs: stripe.crcs.clone(),
        };
        // One deadline for the whole stripe: a member that does not answer within it costs the put
        // this volume, not the fixed append_timeout.
        let timeout = self
            .append_latencies
            .append_deadline(self.cfg.append_timeout);
        let appends = vol.info.members.iter().map(|m| {
            let fragment = &stripe.fragments[m.index as usize];
            let index = m.index;
            let extent = hoard_proto::convert::extent_ref(ExtentId {
                volume: vol.id(),
                member: m.index,
                generation: m.generation,
            });
            let record = &record;
            let append = async move {
                if self.cfg.raw_appends {
                    let req = hoard_proto::raw::RawAppend {
                        volume: extent.volume,
                        member: extent.member,
                        generation: extent.generation,
                        epoch: vol.epoch,
                        hash: *hash.as_bytes(),
                        offset,
                        frag_len: stripe.frag_len as u32,
                        block_len: len as u32,
                        crcs: stripe.crcs.clone(),
                    };
                    return self
                        .raw
                        .append(&m.address, &req, fragment, timeout)
                        .await
                        .map_err(|e| {
                            let e = match e {
                                RawError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                                    RawError::Io(std::io::Error::new(
                                        io.kind(),
                                        format!("no answer within {timeout:?}"),
                                    ))
                                }
                                e => e,
                            };
                            // As over gRPC: no answer, or a member that cannot take writes, counts
                            // against the whole server; a full disk against that disk's room only;
                            // a refusal or a malformed exchange against neither.
                            let kind = match e {
                                RawError::Io(_) | RawError::Unavailable(_) => {
                                    ProblemKind::Unreachable
                                }
                                RawError::Failed { code, .. } if code == DISK_FULL => {
                                    ProblemKind::Full
                                }
                                _ => ProblemKind::WriteFailed,
                            };
                            (index, format!("member {index}: {e}"), kind)
                        });
                }
                let req = v1::AppendRequest {
                    extent: Some(extent),
                    epoch: vol.epoch,
                    record: Some(record.clone()),
                    fragment: fragment.clone(),
                };
                let mut c = self
                    .volumes
                    .get(&m.address)
                    .map_err(|e| (index, e.to_string(), ProblemKind::Unreachable))?;
                match tokio::time::timeout(timeout, c.append(req)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(s)) => Err((
                        index,
                        format!("member {index}: {}", s.message()),
                        match s.code() {
                            tonic::Code::Unavailable => ProblemKind::Unreachable,
                            tonic::Code::ResourceExhausted => ProblemKind::Full,
                            _ => ProblemKind::WriteFailed,
                        },
                    )),
                    Err(_) => Err((
                        index,
                        format!("member {index}: append timed out after {timeout:?}"),
                        ProblemKind::Unreachable,
                    )),
                }
            };
            async move {
                let started = Instant::now();
                let r = append.await;
                (r, started.elapsed())
            }
        });
        let results = futures::future::join_all(appends).await;
        // Successes teach the deadline. Appends that ran out of time teach it only when more than
        // `m` members of the stripe did: then the cell is slow, not one member, and the deadline must
        // grow with it; one stopped member must not.
        let late = results.iter().filter(|(_, took)| *took >= timeout).count();
        for (r, took) in &results {
            if r.is_ok() || (late > vol.geometry.m as usize && *took >= timeout) {
                self.append_latencies.record(*took);
            }
        }
        let results = results.into_iter().map(|(r, _)| r);
        match results.into_iter().find_map(Result::err) {
            None => Ok(()),
            Some((member, detail, kind)) => Err(AttemptFailure {
                member: Some(member),
                detail,
                kind,
            }),
        }
    }
}
