//! The read path (design §4): look up, read the data fragments covering the range, fall back to parity
//! when a member is down, slow or corrupt, and check BLAKE3 on whole-block reads.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hoard_proto::v1;
use hoard_types::ExtentId;
use hoard_types::state::{MemberHealth, ProblemKind};
use hoard_types::{BlockHash, BlockLocation, Geometry};
use tonic::Code;
use tracing::Instrument;

use crate::{Frontend, FrontendError};

/// A located block and its volume.
pub struct Located {
    pub location: BlockLocation,
    pub created_unix_ms: u64,
    pub volume: v1::VolumeInfo,
}

impl Frontend {
    /// Where a block lives, with its volume.
    pub async fn locate(&self, hash: &BlockHash) -> Result<Located, FrontendError> {
        let resp = self
            .meta()
            .lookup(v1::LookupRequest {
                hashes: vec![Bytes::copy_from_slice(hash.as_bytes())],
                with_volumes: true,
            })
            .await
            .map_err(FrontendError::Meta)?
            .into_inner();
        let found = resp
            .found
            .into_iter()
            .next()
            .ok_or(FrontendError::NotFound(*hash))?;
        let (_, location) = found
            .to_domain()
            .map_err(|e| FrontendError::Internal(e.to_string()))?;
        let volume = resp
            .volumes
            .into_iter()
            .find(|v| v.id == location.volume)
            .ok_or_else(|| {
                FrontendError::Internal(format!(
                    "volume {} of block {hash} unknown",
                    location.volume
                ))
            })?;
        Ok(Located {
            location,
            created_unix_ms: found.created_unix_ms,
            volume,
        })
    }

    /// Hashes among `hashes` that the cell does not hold: absent, deleted, or in a lost volume. Those
    /// left out count as presence answers: meta records the assertion before it answers.
    pub async fn find_missing(
        &self,
        hashes: &[BlockHash],
    ) -> Result<Vec<BlockHash>, FrontendError> {
        let mut missing = Vec::new();
        for chunk in hashes.chunks(4096) {
            let resp = self
                .meta()
                .assert(v1::AssertRequest {
                    hashes: raw_hashes(chunk),
                    revive: false,
                })
                .await
                .map_err(FrontendError::Meta)?
                .into_inner();
            if resp.present.len() != chunk.len() {
                return Err(FrontendError::Internal(format!(
                    "meta answered {} presence flags for {} hashes",
                    resp.present.len(),
                    chunk.len()
                )));
            }
            missing.extend(
                chunk
                    .iter()
                    .zip(&resp.present)
                    .filter(|(_, present)| !**present)
                    .map(|(h, _)| *h),
            );
        }
        Ok(missing)
    }

    /// A delete token from meta's clock, with the reference window and the delete grace.
    pub async fn delete_token(&self) -> Result<v1::DeleteTokenResponse, FrontendError> {
        Ok(self
            .meta()
            .delete_token(v1::DeleteTokenRequest {})
            .await
            .map_err(FrontendError::Meta)?
            .into_inner())
    }

    /// Deletes `hashes` under `token`: one result per hash.
    pub async fn delete(
        &self,
        hashes: &[BlockHash],
        token: u64,
    ) -> Result<Vec<v1::DeleteResult>, FrontendError> {
        let mut out = Vec::with_capacity(hashes.len());
        for chunk in hashes.chunks(4096) {
            let resp = self
                .meta()
                .delete_blocks(v1::DeleteBlocksRequest {
                    hashes: raw_hashes(chunk),
                    token,
                })
                .await
                .map_err(FrontendError::Meta)?
                .into_inner();
            out.extend(resp.results().take(chunk.len()));
        }
        Ok(out)
    }

    /// Brings deleted blocks back within their grace: one result per hash.
    pub async fn undelete(
        &self,
        hashes: &[BlockHash],
    ) -> Result<Vec<v1::UndeleteResult>, FrontendError> {
        let mut out = Vec::with_capacity(hashes.len());
        for chunk in hashes.chunks(4096) {
            let resp = self
                .meta()
                .undelete_blocks(v1::UndeleteBlocksRequest {
                    hashes: raw_hashes(chunk),
                })
                .await
                .map_err(FrontendError::Meta)?
                .into_inner();
            out.extend(resp.results().take(chunk.len()));
        }
        Ok(out)
    }

    /// Reads `[offset, offset + len)` of a block (`len` 0: to its end). Returns the bytes, as slices of
    /// the fragments read (no copy), and the block's whole length.
    pub async fn get(
        self: &Arc<Self>,
        hash: BlockHash,
        offset: u64,
        len: u64,
    ) -> Result<(Vec<Bytes>, u64), FrontendError> {
        let span = tracing::info_span!("get", block = %hash.short());
        self.get_inner(hash, offset, len).instrument(span).await
    }

    async fn get_inner(
        self: &Arc<Self>,
        hash: BlockHash,
        offset: u64,
        len: u64,
    ) -> Result<(Vec<Bytes>, u64), FrontendError> {
        let started = Instant::now();
        let located = self.locate(&hash).await?;
        self.read_located(hash, &located, offset, len, started)
            .await
    }

    /// Reads a whole block at a location meta named, in any state (compaction moves deleted blocks
    /// within their grace too), checked against its hash.
    pub async fn read_at(
        self: &Arc<Self>,
        hash: BlockHash,
        location: BlockLocation,
        volume: v1::VolumeInfo,
    ) -> Result<Bytes, FrontendError> {
        let located = Located {
            location,
            created_unix_ms: 0,
            volume,
        };
        let (parts, _) = self
            .read_located(hash, &located, 0, 0, Instant::now())
            .await?;
        Ok(match parts.len() {
            1 => parts.into_iter().next().unwrap_or_default(),
            _ => {
                let mut b = bytes::BytesMut::with_capacity(located.location.block_len as usize);
                for p in parts {
                    b.extend_from_slice(&p);
                }
                b.freeze()
            }
        })
    }

    async fn read_located(
        self: &Arc<Self>,
        hash: BlockHash,
        located: &Located,
        offset: u64,
        len: u64,
        started: Instant,
    ) -> Result<(Vec<Bytes>, u64), FrontendError> {
        let loc = &located.location;
        let len = checked_range(&hash, loc.block_len, offset, len)?;
        let whole = offset == 0 && len == loc.block_len;
        if whole && let Some((block, degraded)) = self.read_whole_raw(located).await {
            // No crc32c was checked on this path: the hash is the check. A mismatch sends the read to
            // the checked path, which finds the bad fragment, decodes around it and reports it.
            if hash_of(vec![block.clone()]).await? == hash {
                if degraded {
                    metrics::counter!("hoard_frontend_degraded_reads_total").increment(1);
                }
                metrics::histogram!("hoard_frontend_get_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("hoard_frontend_get_bytes_total").increment(len);
                return Ok((vec![block], loc.block_len));
            }
            metrics::counter!("hoard_frontend_raw_read_mismatches_total").increment(1);
        }
        let bytes = self.read_range(&hash, located, offset, len).await?;
        if whole {
            let actual = hash_of(bytes.clone()).await?;
            if actual != hash {
                metrics::counter!("hoard_frontend_hash_mismatches_total").increment(1);
                return Err(FrontendError::DataLoss {
                    hash,
                    detail: format!("decoded bytes hash to {actual}"),
                });
            }
        }
        metrics::histogram!("hoard_frontend_get_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("hoard_frontend_get_bytes_total").increment(len);
        Ok((bytes, loc.block_len))
    }

    /// A whole block by raw reads: its data fragments straight into their places in one buffer and,
    /// when a data member is not healthy, one parity fragment per missing one, the missing ones rebuilt
    /// in place (no gRPC gather, no decode copies). `None` when a read fails. Unchecked: the caller
    /// compares the block with its hash. With the block comes whether it was rebuilt from parity.
    async fn read_whole_raw(&self, located: &Located) -> Option<(Bytes, bool)> {
        let (vol, loc) = (&located.volume, &located.location);
        let k = vol.k as usize;
        if vol.members.len() != k + vol.m as usize || loc.frag_len > u64::from(u32::MAX) {
            return None;
        }
        let sources: Vec<Option<hoard_net::Source>> = vol
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                (healthy(m) && m.index as usize == i && !m.address.is_empty()).then_some(
                    hoard_net::Source {
                        address: &m.address,
                        member: m.index,
                        generation: m.generation,
                    },
                )
            })
            .collect();
        let block_len = usize::try_from(loc.block_len).ok()?;
        let codec = self.codec(Geometry::new(vol.k, vol.m).ok()?).ok()?;
        let degraded = sources[..k].iter().any(Option::is_none);
        let (block, hedged) = self
            .raw
            .read_hedged(
                &self.read_latencies,
                hoard_net::BlockRead {
                    volume: vol.id,
                    offset: loc.offset,
                    frag_len: loc.frag_len as usize,
                    block_len,
                    k,
                    sources: &sources,
                },
                move |block, present, parity| {
                    codec.rebuild_block(block, present, parity, block_len).ok()
                },
            )
            .await?;
        if hedged {
            metrics::counter!("hoard_frontend_hedged_reads_total").increment(1);
        }
        Some((block, degraded))
    }

    async fn read_member(
        &self,
        vol: &v1::VolumeInfo,
        loc: &BlockLocation,
        hash: &BlockHash,
        index: usize,
    ) -> Result<Bytes, (Code, String)> {
        let m = &vol.members[index];
        if !healthy(m) {
            return Err((Code::Unavailable, format!("member {index} is {}", m.state)));
        }
        let mut client = self
            .volumes
            .get(&m.address)
            .map_err(|e| (Code::Unavailable, e.to_string()))?;
        let req = v1::ReadFragmentRequest {
            extent: Some(hoard_proto::convert::extent_ref(ExtentId {
                volume: vol.id,
                member: m.index,
                generation: m.generation,
            })),
            offset: loc.offset,
            frag_len: loc.frag_len as u32,
            expected_crc: loc.crcs[index],
            hash: Bytes::copy_from_slice(hash.as_bytes()),
        };
        match tokio::time::timeout(self.cfg.fragment_timeout, client.read_fragment(req)).await {
            Ok(Ok(r)) => {
                let f = r.into_inner().fragment;
                // Checked on the volume server; checked again here, as the bytes crossed a network.
                if f.len() != loc.frag_len as usize || hoard_erasure::crc(&f) != loc.crcs[index] {
                    return Err((
                        Code::DataLoss,
                        format!("member {index}: fragment failed its crc32c in transit"),
                    ));
                }
                Ok(f)
            }
            Ok(Err(s)) => Err((s.code(), format!("member {index}: {}", s.message()))),
            Err(_) => Err((
                Code::DeadlineExceeded,
                format!("member {index}: read timed out"),
            )),
        }
    }

    async fn read_range(
        self: &Arc<Self>,
        hash: &BlockHash,
        located: &Located,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Bytes>, FrontendError> {
        let vol = &located.volume;
        let loc = &located.location;
        let g = Geometry::new(vol.k, vol.m).map_err(|e| FrontendError::Internal(e.to_string()))?;
        let k = g.k as usize;
        let width = g.width() as usize;
        if vol.members.len() != width || loc.crcs.len() != width {
            return Err(FrontendError::Internal(format!(
                "volume {} lists {} members and the block {} crcs for geometry {g}",
                vol.id,
                vol.members.len(),
                loc.crcs.len()
            )));
        }
        let frag_len = loc.frag_len as usize;
        let (first, last) = hoard_erasure::covering(loc.frag_len, offset, len)
            .filter(|&(_, last)| last < k)
            .ok_or_else(|| {
                FrontendError::Internal(format!(
                    "block {hash}: range {offset}+{len} does not fit {k} fragments of {frag_len} bytes"
                ))
            })?;
        let mut slots: Vec<Option<Bytes>> = vec![None; width];
        let mut tried = vec![false; width];
        let mut problems: Vec<(usize, Code, String)> = Vec::new();

        let wanted: Vec<usize> = (first..=last).collect();
        self.read_into(
            vol,
            loc,
            hash,
            &wanted,
            &mut slots,
            &mut tried,
            &mut problems,
        )
        .await;
        if wanted.iter().all(|&i| slots[i].is_some()) {
            let data: Vec<Bytes> = wanted
                .iter()
                .map(|&i| slots[i].clone().expect("checked"))
                .collect();
            return Ok(hoard_erasure::slices(&data, first, frag_len, offset, len));
        }

        // Degraded: gather any k fragments, parity first (they are not needed otherwise), then decode.
        metrics::counter!("hoard_frontend_degraded_reads_total").increment(1);
        loop {
            let have = slots.iter().filter(|s| s.is_some()).count();
            if have >= k {
                break;
            }
            let more: Vec<usize> = (k..width)
                .chain(0..k)
                .filter(|&i| !tried[i])
                .take(k - have)
                .collect();
            if more.is_empty() {
                let detail = problems
                    .iter()
                    .map(|(_, _, p)| p.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                self.report_problems(vol.id, hash, loc.offset, &problems);
                return Err(FrontendError::DataLoss {
                    hash: *hash,
                    detail: format!(
                        "only {have} of the {k} fragments needed are readable ({detail})"
                    ),
                });
            }
            self.read_into(vol, loc, hash, &more, &mut slots, &mut tried, &mut problems)
                .await;
        }
        self.report_problems(vol.id, hash, loc.offset, &problems);
        let codec = self.codec(g)?;
        let data = tokio::task::spawn_blocking(move || codec.decode_data(slots))
            .await
            .map_err(|e| FrontendError::Internal(e.to_string()))?
            .map_err(|e| FrontendError::DataLoss {
                hash: *hash,
                detail: e.to_string(),
            })?;
        Ok(hoard_erasure::slices(
            &data[first..=last],
            first,
            frag_len,
            offset,
            len,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_into(
        &self,
        vol: &v1::VolumeInfo,
        loc: &BlockLocation,
        hash: &BlockHash,
        indices: &[usize],
        slots: &mut [Option<Bytes>],
        tried: &mut [bool],
        problems: &mut Vec<(usize, Code, String)>,
    ) {
        let reads = indices
            .iter()
            .map(|&i| async move { (i, self.read_member(vol, loc, hash, i).await) });
        for (i, r) in futures::future::join_all(reads).await {
            tried[i] = true;
            match r {
                Ok(b) => slots[i] = Some(b),
                Err((code, msg)) => {
                    tracing::warn!(volume = vol.id, block = %hash.short(), "fragment read failed: {msg}");
                    problems.push((i, code, msg));
                }
            }
        }
    }

    /// Tells meta about members that failed a read, so that repair looks at them. Does not wait.
    fn report_problems(
        self: &Arc<Self>,
        volume: u64,
        hash: &BlockHash,
        offset: u64,
        problems: &[(usize, Code, String)],
    ) {
        for (i, code, msg) in problems {
            let kind = if *code == Code::DataLoss {
                ProblemKind::Corrupt
            } else {
                ProblemKind::ReadFailed
            };
            let req = v1::ReportVolumeRequest {
                volume,
                member: Some(*i as u32),
                kind: kind.to_string(),
                detail: msg.clone(),
                offset,
                hash: Bytes::copy_from_slice(hash.as_bytes()),
            };
            let fe = Arc::clone(self);
            tokio::spawn(async move {
                if let Err(e) = fe.meta().report_volume(req).await {
                    tracing::debug!(volume, "could not report read problem: {}", e.message());
                }
            });
        }
    }
}

/// Whether meta lists a member as readable now (stored ok and its node heard from).
fn raw_hashes(hashes: &[BlockHash]) -> Vec<Bytes> {
    hashes
        .iter()
        .map(|h| Bytes::copy_from_slice(h.as_bytes()))
        .collect()
}

fn healthy(m: &v1::MemberInfo) -> bool {
    hoard_proto::convert::member_health(&m.state).is_ok_and(MemberHealth::is_ok)
}

/// The length of the range `[offset, offset + len)` of a block of `block_len` bytes (`len` 0: to the
/// end), or `OUT_OF_RANGE` naming the limit. Checked without overflow, whatever the request carries.
fn checked_range(
    hash: &BlockHash,
    block_len: u64,
    offset: u64,
    len: u64,
) -> Result<u64, FrontendError> {
    if offset >= block_len {
        return Err(FrontendError::OutOfRange(format!(
            "offset {offset} is past the end of block {hash} ({block_len} bytes)"
        )));
    }
    let left = block_len - offset;
    if len > left {
        return Err(FrontendError::OutOfRange(format!(
            "range of {len} bytes at offset {offset} is past the end of block {hash} ({block_len} bytes; at most {left} from there)"
        )));
    }
    Ok(if len == 0 { left } else { len })
}

/// The BLAKE3 of a block given in parts, computed off the async workers.
async fn hash_of(parts: Vec<Bytes>) -> Result<BlockHash, FrontendError> {
    tokio::task::spawn_blocking(move || {
        let mut h = blake3::Hasher::new();
        for p in &parts {
            h.update(p);
        }
        BlockHash::from_bytes(*h.finalize().as_bytes())
    })
    .await
    .map_err(|e| FrontendError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_without_overflow() {
        let h = BlockHash::of(b"ab");
        assert_eq!(checked_range(&h, 2, 0, 0).unwrap(), 2);
        assert_eq!(checked_range(&h, 2, 1, 0).unwrap(), 1);
        assert_eq!(checked_range(&h, 2, 1, 1).unwrap(), 1);
        // The request that once wrapped `offset + len` and asked for 2^61 bytes.
        let e = checked_range(&h, 2, 1, u64::MAX).unwrap_err();
        assert!(matches!(e, FrontendError::OutOfRange(_)), "{e}");
        assert!(e.to_string().contains("at most 1"), "{e}");
        for (off, len) in [(2, 0), (u64::MAX, 1), (u64::MAX, 0), (0, 3), (1, 2)] {
            assert!(
                matches!(
                    checked_range(&h, 2, off, len),
                    Err(FrontendError::OutOfRange(_))
                ),
                "{off}+{len}"
            );
        }
    }
}
