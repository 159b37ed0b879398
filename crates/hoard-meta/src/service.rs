//! The internal `Meta` gRPC service over [`MetaState`].

use std::sync::Arc;

use hoard_proto::v1::{self, meta_server::Meta};
use hoard_types::{BlockHash, VolumeId};
use tonic::{Request, Response, Status};

use hoard_types::state::StateError;

use crate::blocks::CommitOutcome;
use crate::index_ops::Outcome;
use crate::nodes::Heartbeat;
use crate::repair_lease::RepairLease;
use crate::state::MetaState;
use crate::volumes::Problem;

#[derive(Clone)]
pub struct MetaService {
    state: Arc<MetaState>,
    /// Which repair daemon may change repair state.
    repair_lease: Arc<RepairLease>,
}

impl MetaService {
    pub fn new(state: Arc<MetaState>) -> Self {
        MetaService {
            state,
            repair_lease: Default::default(),
        }
    }
}

#[tonic::async_trait]
impl Meta for MetaService {
    async fn heartbeat(
        &self,
        req: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let hb = Heartbeat::try_from(req.get_ref())?;
        let a = self.state.nodes().heartbeat_checked(&hb).await?;
        // A failed disk is acted on now rather than at the next periodic health check: its members
        // are marked lost and queued for repair within this beat.
        if hb.disks.iter().any(|d| !d.health.is_ok()) {
            let state = Arc::clone(&self.state);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = state.check_health() {
                    tracing::error!("health check after a failed disk report: {e}");
                }
            });
        }
        Ok(Response::new(v1::HeartbeatResponse {
            cluster_id: a.cluster_id,
            retire: a.retire.into_iter().map(Into::into).collect(),
            scrub: Some(self.state.scrub().knobs()),
            adopt_disks: a.adopt_disks,
            clearances: a.clearances,
            trash_halted: a.trash_halted,
        }))
    }

    async fn lookup(
        &self,
        req: Request<v1::LookupRequest>,
    ) -> Result<Response<v1::LookupResponse>, Status> {
        let req = req.into_inner();
        let hashes = req
            .hashes
            .iter()
            .map(|h| BlockHash::from_slice(h).map_err(|e| Status::invalid_argument(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let state = Arc::clone(&self.state);
        let hs = hashes.clone();
        let found = tokio::task::spawn_blocking(move || state.blocks().lookup(&hs))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        let mut out = Vec::new();
        let mut vols: Vec<VolumeId> = Vec::new();
        for (h, f) in hashes.iter().zip(found) {
            if let Some((loc, created)) = f {
                if !vols.contains(&loc.volume) {
                    vols.push(loc.volume);
                }
                out.push(v1::BlockLocation::from_domain(h, &loc, created));
            }
        }
        let volumes = if req.with_volumes {
            self.state.volumes().volumes(&vols)
        } else {
            Vec::new()
        };
        Ok(Response::new(v1::LookupResponse {
            found: out,
            volumes,
        }))
    }

    async fn commit(
        &self,
        req: Request<v1::CommitRequest>,
    ) -> Result<Response<v1::CommitResponse>, Status> {
        let loc = req
            .into_inner()
            .location
            .ok_or_else(|| Status::invalid_argument("missing location"))?;
        let (hash, loc) = loc
            .to_domain()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        match self.state.blocks().commit(hash, loc).await? {
            CommitOutcome::Inserted => Ok(Response::new(v1::CommitResponse {
                inserted: true,
                existing: None,
            })),
            CommitOutcome::Exists(old) => Ok(Response::new(v1::CommitResponse {
                inserted: false,
                existing: Some(v1::BlockLocation::from_domain(&hash, &old, 0)),
            })),
        }
    }

    async fn assert(
        &self,
        req: Request<v1::AssertRequest>,
    ) -> Result<Response<v1::AssertResponse>, Status> {
        let req = req.into_inner();
        let hashes = hashes_of(&req.hashes)?;
        let present = self.state.blocks().assert(&hashes, req.revive).await?;
        Ok(Response::new(v1::AssertResponse { present }))
    }

    async fn delete_token(
        &self,
        _req: Request<v1::DeleteTokenRequest>,
    ) -> Result<Response<v1::DeleteTokenResponse>, Status> {
        let p = self.state.config().delete;
        Ok(Response::new(v1::DeleteTokenResponse {
            token: self.state.blocks().delete_token()?,
            reference_window_ms: p.reference_window.as_millis() as u64,
            delete_grace_ms: p.delete_grace.as_millis() as u64,
        }))
    }

    async fn delete_blocks(
        &self,
        req: Request<v1::DeleteBlocksRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        let req = req.into_inner();
        let hashes = hashes_of(&req.hashes)?;
        let results = self
            .state
            .blocks()
            .delete(&hashes, req.token)
            .await?
            .iter()
            .map(|o| delete_result(o) as i32)
            .collect();
        Ok(Response::new(v1::DeleteResponse { results }))
    }

    async fn undelete_blocks(
        &self,
        req: Request<v1::UndeleteBlocksRequest>,
    ) -> Result<Response<v1::UndeleteResponse>, Status> {
        let hashes = hashes_of(&req.get_ref().hashes)?;
        let results = self
            .state
            .blocks()
            .undelete(&hashes)
            .await?
            .iter()
            .map(|o| undelete_result(o) as i32)
            .collect();
        Ok(Response::new(v1::UndeleteResponse { results }))
    }

    async fn compaction_task(
        &self,
        req: Request<v1::CompactionTaskRequest>,
    ) -> Result<Response<v1::CompactionTaskResponse>, Status> {
        let req = req.into_inner();
        let after = if req.after.is_empty() {
            None
        } else {
            Some(
                BlockHash::from_slice(&req.after)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            )
        };
        let task = self
            .state
            .compaction()
            .task(after, req.limit as usize)
            .await?;
        Ok(Response::new(v1::CompactionTaskResponse {
            volume: task.volume,
            rows: task
                .rows
                .iter()
                .map(|(h, loc, deleted)| v1::CompactionRow {
                    location: Some(v1::BlockLocation::from_domain(h, loc, 0)),
                    deleted: *deleted,
                })
                .collect(),
            more: task.more,
            bytes_per_sec: task.bytes_per_sec,
            concurrency: task.concurrency,
        }))
    }

    async fn repoint(
        &self,
        req: Request<v1::RepointRequest>,
    ) -> Result<Response<v1::RepointResponse>, Status> {
        let req = req.into_inner();
        let location = |l: Option<v1::BlockLocation>, what: &str| {
            l.ok_or_else(|| Status::invalid_argument(format!("missing {what}")))?
                .to_domain()
                .map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
        };
        let (hash, from) = location(req.from, "from")?;
        let (to_hash, to) = location(req.to, "to")?;
        if to_hash != hash {
            return Err(Status::invalid_argument(format!(
                "re-point of {hash} names another block ({to_hash}) as its new location"
            )));
        }
        let moved = self.state.compaction().repoint(hash, &from, to).await?;
        Ok(Response::new(v1::RepointResponse { moved }))
    }

    async fn finish_compaction(
        &self,
        req: Request<v1::FinishCompactionRequest>,
    ) -> Result<Response<v1::FinishCompactionResponse>, Status> {
        let (retired, remaining) = self.state.compaction().finish(req.get_ref().volume).await?;
        Ok(Response::new(v1::FinishCompactionResponse {
            retired,
            remaining,
        }))
    }

    async fn acquire_volume(
        &self,
        req: Request<v1::AcquireVolumeRequest>,
    ) -> Result<Response<v1::AcquireVolumeResponse>, Status> {
        let req = req.into_inner();
        let (volume, epoch) = self
            .state
            .volumes()
            .acquire(&req.holder, &req.exclude)
            .await?;
        Ok(Response::new(v1::AcquireVolumeResponse {
            volume: Some(volume),
            epoch,
            lease_ms: self.state.config().lease.as_millis() as u64,
        }))
    }

    async fn renew_lease(
        &self,
        req: Request<v1::RenewLeaseRequest>,
    ) -> Result<Response<v1::RenewLeaseResponse>, Status> {
        let req = req.into_inner();
        let valid =
            self.state
                .volumes()
                .renew_lease(&req.holder, req.volume, req.epoch, req.release)?;
        Ok(Response::new(v1::RenewLeaseResponse {
            valid,
            lease_ms: self.state.config().lease.as_millis() as u64,
        }))
    }

    async fn report_volume(
        &self,
        req: Request<v1::ReportVolumeRequest>,
    ) -> Result<Response<v1::ReportVolumeResponse>, Status> {
        let req = req.into_inner();
        let kind = req
            .kind
            .parse()
            .map_err(|e: StateError| Status::invalid_argument(e.to_string()))?;
        self.state.volumes().report(&Problem {
            volume: req.volume,
            member: req.member,
            kind,
            detail: req.detail,
            offset: req.offset,
            hash: req.hash.to_vec(),
        })?;
        Ok(Response::new(v1::ReportVolumeResponse {}))
    }

    async fn get_volume(
        &self,
        req: Request<v1::GetVolumeRequest>,
    ) -> Result<Response<v1::VolumeInfo>, Status> {
        Ok(Response::new(
            self.state.volumes().volume(req.get_ref().id)?,
        ))
    }

    async fn cluster_status(
        &self,
        _req: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        Ok(Response::new(self.state.cluster_status()))
    }

    async fn repair_queue(
        &self,
        _req: Request<v1::RepairQueueRequest>,
    ) -> Result<Response<v1::RepairQueueResponse>, Status> {
        Ok(Response::new(self.state.repair().repair_queue()))
    }

    async fn plan_repair(
        &self,
        req: Request<v1::PlanRepairRequest>,
    ) -> Result<Response<v1::RepairPlan>, Status> {
        self.repair_lease.take(&req.get_ref().holder)?;
        let req = req.into_inner();
        let state = Arc::clone(&self.state);
        let plan = tokio::task::spawn_blocking(move || {
            state.repair().plan_repair(req.volume, &req.avoid_disks)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(plan))
    }

    async fn repair_progress(
        &self,
        req: Request<v1::RepairProgressRequest>,
    ) -> Result<Response<v1::RepairProgressResponse>, Status> {
        self.repair_lease.take(&req.get_ref().holder)?;
        let r = req.into_inner();
        let current = self.state.repair().repair_progress(
            r.volume,
            &r.session,
            r.done_bytes,
            r.total_bytes,
        )?;
        Ok(Response::new(v1::RepairProgressResponse { current }))
    }

    async fn commit_repair(
        &self,
        req: Request<v1::CommitRepairRequest>,
    ) -> Result<Response<v1::CommitRepairResponse>, Status> {
        self.repair_lease.take(&req.get_ref().holder)?;
        let r = req.into_inner();
        let state = Arc::clone(&self.state);
        tokio::task::spawn_blocking(move || {
            state.repair().commit_repair(r.volume, &r.outputs, r.bytes)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(v1::CommitRepairResponse {}))
    }

    async fn abort_repair(
        &self,
        req: Request<v1::AbortRepairRequest>,
    ) -> Result<Response<v1::AbortRepairResponse>, Status> {
        self.repair_lease.take(&req.get_ref().holder)?;
        let r = req.into_inner();
        self.state.repair().abort_repair(r.volume, &r.reason)?;
        Ok(Response::new(v1::AbortRepairResponse {}))
    }

    async fn set_repair_knobs(
        &self,
        req: Request<v1::SetRepairKnobsRequest>,
    ) -> Result<Response<v1::RepairKnobs>, Status> {
        Ok(Response::new(self.state.repair().set_knobs(req.get_ref())?))
    }

    async fn repair_lease(
        &self,
        req: Request<v1::RepairLeaseRequest>,
    ) -> Result<Response<v1::RepairLeaseResponse>, Status> {
        let r = req.into_inner();
        if r.release {
            self.repair_lease.release(&r.holder);
            return Ok(Response::new(v1::RepairLeaseResponse { lease_ms: 0 }));
        }
        let grant = self.repair_lease.take(&r.holder)?;
        Ok(Response::new(v1::RepairLeaseResponse {
            lease_ms: grant.lease_ms,
        }))
    }

    async fn range_done(
        &self,
        req: Request<v1::RangeDoneRequest>,
    ) -> Result<Response<v1::RangeDoneResponse>, Status> {
        self.repair_lease.take(&req.get_ref().holder)?;
        let r = req.into_inner();
        let outcome = r
            .outcome
            .parse()
            .map_err(|e: StateError| Status::invalid_argument(e.to_string()))?;
        self.state
            .repair()
            .range_done(r.volume, r.member, r.offset, &outcome)?;
        Ok(Response::new(v1::RangeDoneResponse {}))
    }

    async fn move_queue(
        &self,
        _req: Request<v1::MoveQueueRequest>,
    ) -> Result<Response<v1::MoveQueueResponse>, Status> {
        Ok(Response::new(self.state.moves().move_queue()))
    }

    async fn start_move(
        &self,
        req: Request<v1::StartMoveRequest>,
    ) -> Result<Response<v1::RepairPlan>, Status> {
        self.repair_lease.take(&req.get_ref().holder)?;
        let id = req.get_ref().id;
        let state = Arc::clone(&self.state);
        let plan = tokio::task::spawn_blocking(move || state.moves().start_move(id))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(plan))
    }

    async fn move_progress(
        &self,
        req: Request<v1::MoveProgressRequest>,
    ) -> Result<Response<v1::RepairProgressResponse>, Status> {
        self.repair_lease.take(&req.get_ref().holder)?;
        let r = req.into_inner();
        let current = self
            .state
            .moves()
            .move_progress(r.id, &r.session, r.done_bytes)?;
        Ok(Response::new(v1::RepairProgressResponse { current }))
    }

    async fn commit_move(
        &self,
        req: Request<v1::CommitMoveRequest>,
    ) -> Result<Response<v1::CommitRepairResponse>, Status> {
        self.repair_lease.take(&req.get_ref().holder)?;
        self.state.moves().commit_move(req.get_ref().id)?;
        Ok(Response::new(v1::CommitRepairResponse {}))
    }

    async fn fail_move(
        &self,
        req: Request<v1::FailMoveRequest>,
    ) -> Result<Response<v1::CommitRepairResponse>, Status> {
        self.repair_lease.take(&req.get_ref().holder)?;
        let r = req.into_inner();
        self.state.moves().fail_move(r.id, &r.error)?;
        Ok(Response::new(v1::CommitRepairResponse {}))
    }

    async fn repair_status(
        &self,
        _req: Request<v1::RepairStatusRequest>,
    ) -> Result<Response<v1::RepairStatusResponse>, Status> {
        Ok(Response::new(self.state.repair().repair_status()))
    }
}

fn hashes_of(raw: &[bytes::Bytes]) -> Result<Vec<BlockHash>, Status> {
    if raw.len() > MAX_HASHES {
        return Err(Status::invalid_argument(format!(
            "{} hashes in one request: at most {MAX_HASHES}",
            raw.len()
        )));
    }
    raw.iter()
        .map(|h| BlockHash::from_slice(h).map_err(|e| Status::invalid_argument(e.to_string())))
        .collect()
}

/// Hashes in one request at the most.
const MAX_HASHES: usize = 100_000;

fn delete_result(o: &Outcome) -> v1::DeleteResult {
    match o {
        Outcome::Deleted => v1::DeleteResult::Deleted,
        Outcome::Kept => v1::DeleteResult::Kept,
        Outcome::AlreadyDeleted => v1::DeleteResult::AlreadyDeleted,
        _ => v1::DeleteResult::NotFound,
    }
}

fn undelete_result(o: &Outcome) -> v1::UndeleteResult {
    match o {
        Outcome::Restored => v1::UndeleteResult::Restored,
        Outcome::NotDeleted => v1::UndeleteResult::NotDeleted,
        _ => v1::UndeleteResult::NotFound,
    }
}
