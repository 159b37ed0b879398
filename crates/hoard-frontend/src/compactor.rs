//! The compactor: empties the volume meta names as the donor, block by block, through this frontend's
//! read and write paths, then asks meta to inspect and retire it. Meta holds every bit of progress
//! (which rows still point into the donor), so a compactor killed at any point resumes by asking
//! again; a copy whose re-point finds the row changed is garbage for a later compaction.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hoard_proto::v1;
use hoard_runtime::{
    CancellationToken, Progress, Throttle, Worker, WorkerError, WorkerState, WorkerStatus,
};
use hoard_types::{BlockHash, BlockLocation};

use crate::{Frontend, FrontendError};

/// Rows asked for at once.
const PAGE: u32 = 256;

pub struct Compactor {
    fe: Arc<Frontend>,
    throttle: Throttle,
    /// The donor being emptied and the last row of it handled.
    volume: u64,
    after: Option<BlockHash>,
    /// This process's counts.
    moved: u64,
    moved_bytes: u64,
    stale: u64,
    failed: u64,
    /// Failures in the current pass over the donor.
    pass_failed: u64,
    detail: String,
}

impl Compactor {
    pub fn new(fe: Arc<Frontend>) -> Compactor {
        Compactor {
            fe,
            throttle: Throttle::new(0),
            volume: 0,
            after: None,
            moved: 0,
            moved_bytes: 0,
            stale: 0,
            failed: 0,
            pass_failed: 0,
            detail: "waiting for a donor".into(),
        }
    }

    /// Copies one block to an open volume and re-points its row; whether the row moved.
    async fn move_one(
        fe: &Arc<Frontend>,
        throttle: &Throttle,
        volume: &v1::VolumeInfo,
        hash: BlockHash,
        from: BlockLocation,
    ) -> Result<bool, FrontendError> {
        throttle.spend(from.block_len).await;
        let data: Bytes = fe.read_at(hash, from.clone(), volume.clone()).await?;
        let to = fe.write_new(&data, &hash).await?;
        let resp = fe
            .meta()
            .repoint(v1::RepointRequest {
                from: Some(v1::BlockLocation::from_domain(&hash, &from, 0)),
                to: Some(v1::BlockLocation::from_domain(&hash, &to, 0)),
            })
            .await
            .map_err(FrontendError::Meta)?;
        Ok(resp.into_inner().moved)
    }

    async fn finish(&mut self) -> Result<WorkerState, WorkerError> {
        let volume = self.volume;
        let resp = self
            .fe
            .meta()
            .finish_compaction(v1::FinishCompactionRequest { volume })
            .await
            .map_err(|s| WorkerError::transient(s.message()))?
            .into_inner();
        self.after = None;
        let failed = std::mem::take(&mut self.pass_failed);
        if resp.retired {
            self.volume = 0;
            self.detail = format!("volume {volume} compacted and retired");
            return Ok(WorkerState::Busy);
        }
        self.detail = format!(
            "volume {volume}: {} rows still point into it ({failed} copies failed this pass)",
            resp.remaining
        );
        // Another pass picks up what is left; after failures, not at once.
        Ok(if failed > 0 {
            WorkerState::Throttled(Duration::from_secs(10))
        } else {
            WorkerState::Busy
        })
    }
}

impl Worker for Compactor {
    fn name(&self) -> String {
        "compact".into()
    }

    fn status(&self) -> WorkerStatus {
        WorkerStatus {
            progress: Some(Progress::new(self.moved_bytes, 0, "bytes")),
            detail: format!(
                "{}; {} blocks moved, {} copies stale, {} failed",
                self.detail, self.moved, self.stale, self.failed
            ),
        }
    }

    fn throttle(&self) -> Option<Throttle> {
        Some(self.throttle.clone())
    }

    fn wait_for_work(&mut self) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(Duration::from_secs(2))
    }

    async fn work(&mut self, cancel: &CancellationToken) -> Result<WorkerState, WorkerError> {
        let task = self
            .fe
            .meta()
            .compaction_task(v1::CompactionTaskRequest {
                holder: self.fe.config().holder.clone(),
                after: self
                    .after
                    .map(|h| Bytes::copy_from_slice(h.as_bytes()))
                    .unwrap_or_default(),
                limit: PAGE,
            })
            .await
            .map_err(|s| WorkerError::transient(s.message()))?
            .into_inner();
        if task.volume == 0 {
            self.volume = 0;
            self.after = None;
            self.detail = "no volume to compact".into();
            return Ok(WorkerState::Idle);
        }
        if task.volume != self.volume {
            let restart = self.after.is_some();
            self.volume = task.volume;
            self.after = None;
            self.pass_failed = 0;
            if restart {
                // The page was of a new donor, after a row of the old one: list it from the start.
                return Ok(WorkerState::Busy);
            }
        }
        // Meta's knob: 0 is unthrottled.
        self.throttle.set_rate(task.bytes_per_sec);
        let volume = self
            .fe
            .meta()
            .get_volume(v1::GetVolumeRequest { id: task.volume })
            .await
            .map_err(|s| WorkerError::transient(s.message()))?
            .into_inner();
        let mut rows = Vec::with_capacity(task.rows.len());
        for r in &task.rows {
            let loc = r
                .location
                .as_ref()
                .ok_or_else(|| WorkerError::transient("compaction row without a location"))?
                .to_domain()
                .map_err(|e| WorkerError::transient(e.to_string()))?;
            rows.push(loc);
        }
        let last = rows.last().map(|(h, _)| *h);
        let (fe, throttle, vol) = (&self.fe, &self.throttle, &volume);
        let results: Vec<(BlockHash, u64, Result<bool, FrontendError>)> =
            futures::stream::iter(rows.into_iter().map(|(hash, from)| async move {
                let len = from.block_len;
                (
                    hash,
                    len,
                    Self::move_one(fe, throttle, vol, hash, from).await,
                )
            }))
            .buffer_unordered(task.concurrency.max(1) as usize)
            .take_until(cancel.cancelled())
            .collect()
            .await;
        for (hash, len, r) in &results {
            match r {
                Ok(true) => {
                    self.moved += 1;
                    self.moved_bytes += len;
                    metrics::counter!("hoard_compactor_moved_bytes_total").increment(*len);
                }
                Ok(false) => self.stale += 1,
                Err(e) => {
                    self.failed += 1;
                    self.pass_failed += 1;
                    tracing::warn!(volume = task.volume, block = %hash.short(), "compaction copy failed: {e}");
                }
            }
        }
        if cancel.is_cancelled() {
            return Ok(WorkerState::Busy);
        }
        self.after = last;
        self.detail = format!("emptying volume {}", task.volume);
        if task.more {
            return Ok(WorkerState::Busy);
        }
        self.finish().await
    }
}
