//! The internal `Volume` gRPC service.

use std::sync::Arc;

use hoard_proto::v1::{self, volume_server::Volume};
use hoard_types::BlockHash;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::VolumeError;
use crate::extent::MemberFile;
use crate::rebuild::Rebuilder;
use crate::store::VolumeStore;
use crate::wire::{disk_info, extent_info, extent_shape, record_from_wire, record_to_wire};
use hoard_types::ExtentId;

/// Records per `ReadIndex` message.
const INDEX_CHUNK: usize = 4096;

#[derive(Clone)]
pub struct VolumeService {
    store: Arc<VolumeStore>,
    rebuilder: Arc<Rebuilder>,
}

impl VolumeService {
    pub fn new(store: Arc<VolumeStore>) -> Self {
        VolumeService {
            rebuilder: Arc::new(Rebuilder::new(Arc::clone(&store))),
            store,
        }
    }
}

fn extent_ref(r: Option<v1::ExtentRef>) -> Result<ExtentId, Status> {
    Ok(crate::wire::extent_id(r.as_ref())?)
}

type IndexStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<v1::ReadIndexResponse, Status>> + Send>>;

fn blocking_err(e: tokio::task::JoinError) -> Status {
    Status::internal(e.to_string())
}

#[tonic::async_trait]
impl Volume for VolumeService {
    async fn read_range(
        &self,
        req: Request<v1::ReadRangeRequest>,
    ) -> Result<Response<v1::ReadRangeResponse>, Status> {
        let req = req.into_inner();
        let e = extent_ref(req.extent)?;
        if req.len == 0 || req.len > hoard_proto::raw::MAX_READ {
            return Err(Status::invalid_argument(format!(
                "range of {} bytes: len must be 1 to {}",
                req.len,
                hoard_proto::raw::MAX_READ
            )));
        }
        let extent = self.store.extent(e.volume, e.member)?;
        let data = tokio::task::spawn_blocking(move || {
            extent.read_range(e.generation, req.offset, req.len)
        })
        .await
        .map_err(blocking_err)??;
        metrics::counter!("hoard_volume_repair_read_bytes_total").increment(data.len() as u64);
        Ok(Response::new(v1::ReadRangeResponse { data }))
    }

    type ReadIndexStream = IndexStream;

    async fn read_index(
        &self,
        req: Request<v1::ReadIndexRequest>,
    ) -> Result<Response<IndexStream>, Status> {
        let e = extent_ref(req.into_inner().extent)?;
        let extent = self.store.extent(e.volume, e.member)?;
        if extent.generation() != e.generation {
            return Err(VolumeError::StaleGeneration {
                volume: e.volume,
                member: e.member,
                have: extent.generation(),
                asked: e.generation,
            }
            .into());
        }
        // Streamed as the scan goes: a few thousand records in memory at a time, whatever the size of
        // the index.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<v1::ReadIndexResponse, Status>>(2);
        tokio::task::spawn_blocking(move || {
            let mut chunk = Vec::with_capacity(INDEX_CHUNK);
            let mut gone = false;
            let scan = extent.for_each_record(|_, r| {
                if gone {
                    return;
                }
                chunk.push(record_to_wire(r));
                if chunk.len() == INDEX_CHUNK {
                    let records = std::mem::replace(&mut chunk, Vec::with_capacity(INDEX_CHUNK));
                    gone = tx
                        .blocking_send(Ok(v1::ReadIndexResponse {
                            records,
                            bad_slots: 0,
                        }))
                        .is_err();
                }
            });
            let last = scan
                .map_err(Status::from)
                .map(|scan| v1::ReadIndexResponse {
                    records: chunk,
                    bad_slots: scan.bad_slots.len() as u64,
                });
            if !gone {
                let _ = tx.blocking_send(last);
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn begin_rebuild(
        &self,
        req: Request<v1::BeginRebuildRequest>,
    ) -> Result<Response<v1::BeginRebuildResponse>, Status> {
        Ok(Response::new(
            self.rebuilder.begin_rebuild(req.into_inner()).await?,
        ))
    }

    async fn rebuild_step(
        &self,
        req: Request<v1::RebuildStepRequest>,
    ) -> Result<Response<v1::RebuildStepResponse>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            self.rebuilder.rebuild_step(&r.session, r.max_bytes).await?,
        ))
    }

    async fn finish_rebuild(
        &self,
        req: Request<v1::FinishRebuildRequest>,
    ) -> Result<Response<v1::FinishRebuildResponse>, Status> {
        Ok(Response::new(
            self.rebuilder
                .finish_rebuild(&req.get_ref().session)
                .await?,
        ))
    }

    async fn abort_rebuild(
        &self,
        req: Request<v1::AbortRebuildRequest>,
    ) -> Result<Response<v1::AbortRebuildResponse>, Status> {
        self.rebuilder.abort_rebuild(&req.get_ref().session).await;
        Ok(Response::new(v1::AbortRebuildResponse {}))
    }

    async fn stage_write(
        &self,
        req: Request<v1::StageWriteRequest>,
    ) -> Result<Response<v1::StageWriteResponse>, Status> {
        let r = req.into_inner();
        let e = extent_ref(r.extent)?;
        extent_shape(e.member, r.k, r.m, r.capacity)?;
        let mf = MemberFile {
            format: 1,
            volume: e.volume,
            member: e.member,
            k: r.k,
            m: r.m,
            generation: e.generation,
            epoch: 0,
            capacity: r.capacity,
            disk_id: r.disk_id,
            created_unix_ms: hoard_types::now_ms(),
        };
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let staged = store.stage(mf)?;
            if !r.data.is_empty() {
                staged.write_at(r.offset, &r.data)?;
            }
            Ok::<_, VolumeError>(())
        })
        .await
        .map_err(blocking_err)??;
        Ok(Response::new(v1::StageWriteResponse {}))
    }

    async fn stage_commit(
        &self,
        req: Request<v1::StageCommitRequest>,
    ) -> Result<Response<v1::StageCommitResponse>, Status> {
        let r = req.into_inner();
        let e = extent_ref(r.extent)?;
        let records = r
            .records
            .iter()
            .map(record_from_wire)
            .collect::<Result<Vec<_>, _>>()?;
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            store.commit_staged(e.volume, e.member, e.generation, &records)
        })
        .await
        .map_err(blocking_err)??;
        Ok(Response::new(v1::StageCommitResponse {}))
    }

    async fn repair_fragment(
        &self,
        req: Request<v1::RepairFragmentRequest>,
    ) -> Result<Response<v1::RepairFragmentResponse>, Status> {
        let rewritten = self.rebuilder.repair_fragment(req.into_inner()).await?;
        Ok(Response::new(v1::RepairFragmentResponse { rewritten }))
    }

    async fn create_extent(
        &self,
        req: Request<v1::CreateExtentRequest>,
    ) -> Result<Response<v1::CreateExtentResponse>, Status> {
        let req = req.into_inner();
        let e = extent_ref(req.extent)?;
        extent_shape(e.member, req.k, req.m, req.capacity)?;
        let mf = MemberFile {
            format: 1,
            volume: e.volume,
            member: e.member,
            k: req.k,
            m: req.m,
            generation: e.generation,
            epoch: 0,
            capacity: req.capacity,
            disk_id: req.disk_id,
            created_unix_ms: hoard_types::now_ms(),
        };
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.create_extent(mf))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(v1::CreateExtentResponse {}))
    }

    async fn fence(
        &self,
        req: Request<v1::FenceRequest>,
    ) -> Result<Response<v1::FenceResponse>, Status> {
        let req = req.into_inner();
        let e = extent_ref(req.extent)?;
        let extent = self.store.extent(e.volume, e.member)?;
        let data_len = tokio::task::spawn_blocking(move || extent.fence(e.generation, req.epoch))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(v1::FenceResponse { data_len }))
    }

    async fn append(
        &self,
        req: Request<v1::AppendRequest>,
    ) -> Result<Response<v1::AppendResponse>, Status> {
        let req = req.into_inner();
        let e = extent_ref(req.extent)?;
        let record = record_from_wire(
            req.record
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("missing record"))?,
        )?;
        let extent = self.store.extent(e.volume, e.member)?;
        let n = req.fragment.len() as u64;
        let span = tracing::info_span!(
            "append",
            node = %self.store.node_id,
            volume = e.volume,
            member = e.member,
            block = %record.hash.short()
        );
        self.store.injected_write_delay(e.volume, e.member).await;
        extent
            .append(e.generation, req.epoch, record, req.fragment)
            .instrument(span)
            .await
            .map_err(|err| {
                tracing::warn!(volume = e.volume, member = e.member, "append failed: {err}");
                err
            })?;
        metrics::counter!("hoard_volume_append_bytes_total").increment(n);
        Ok(Response::new(v1::AppendResponse {}))
    }

    async fn read_fragment(
        &self,
        req: Request<v1::ReadFragmentRequest>,
    ) -> Result<Response<v1::ReadFragmentResponse>, Status> {
        let req = req.into_inner();
        let e = extent_ref(req.extent)?;
        if req.frag_len == 0 || u64::from(req.frag_len) > hoard_types::MAX_FRAGMENT_LEN {
            return Err(Status::invalid_argument(format!(
                "fragment of {} bytes: frag_len must be 1 to {}",
                req.frag_len,
                hoard_types::MAX_FRAGMENT_LEN
            )));
        }
        let extent = self.store.extent(e.volume, e.member)?;
        let res = tokio::task::spawn_blocking(move || {
            extent.read_fragment(e.generation, req.offset, req.frag_len, req.expected_crc)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        match res {
            Ok(buf) => {
                metrics::counter!("hoard_volume_read_bytes_total").increment(buf.len() as u64);
                Ok(Response::new(v1::ReadFragmentResponse { fragment: buf }))
            }
            Err(err) => {
                if matches!(err, VolumeError::Corrupt { .. }) {
                    let hash = BlockHash::from_slice(&req.hash)
                        .map(|h| h.short())
                        .unwrap_or_default();
                    tracing::warn!(volume = e.volume, member = e.member, block = %hash, "{err}");
                }
                Err(err.into())
            }
        }
    }

    async fn inventory(
        &self,
        _req: Request<v1::InventoryRequest>,
    ) -> Result<Response<v1::InventoryResponse>, Status> {
        let disks = self.store.disk_reports().iter().map(disk_info).collect();
        let extents = self
            .store
            .extents()
            .iter()
            .map(|(e, d)| extent_info(e, d))
            .collect();
        Ok(Response::new(v1::InventoryResponse {
            node_id: self.store.node_id.clone(),
            disks,
            extents,
        }))
    }
}
