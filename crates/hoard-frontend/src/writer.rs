//! Write leases: the open volumes this frontend appends to, offset reservation inside them, and the
//! background task that keeps their leases alive.
//!
//! A lease comes with an epoch. Before the first append the frontend fences every member with it, so that
//! appends of any earlier holder are refused from then on, and continues from the furthest byte any
//! member holds: two writers never write the same bytes of a member.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hoard_proto::v1;
use hoard_types::ExtentId;
use hoard_types::state::ProblemKind;
use hoard_types::{BlockHash, Geometry};
use parking_lot::Mutex;

use crate::{Frontend, FrontendConfig, FrontendError};

pub(crate) struct OpenVolume {
    pub info: v1::VolumeInfo,
    pub geometry: Geometry,
    pub epoch: u64,
    next: Mutex<u64>,
    dead: AtomicBool,
    lease_until: Mutex<Instant>,
}

impl OpenVolume {
    pub fn id(&self) -> u64 {
        self.info.id
    }

    fn usable(&self, now: Instant) -> bool {
        !self.dead.load(Ordering::Acquire) && *self.lease_until.lock() > now
    }
}

pub(crate) struct Writer {
    target: usize,
    open: Mutex<Vec<Arc<OpenVolume>>>,
    acquiring: tokio::sync::Mutex<()>,
    lease_ms: AtomicU64,
    /// Wakes the lease keeper when a lease is taken, so that its period follows meta's lease (the
    /// first lease may be much shorter than the keeper's initial guess).
    leased: Arc<tokio::sync::Notify>,
}

/// Reserving this much of a lease's duration as margin for clock rate and message delay.
fn usable_lease(lease_ms: u64) -> Duration {
    Duration::from_millis(lease_ms - lease_ms / 4)
}

impl Writer {
    pub fn new(cfg: &FrontendConfig) -> Self {
        Writer {
            target: cfg.open_volumes.max(1),
            open: Mutex::new(Vec::new()),
            acquiring: tokio::sync::Mutex::new(()),
            lease_ms: AtomicU64::new(30_000),
            leased: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn usable(&self) -> Vec<Arc<OpenVolume>> {
        let now = Instant::now();
        self.open
            .lock()
            .iter()
            .filter(|v| v.usable(now))
            .cloned()
            .collect()
    }

    /// Picks an open volume by hash and reserves room for one fragment of a `block_len`-byte block in it.
    pub async fn reserve(
        &self,
        fe: &Arc<Frontend>,
        hash: &BlockHash,
        block_len: u64,
    ) -> Result<(Arc<OpenVolume>, u64), FrontendError> {
        let mut refused = 0;
        for _ in 0..16 {
            let open = self.usable();
            if open.len() < self.target {
                if open.is_empty() {
                    // A volume whose member did not take the fence was reported (meta avoids its
                    // disk from then on): the next lease is another volume.
                    match self.acquire(fe).await {
                        Err(FrontendError::Unavailable(e)) if refused < 2 => {
                            refused += 1;
                            tracing::debug!("lease acquisition failed, trying another volume: {e}");
                        }
                        r => r?,
                    }
                    continue;
                }
                if self.acquiring.try_lock().is_ok() {
                    let fe = Arc::clone(fe);
                    tokio::spawn(async move {
                        if let Err(e) = fe.writer.acquire(&fe).await {
                            tracing::debug!("background lease acquisition failed: {e}");
                        }
                    });
                }
            }
            let pick_at = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
            let vol = &open[(pick_at % open.len() as u64) as usize];
            let frag_len = vol.geometry.frag_len(block_len);
            let offset = {
                let mut next = vol.next.lock();
                // Page-sized fragments go to page-aligned offsets, so that they can be written with
                // O_DIRECT; the gap before them is never read.
                let align = hoard_types::fragment_align(frag_len);
                let end = next
                    .checked_next_multiple_of(align)
                    .and_then(|at| Some((at, at.checked_add(frag_len)?)));
                match end {
                    Some((at, end)) if end <= vol.info.capacity => {
                        *next = end;
                        Some(at)
                    }
                    _ => None,
                }
            };
            match offset {
                Some(o) => return Ok((Arc::clone(vol), o)),
                None => {
                    self.retire(
                        fe,
                        vol,
                        None,
                        ProblemKind::Full,
                        "extent capacity reached".into(),
                    )
                    .await
                }
            }
        }
        Err(FrontendError::Unavailable(
            "no open volume could take the block".into(),
        ))
    }

    /// Stops writing to `vol` and has meta seal it.
    pub async fn retire(
        &self,
        fe: &Frontend,
        vol: &OpenVolume,
        member: Option<u32>,
        kind: ProblemKind,
        detail: String,
    ) {
        if vol.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        self.open.lock().retain(|v| v.id() != vol.id());
        fe.report(vol.id(), member, kind, detail).await;
    }

    /// Stops writing to every open volume with a member at `address`.
    pub async fn retire_address(&self, fe: &Frontend, address: &str) {
        let hit: Vec<Arc<OpenVolume>> = self
            .open
            .lock()
            .iter()
            .filter(|v| v.info.members.iter().any(|m| m.address == address))
            .cloned()
            .collect();
        for v in hit {
            let member = v
                .info
                .members
                .iter()
                .find(|m| m.address == address)
                .map(|m| m.index);
            self.retire(
                fe,
                &v,
                member,
                ProblemKind::Unreachable,
                format!("{address} unreachable"),
            )
            .await;
        }
    }

    /// Takes one more lease (unless the target is already met) and fences the volume's members.
    pub async fn acquire(&self, fe: &Arc<Frontend>) -> Result<(), FrontendError> {
        let _one_at_a_time = self.acquiring.lock().await;
        if self.usable().len() >= self.target {
            return Ok(());
        }
        let exclude: Vec<u64> = self.open.lock().iter().map(|v| v.id()).collect();
        let asked = Instant::now();
        let resp = fe
            .meta()
            .acquire_volume(v1::AcquireVolumeRequest {
                holder: fe.cfg.holder.clone(),
                exclude,
            })
            .await
            .map_err(FrontendError::Meta)?
            .into_inner();
        let info = resp
            .volume
            .ok_or_else(|| FrontendError::Internal("lease without volume".into()))?;
        self.lease_ms
            .store(resp.lease_ms.max(1000), Ordering::Relaxed);
        let geometry =
            Geometry::new(info.k, info.m).map_err(|e| FrontendError::Internal(e.to_string()))?;
        let fences = info.members.iter().map(|m| {
            let req = v1::FenceRequest {
                extent: Some(hoard_proto::convert::extent_ref(ExtentId {
                    volume: info.id,
                    member: m.index,
                    generation: m.generation,
                })),
                epoch: resp.epoch,
            };
            let client = fe.volumes.get(&m.address);
            let timeout = fe.append_latencies.append_deadline(fe.cfg.append_timeout);
            async move {
                let mut c = client.map_err(|e| (true, e.to_string()))?;
                match tokio::time::timeout(timeout, c.fence(req)).await {
                    Ok(Ok(r)) => Ok(r.into_inner().data_len),
                    Ok(Err(s)) => Err((
                        s.code() == tonic::Code::Unavailable,
                        s.message().to_string(),
                    )),
                    Err(_) => Err((true, format!("no answer within {timeout:?}"))),
                }
            }
        });
        let results = futures::future::join_all(fences).await;
        let mut next = 0u64;
        for (m, r) in info.members.iter().zip(results) {
            match r {
                Ok(len) if len <= info.capacity => next = next.max(len),
                Ok(len) => {
                    let detail = format!(
                        "member {} says it holds {len} bytes, past the capacity {}",
                        m.index, info.capacity
                    );
                    tracing::warn!(volume = info.id, "{detail}");
                    fe.report(
                        info.id,
                        Some(m.index),
                        ProblemKind::WriteFailed,
                        detail.clone(),
                    )
                    .await;
                    return Err(FrontendError::Unavailable(detail));
                }
                Err((unreachable, e)) => {
                    let detail = format!("fence of member {} failed: {e}", m.index);
                    tracing::warn!(volume = info.id, "{detail}");
                    fe.report(
                        info.id,
                        Some(m.index),
                        if unreachable {
                            ProblemKind::Unreachable
                        } else {
                            ProblemKind::WriteFailed
                        },
                        detail.clone(),
                    )
                    .await;
                    return Err(FrontendError::Unavailable(detail));
                }
            }
        }
        let next = next.div_ceil(hoard_types::FRAGMENT_ALIGN) * hoard_types::FRAGMENT_ALIGN;
        tracing::info!(
            volume = info.id,
            epoch = resp.epoch,
            next,
            "volume opened for writes"
        );
        let vol = Arc::new(OpenVolume {
            geometry,
            epoch: resp.epoch,
            next: Mutex::new(next),
            dead: AtomicBool::new(false),
            lease_until: Mutex::new(asked + usable_lease(resp.lease_ms.max(1000))),
            info,
        });
        self.open.lock().push(vol);
        self.leased.notify_one();
        Ok(())
    }

    pub async fn ensure_one(&self, fe: &Arc<Frontend>) -> Result<(), FrontendError> {
        if self.usable().is_empty() {
            self.acquire(fe).await?;
        }
        Ok(())
    }

    async fn renew_all(&self, fe: &Frontend) {
        let open: Vec<Arc<OpenVolume>> = self.open.lock().clone();
        for vol in open {
            let asked = Instant::now();
            let res = fe
                .meta()
                .renew_lease(v1::RenewLeaseRequest {
                    holder: fe.cfg.holder.clone(),
                    volume: vol.id(),
                    epoch: vol.epoch,
                    release: false,
                })
                .await;
            match res {
                Ok(r) if r.get_ref().valid => {
                    *vol.lease_until.lock() = asked + usable_lease(r.get_ref().lease_ms.max(1000));
                }
                Ok(_) => {
                    tracing::info!(
                        volume = vol.id(),
                        "lease ended; volume no longer written here"
                    );
                    vol.dead.store(true, Ordering::Release);
                    self.open.lock().retain(|v| v.id() != vol.id());
                }
                Err(e) => {
                    tracing::warn!(volume = vol.id(), "lease renewal failed: {}", e.message())
                }
            }
        }
    }

    pub async fn release_all(&self, fe: &Frontend) {
        let open: Vec<Arc<OpenVolume>> = std::mem::take(&mut *self.open.lock());
        for vol in open {
            vol.dead.store(true, Ordering::Release);
            let _ = fe
                .meta()
                .renew_lease(v1::RenewLeaseRequest {
                    holder: fe.cfg.holder.clone(),
                    volume: vol.id(),
                    epoch: vol.epoch,
                    release: true,
                })
                .await;
        }
    }
}

/// Renews every lease at a third of its duration, until the frontend is dropped.
pub(crate) fn spawn_lease_keeper(fe: Weak<Frontend>) {
    let Some(leased) = fe.upgrade().map(|f| Arc::clone(&f.writer.leased)) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            let period = match fe.upgrade() {
                Some(f) => Duration::from_millis(f.writer.lease_ms.load(Ordering::Relaxed) / 3),
                None => return,
            };
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                // A new lease: sleep again, by meta's lease.
                _ = leased.notified() => continue,
            }
            let Some(f) = fe.upgrade() else { return };
            f.writer.renew_all(&f).await;
        }
    });
}
