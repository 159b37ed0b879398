//! Heartbeats: the volume server announces its address, labels and disks to meta, and learns the
//! cluster id, which it writes into its disk labels.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hoard_proto::v1::{self, meta_client::MetaClient};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::store::VolumeStore;
use crate::wire::disk_info;

pub struct HeartbeatConfig {
    pub advertise: String,
    pub labels: HashMap<String, String>,
    pub interval: Duration,
    /// Receives the scrub knobs and reports scrub progress, when scrubbing runs.
    pub scrubber: Option<Arc<crate::scrub::Scrubber>>,
}

/// Sends one heartbeat. Used at start (so that the node is known before it serves) and by the loop.
pub async fn beat(
    client: &mut MetaClient<Channel>,
    store: &VolumeStore,
    cfg: &HeartbeatConfig,
) -> Result<(), tonic::Status> {
    store.check_disks();
    let disks = store
        .disk_reports()
        .iter()
        .map(|d| {
            let mut info = disk_info(d);
            info.scrub = cfg.scrubber.as_ref().and_then(|s| s.status(&d.disk_id));
            info
        })
        .collect();
    let extents = store
        .extents()
        .iter()
        .map(|(e, d)| crate::wire::extent_info(e, d))
        .collect();
    let (trash, trash_truncated) = trash_report(store);
    let resp = client
        .heartbeat(v1::HeartbeatRequest {
            node_id: store.node_id.clone(),
            address: cfg.advertise.clone(),
            labels: cfg.labels.clone(),
            disks,
            extents,
            interval_ms: cfg.interval.as_millis() as u64,
            trash,
            trash_truncated,
        })
        .await?
        .into_inner();
    store
        .meta_contact_unix_ms
        .store(hoard_types::now_ms(), std::sync::atomic::Ordering::Relaxed);
    if !resp.cluster_id.is_empty() {
        store.adopt_cluster(&resp.cluster_id, &resp.adopt_disks);
    }
    *store.trash_word.lock() = crate::trash::Word {
        cleared: resp
            .clearances
            .iter()
            .map(|c| ((c.disk_id.clone(), c.name.clone()), c.clearance))
            .collect(),
        halted: resp.trash_halted.clone(),
    };
    for e in resp.retire {
        store.retire(e.volume, e.member, e.generation);
    }
    if let (Some(s), Some(k)) = (&cfg.scrubber, &resp.scrub) {
        s.set_knobs(crate::scrub::Knobs::from_wire(k));
    }
    Ok(())
}

/// The trash of every healthy disk, at most [`crate::trash::LIST_LIMIT`] entries each (the oldest),
/// and the disks that hold more.
fn trash_report(store: &VolumeStore) -> (Vec<v1::TrashEntry>, Vec<String>) {
    let mut entries = Vec::new();
    let mut truncated = Vec::new();
    for d in store.disks().iter().filter(|d| d.failure().is_none()) {
        let mut listed = crate::trash::list(d);
        if listed.len() > crate::trash::LIST_LIMIT {
            listed.truncate(crate::trash::LIST_LIMIT);
            truncated.push(d.id.clone());
        }
        entries.extend(listed.into_iter().map(|e| v1::TrashEntry {
            disk_id: e.disk_id,
            name: e.name,
            extent: e.extent.map(|x| v1::ExtentRef {
                volume: x.volume,
                member: x.member,
                generation: x.generation,
            }),
            trashed_unix_ms: e.trashed_unix_ms,
            bytes: e.bytes,
        }));
    }
    (entries, truncated)
}

/// Heartbeats until `stop` turns true. Failures are logged and retried at the next beat.
pub async fn run(
    mut client: MetaClient<Channel>,
    store: Arc<VolumeStore>,
    cfg: HeartbeatConfig,
    mut stop: watch::Receiver<bool>,
) {
    store.heartbeat_ms.store(
        cfg.interval.as_millis() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let mut failing = false;
    loop {
        match beat(&mut client, &store, &cfg).await {
            Ok(()) => {
                if failing {
                    tracing::info!("meta reachable again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("heartbeat to meta failed: {}", e.message());
                }
                failing = true;
            }
        }
        // Between beats, look at the disks every quarter second: a disk that fails (wiped, swapped,
        // refusing I/O) is reported at once, so that its repair starts within a second.
        let failed = store.failed_disks();
        let next = tokio::time::Instant::now() + cfg.interval;
        loop {
            let tick = next.min(tokio::time::Instant::now() + FAILURE_CHECK);
            tokio::select! {
                _ = tokio::time::sleep_until(tick) => {}
                _ = stop.changed() => return,
            }
            if tokio::time::Instant::now() >= next {
                break;
            }
            store.check_disks();
            if store.failed_disks() > failed {
                tracing::warn!("a disk failed: reporting it to meta now");
                break;
            }
        }
    }
}

/// How often disks are checked between heartbeats.
const FAILURE_CHECK: Duration = Duration::from_millis(250);
