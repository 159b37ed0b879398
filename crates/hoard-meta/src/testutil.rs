//! Helpers for the unit tests of this crate.

use std::collections::HashSet;
use std::sync::Arc;

use futures::future::BoxFuture;
use hoard_proto::v1;
use parking_lot::Mutex;

use crate::engine::MemEngine;
use crate::state::{MetaConfig, MetaState};
use crate::volume_ops::VolumeOps;

/// Volume servers that accept every extent, except on disks listed in `broken`.
#[derive(Default)]
pub struct FakeOps {
    pub broken: Mutex<HashSet<String>>,
    pub created: Mutex<Vec<(String, v1::CreateExtentRequest)>>,
}

impl VolumeOps for FakeOps {
    fn create_extent(
        &self,
        address: String,
        req: v1::CreateExtentRequest,
    ) -> BoxFuture<'static, Result<(), String>> {
        let res = if self.broken.lock().contains(&req.disk_id) {
            Err("disk on fire".to_string())
        } else {
            self.created.lock().push((address, req));
            Ok(())
        };
        Box::pin(async move { res })
    }
}

pub fn cell(nodes: usize, disks: usize) -> (Arc<MetaState>, Arc<FakeOps>) {
    let cfg = MetaConfig {
        extent_capacity: 1 << 20,
        ..Default::default()
    };
    cell_on(
        Arc::new(MemEngine::new()),
        cfg,
        crate::clock::MetaClock::system(),
        nodes,
        disks,
    )
}

/// A cell over `engine` (new, or holding an earlier one's tables) with wall time from `time`.
pub fn cell_on(
    engine: Arc<dyn crate::KvEngine>,
    cfg: MetaConfig,
    time: crate::clock::TimeSource,
    nodes: usize,
    disks: usize,
) -> (Arc<MetaState>, Arc<FakeOps>) {
    let ops = Arc::new(FakeOps::default());
    let state = MetaState::open_with_clock(engine, cfg, ops.clone(), time).unwrap();
    for n in 0..nodes {
        state
            .heartbeat_wire(&v1::HeartbeatRequest {
                node_id: format!("n{n}"),
                address: format!("127.0.0.1:{}", 9000 + n),
                labels: Default::default(),
                extents: Vec::new(),
                interval_ms: 1000,
                disks: (0..disks)
                    .map(|d| v1::DiskInfo {
                        disk_id: format!("d{n}-{d}"),
                        path: format!("/d{d}"),
                        capacity_bytes: 1 << 30,
                        used_bytes: 0,
                        free_bytes: 1 << 30,
                        state: "ok".into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .unwrap();
    }
    (state, ops)
}
