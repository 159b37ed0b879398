//! The repair daemon: takes volumes with lost members from meta's queue, most at risk first, has meta
//! plan each rebuild (targets by the placement rules, new generations), drives the rebuild on the target
//! volume server step by step (data flows peer to peer, never through the daemon), paces it to the live
//! throttle, and commits the result in meta.
//!
//! The daemon keeps no state of its own: the plan and its progress live in meta. Killed at any point, a
//! new daemon resumes the recorded session if its runner still has it, and otherwise restarts the same
//! plan from the beginning. Nothing is in service until meta commits it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hoard_runtime::Throttle;
use tokio::time::Instant;

use hoard_proto::v1::{self, meta_client::MetaClient};
use hoard_types::ExtentId;
use hoard_types::state::{MemberHealth, RangeOutcome};
use parking_lot::Mutex;
use tokio::sync::watch;
use tonic::transport::Channel;

/// Settings of the daemon (the knobs operators turn live are in meta).
#[derive(Clone, Debug)]
pub struct RepairConfig {
    /// How often the queue is read (an in-memory read on meta): a new loss or a freed slot is picked up
    /// within this.
    pub poll: Duration,
    /// Bytes per source a rebuild step reads at most.
    pub step_bytes: u64,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            poll: Duration::from_millis(250),
            step_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("meta: {0}")]
    Meta(String),
    #[error("runner {address}: {message}")]
    Runner { address: String, message: String },
    #[error("the plan of volume {0} was replaced or aborted")]
    Superseded(u64),
    #[error("stopping")]
    Stopping,
}

/// What a rebuild session is for: repairing a volume's lost members, or moving one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Job {
    Repair(u64),
    Move(u64),
}

/// The daemon's queue loop as a worker of the process (`repair`).
struct QueueWorker {
    daemon: Arc<RepairDaemon>,
    running: HashMap<Job, tokio::task::JoinHandle<()>>,
    meta_down: bool,
    /// Turned true when the worker ends (cancelled): the running jobs stop at their next step.
    stop: watch::Sender<bool>,
    polls: u64,
    /// Another daemon holds meta's repair lease: this one only asks for it.
    standing_by: bool,
}

impl hoard_runtime::Worker for QueueWorker {
    fn name(&self) -> String {
        "repair".into()
    }

    fn status(&self) -> hoard_runtime::WorkerStatus {
        hoard_runtime::WorkerStatus {
            progress: None,
            detail: format!(
                "{} jobs running{}",
                self.running.values().filter(|h| !h.is_finished()).count(),
                if self.meta_down {
                    ", meta unreachable"
                } else if self.standing_by {
                    ", standing by (another daemon holds the repair lease)"
                } else {
                    ""
                }
            ),
        }
    }

    async fn work(
        &mut self,
        _: &hoard_runtime::CancellationToken,
    ) -> Result<hoard_runtime::WorkerState, hoard_runtime::WorkerError> {
        let stop = self.stop.subscribe();
        let holder = self.daemon.holder.clone();
        let lease = self
            .daemon
            .meta()
            .repair_lease(v1::RepairLeaseRequest {
                holder: holder.clone(),
                release: false,
            })
            .await;
        match lease {
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                if !self.standing_by {
                    tracing::info!(holder, "standing by: {}", s.message());
                }
                self.standing_by = true;
                // Jobs begun under the lease stop here: the holder resumes their plans.
                for (_, h) in self.running.drain() {
                    h.abort();
                }
                metrics::gauge!("hoard_repair_lease_held").set(0.0);
                return Ok(hoard_runtime::WorkerState::Throttled(self.daemon.cfg.poll));
            }
            Ok(_) => {
                if self.standing_by || self.polls == 0 {
                    tracing::info!(holder, "repair lease held; working the queue");
                }
                self.standing_by = false;
                metrics::gauge!("hoard_repair_lease_held").set(1.0);
            }
            // Meta unreachable: the queue read below says so.
            Err(_) => {}
        }
        self.daemon
            .poll_queue(&mut self.running, &mut self.meta_down, &stop)
            .await;
        self.polls += 1;
        Ok(hoard_runtime::WorkerState::Throttled(self.daemon.cfg.poll))
    }

    fn throttle(&self) -> Option<Throttle> {
        Some(self.daemon.throttle.clone())
    }
}

impl Drop for QueueWorker {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for (_, h) in self.running.drain() {
            h.abort();
        }
    }
}

pub struct RepairDaemon {
    cfg: RepairConfig,
    /// This daemon's name as a holder of meta's repair lease; unique per process.
    holder: String,
    meta: MetaClient<Channel>,
    peers: hoard_net::VolumeClients,
    throttle: Throttle,
    knobs: Mutex<v1::RepairKnobs>,
    /// Disks that failed as targets, per volume: the next plan avoids them.
    avoid: Mutex<HashMap<u64, HashSet<String>>>,
}

impl RepairDaemon {
    pub fn new(cfg: RepairConfig, meta_url: &str) -> Result<Arc<RepairDaemon>, String> {
        let ep = hoard_net::endpoint(meta_url)
            .map_err(|e| format!("bad meta URL {meta_url:?}: {e}"))?
            .timeout(Duration::from_secs(60));
        Ok(Arc::new(RepairDaemon {
            cfg,
            holder: hoard_types::random_id("repair"),
            meta: MetaClient::new(ep.connect_lazy())
                .max_decoding_message_size(hoard_proto::MAX_MESSAGE_BYTES),
            peers: Default::default(),
            throttle: Throttle::new(0),
            knobs: Mutex::new(v1::RepairKnobs {
                paused: false,
                bytes_per_sec: 0,
                concurrency: 1,
            }),
            avoid: Mutex::new(HashMap::new()),
        }))
    }

    fn meta(&self) -> MetaClient<Channel> {
        self.meta.clone()
    }

    /// Works the queue until `stop` turns true, as the process's `repair` worker: one read of meta's
    /// queue per unit, jobs started within the live concurrency, a unit every `poll`. Pausing the
    /// worker stops starting jobs (running ones finish); cancelling it stops them too.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let worker = QueueWorker {
            daemon: Arc::clone(&self),
            running: HashMap::new(),
            meta_down: false,
            stop: watch::channel(false).0,
            polls: 0,
            standing_by: false,
        };
        let handle = match hoard_runtime::Registry::global().spawn(worker) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("repair daemon not started: {e}");
                return;
            }
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => handle.cancel(),
            _ = handle.finished() => {}
        }
        handle.finished().await;
        // Another daemon may take over at once rather than after the lease runs out.
        let _ = self
            .meta()
            .repair_lease(v1::RepairLeaseRequest {
                holder: self.holder.clone(),
                release: true,
            })
            .await;
    }

    /// One read of the queue: range repairs, then rebuilds and moves within the concurrency knob.
    async fn poll_queue(
        self: &Arc<Self>,
        running: &mut HashMap<Job, tokio::task::JoinHandle<()>>,
        meta_down: &mut bool,
        stop: &watch::Receiver<bool>,
    ) {
        running.retain(|_, h| !h.is_finished());
        match self.meta().repair_queue(v1::RepairQueueRequest {}).await {
            Ok(q) => {
                *meta_down = false;
                let q = q.into_inner();
                let knobs = q.knobs.unwrap_or_default();
                self.throttle.set_rate(knobs.bytes_per_sec);
                *self.knobs.lock() = knobs;
                metrics::gauge!("hoard_repair_running").set(running.len() as f64);
                if knobs.paused {
                    return;
                }
                // Corrupt fragments first: each is one small decode, and a second fault on the same
                // block would cost it.
                for r in q.ranges.iter().take(64) {
                    if let Err(e) = self.repair_range(r).await {
                        tracing::warn!(
                            volume = r.volume,
                            member = r.member,
                            offset = r.offset,
                            "range repair failed: {e}"
                        );
                    }
                }
                for task in q.tasks.iter().filter(|t| !t.unrecoverable) {
                    if running.len() >= knobs.concurrency.max(1) as usize {
                        break;
                    }
                    if running.contains_key(&Job::Repair(task.volume)) {
                        continue;
                    }
                    let (me, volume, stop) = (Arc::clone(self), task.volume, stop.clone());
                    let span = tracing::info_span!("repair", volume);
                    running.insert(
                        Job::Repair(volume),
                        tokio::spawn(tracing::Instrument::instrument(
                            async move {
                                match me.repair_volume(volume, stop).await {
                                    Ok(()) => {}
                                    Err(RepairError::Stopping) => {}
                                    Err(e) => tracing::warn!("repair failed: {e}"),
                                }
                            },
                            span,
                        )),
                    );
                }
                // Moves (rebalance, drain) after repairs, in what room is left.
                self.start_moves(running, knobs.concurrency.max(1) as usize, stop)
                    .await;
            }
            Err(e) => {
                if !*meta_down {
                    tracing::warn!("repair: meta unreachable: {}", e.message());
                }
                *meta_down = true;
            }
        }
    }

    async fn start_moves(
        self: &Arc<Self>,
        running: &mut HashMap<Job, tokio::task::JoinHandle<()>>,
        limit: usize,
        stop: &watch::Receiver<bool>,
    ) {
        let Ok(q) = self.meta().move_queue(v1::MoveQueueRequest {}).await else {
            return;
        };
        let q = q.into_inner();
        if q.paused {
            return;
        }
        for m in q.moves {
            if running.len() >= limit {
                break;
            }
            let job = Job::Move(m.id);
            if running.contains_key(&job)
                || running
                    .keys()
                    .any(|j| matches!(j, Job::Repair(v) if *v == m.volume))
            {
                continue;
            }
            let (me, stop) = (Arc::clone(self), stop.clone());
            let span = tracing::info_span!("move", id = m.id, volume = m.volume, member = m.member);
            running.insert(
                job,
                tokio::spawn(tracing::Instrument::instrument(
                    async move {
                        match me.move_member(m.id, stop).await {
                            Ok(()) | Err(RepairError::Stopping) => {}
                            Err(e) => tracing::warn!("move failed: {e}"),
                        }
                    },
                    span,
                )),
            );
        }
    }

    /// Copies one member to its new disk and commits it.
    async fn move_member(
        &self,
        id: u64,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), RepairError> {
        let plan = match self
            .meta()
            .start_move(v1::StartMoveRequest {
                id,
                holder: self.holder.clone(),
            })
            .await
        {
            Ok(p) => p.into_inner(),
            Err(s) => {
                // Dropped, waiting for a repair, or no room: meta says which; nothing to undo.
                tracing::debug!(move_id = id, "move not started: {}", s.message());
                return Ok(());
            }
        };
        match self.drive(&plan, Job::Move(id), &mut stop).await {
            Ok(_) => self
                .meta()
                .commit_move(v1::CommitMoveRequest {
                    id,
                    holder: self.holder.clone(),
                })
                .await
                .map(|_| ())
                .map_err(|s| RepairError::Meta(s.message().to_string())),
            Err(RepairError::Stopping) => Err(RepairError::Stopping),
            Err(e) => {
                let _ = self
                    .meta()
                    .fail_move(v1::FailMoveRequest {
                        holder: self.holder.clone(),
                        id,
                        error: e.to_string(),
                    })
                    .await;
                Err(e)
            }
        }
    }

    async fn wait_unpaused(&self, stop: &mut watch::Receiver<bool>) -> Result<(), RepairError> {
        while self.knobs.lock().paused {
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll) => {}
                _ = stop.changed() => return Err(RepairError::Stopping),
            }
        }
        if *stop.borrow() {
            return Err(RepairError::Stopping);
        }
        Ok(())
    }

    /// Rebuilds every lost member of one volume and commits them.
    pub async fn repair_volume(
        &self,
        volume: u64,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), RepairError> {
        let avoid: Vec<String> = self
            .avoid
            .lock()
            .get(&volume)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let plan = self
            .meta()
            .plan_repair(v1::PlanRepairRequest {
                holder: self.holder.clone(),
                volume,
                avoid_disks: avoid,
            })
            .await
            .map_err(|s| RepairError::Meta(s.message().to_string()))?
            .into_inner();
        let started = Instant::now();
        match self.drive(&plan, Job::Repair(volume), &mut stop).await {
            Ok(bytes) => {
                self.meta()
                    .commit_repair(v1::CommitRepairRequest {
                        holder: self.holder.clone(),
                        volume,
                        outputs: plan.outputs.clone(),
                        bytes,
                    })
                    .await
                    .map_err(|s| RepairError::Meta(s.message().to_string()))?;
                self.avoid.lock().remove(&volume);
                let secs = started.elapsed().as_secs_f64();
                tracing::info!(
                    volume,
                    bytes,
                    seconds = format!("{secs:.1}"),
                    mb_per_s = format!("{:.1}", bytes as f64 / secs.max(1e-3) / 1e6),
                    "volume repaired"
                );
                Ok(())
            }
            Err(RepairError::Stopping) => Err(RepairError::Stopping),
            Err(e) => {
                if let RepairError::Runner { .. } = e {
                    // The target did not do its part: plan elsewhere next time.
                    let mut avoid = self.avoid.lock();
                    let set = avoid.entry(volume).or_default();
                    for o in &plan.outputs {
                        set.insert(o.disk_id.clone());
                    }
                }
                let _ = self
                    .meta()
                    .abort_repair(v1::AbortRepairRequest {
                        holder: self.holder.clone(),
                        volume,
                        reason: e.to_string(),
                        avoid_disks: Vec::new(),
                    })
                    .await;
                Err(e)
            }
        }
    }

    /// Runs the plan's rebuild on its runner; returns the rebuilt bytes.
    async fn drive(
        &self,
        plan: &v1::RepairPlan,
        job: Job,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<u64, RepairError> {
        let runner_err = |message: String| RepairError::Runner {
            address: plan.runner.clone(),
            message,
        };
        let mut runner = self.peers.get(&plan.runner).map_err(runner_err)?;
        let outputs = plan.outputs.len() as u64;
        // Resume a session the runner still has; otherwise begin again.
        let mut session = plan.session.clone();
        let mut done = 0;
        if !session.is_empty() {
            match runner
                .rebuild_step(v1::RebuildStepRequest {
                    session: session.clone(),
                    max_bytes: 0,
                })
                .await
            {
                Ok(r) => {
                    done = r.get_ref().done_bytes;
                    tracing::info!(volume = plan.volume, %session, done, "resuming rebuild");
                }
                Err(_) => session.clear(),
            }
        }
        if session.is_empty() {
            let resp = runner
                .begin_rebuild(v1::BeginRebuildRequest {
                    volume: plan.volume,
                    k: plan.k,
                    m: plan.m,
                    capacity: plan.capacity,
                    sources: plan.sources.clone(),
                    outputs: plan.outputs.clone(),
                    copy_from: match job {
                        Job::Move(_) => plan.outputs.first().map(|o| o.member),
                        Job::Repair(_) => None,
                    },
                })
                .await
                .map_err(|s| runner_err(s.message().to_string()))?
                .into_inner();
            session = resp.session;
            tracing::info!(volume = plan.volume, %session, total = resp.total_bytes, "rebuild begun");
            self.progress(job, &session, 0, resp.total_bytes).await?;
        }
        loop {
            self.wait_unpaused(stop).await?;
            let rate = self.knobs.lock().bytes_per_sec;
            let step = if rate == 0 {
                self.cfg.step_bytes
            } else {
                (rate / 4).clamp(1 << 20, self.cfg.step_bytes)
            };
            let r = runner
                .rebuild_step(v1::RebuildStepRequest {
                    session: session.clone(),
                    max_bytes: step,
                })
                .await
                .map_err(|s| runner_err(s.message().to_string()))?
                .into_inner();
            // A runner whose progress goes backwards is out of step with this session.
            if r.done_bytes < done {
                return Err(runner_err(format!(
                    "the runner's progress went back from {done} to {} bytes",
                    r.done_bytes
                )));
            }
            self.throttle
                .spend((r.done_bytes - done).saturating_mul(outputs))
                .await;
            done = r.done_bytes;
            self.progress(job, &session, r.done_bytes, r.total_bytes)
                .await?;
            if r.finished {
                break;
            }
        }
        let fin = runner
            .finish_rebuild(v1::FinishRebuildRequest {
                session: session.clone(),
            })
            .await
            .map_err(|s| runner_err(s.message().to_string()))?
            .into_inner();
        if fin.unrecoverable > 0 {
            tracing::warn!(
                volume = plan.volume,
                skipped = fin.unrecoverable,
                "records without k intact fragments were left out (unacknowledged writes, or damage beyond m)"
            );
        }
        Ok(fin.bytes)
    }

    /// Rewrites one corrupt fragment in place, on the member's own server.
    async fn repair_range(&self, t: &v1::RangeTask) -> Result<(), RepairError> {
        let meta_err = |s: tonic::Status| RepairError::Meta(s.message().to_string());
        let found = self
            .meta()
            .lookup(v1::LookupRequest {
                hashes: vec![t.hash.clone()],
                with_volumes: true,
            })
            .await
            .map_err(meta_err)?
            .into_inner();
        let located = found
            .found
            .iter()
            .find(|l| l.volume == t.volume && l.offset == t.offset);
        let volume = found.volumes.iter().find(|v| v.id == t.volume);
        let (Some(loc), Some(vol)) = (located, volume) else {
            return self.range_done(t, not_needed("no live block there")).await;
        };
        let Some(member) = vol.members.get(t.member as usize) else {
            return self.range_done(t, not_needed("no such member")).await;
        };
        if !healthy(member) {
            return self
                .range_done(t, not_needed("the member is being rebuilt"))
                .await;
        }
        let sources = vol
            .members
            .iter()
            .filter(|m| m.index != t.member && healthy(m))
            .map(|m| v1::RebuildSource {
                member: m.index,
                generation: m.generation,
                address: m.address.clone(),
            })
            .collect();
        let runner_err = |message: String| RepairError::Runner {
            address: member.address.clone(),
            message,
        };
        let mut c = self.peers.get(&member.address).map_err(runner_err)?;
        let r = c
            .repair_fragment(v1::RepairFragmentRequest {
                extent: Some(hoard_proto::convert::extent_ref(ExtentId {
                    volume: t.volume,
                    member: t.member,
                    generation: member.generation,
                })),
                record: Some(v1::BlockRecord {
                    hash: loc.hash.clone(),
                    offset: loc.offset,
                    frag_len: loc.frag_len,
                    block_len: loc.block_len,
                    crcs: loc.crcs.clone(),
                }),
                sources,
                k: vol.k,
                m: vol.m,
            })
            .await
            .map_err(|s| runner_err(s.message().to_string()))?;
        let outcome = if r.get_ref().rewritten {
            RangeOutcome::Repaired
        } else {
            not_needed("the fragment checks out")
        };
        self.range_done(t, outcome).await
    }

    async fn range_done(
        &self,
        t: &v1::RangeTask,
        outcome: RangeOutcome,
    ) -> Result<(), RepairError> {
        self.meta()
            .range_done(v1::RangeDoneRequest {
                holder: self.holder.clone(),
                volume: t.volume,
                member: t.member,
                offset: t.offset,
                outcome: outcome.to_string(),
            })
            .await
            .map_err(|s| RepairError::Meta(s.message().to_string()))?;
        Ok(())
    }

    async fn progress(
        &self,
        job: Job,
        session: &str,
        done: u64,
        total: u64,
    ) -> Result<(), RepairError> {
        let meta_err = |s: tonic::Status| RepairError::Meta(s.message().to_string());
        let current = match job {
            Job::Repair(volume) => {
                self.meta()
                    .repair_progress(v1::RepairProgressRequest {
                        holder: self.holder.clone(),
                        volume,
                        session: session.to_string(),
                        done_bytes: done,
                        total_bytes: total,
                    })
                    .await
                    .map_err(meta_err)?
                    .into_inner()
                    .current
            }
            Job::Move(id) => {
                self.meta()
                    .move_progress(v1::MoveProgressRequest {
                        holder: self.holder.clone(),
                        id,
                        session: session.to_string(),
                        done_bytes: done,
                    })
                    .await
                    .map_err(meta_err)?
                    .into_inner()
                    .current
            }
        };
        if !current {
            return Err(RepairError::Superseded(match job {
                Job::Repair(v) | Job::Move(v) => v,
            }));
        }
        Ok(())
    }
}

/// Whether meta lists a member as readable now.
fn healthy(m: &v1::MemberInfo) -> bool {
    hoard_proto::convert::member_health(&m.state).is_ok_and(MemberHealth::is_ok)
}

fn not_needed(why: &str) -> RangeOutcome {
    RangeOutcome::NotNeeded(why.to_string())
}
