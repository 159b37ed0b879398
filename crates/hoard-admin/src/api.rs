//! The operator API's types: what each endpoint under `/api/v1` takes and answers, shared by the server
//! (in the process that runs meta) and by `hoard admin`, and the source of `/api/v1/openapi.json`
//! ([`crate::openapi`]). A key renamed here is renamed for both sides at once. Requests refuse fields
//! they do not know, so that a misspelt knob is an error rather than a silent no-op.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A failed request: the one place an error becomes an HTTP status. Roles map their errors onto these
/// kinds (`invalid` 400, `not_found` 404, `conflict` 409, `unavailable` 503, `internal` 500).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub status: StatusCode,
    pub error: ApiError,
}

impl Failure {
    fn new(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Failure {
        Failure {
            status,
            error: ApiError {
                code: code.to_string(),
                message: message.to_string(),
            },
        }
    }

    pub fn invalid(message: impl std::fmt::Display) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    pub fn not_found(message: impl std::fmt::Display) -> Failure {
        Failure::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl std::fmt::Display) -> Failure {
        Failure::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unavailable(message: impl std::fmt::Display) -> Failure {
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal(message: impl std::fmt::Display) -> Failure {
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.error)).into_response()
    }
}

/// What a handler answers: a typed JSON value or a [`Failure`].
pub type Reply<T> = Result<axum::Json<T>, Failure>;

/// An error answer: an HTTP status that says what kind of failure it is, and this body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// `invalid`, `not_found`, `conflict`, `unavailable` or `internal`.
    pub code: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    pub id: String,
    pub address: String,
    /// `up` or `down`.
    pub state: String,
    pub labels: BTreeMap<String, String>,
    pub last_heartbeat_unix_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DiskView {
    pub id: String,
    pub node: String,
    pub path: String,
    /// `ok`, `failed: <why>`, `held: <why>`, `draining (N members left)`, `drained` or `slow: <why>`.
    pub state: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub trash_bytes: u64,
    pub members: u32,
    /// Its synced writes are slower than its server's `slow_disk`: no new members go there.
    pub slow: bool,
    /// The median of its recent latency probes (ms), while it is slow.
    pub sync_ms: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    pub index: u32,
    pub disk: String,
    pub node: String,
    pub generation: u64,
    /// `ok`, `down` or `lost`.
    pub state: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VolumeView {
    pub id: u64,
    /// `creating`, `open`, `sealed`, `degraded`, `lost` or `retired`.
    pub state: String,
    /// `K+M`.
    pub geometry: String,
    /// Live blocks and their bytes.
    pub blocks: u64,
    pub bytes: u64,
    /// Deleted blocks whose rows still point here, and their bytes.
    pub dead_blocks: u64,
    pub dead_bytes: u64,
    pub capacity: u64,
    pub lease_holder: String,
    pub seal_reason: String,
    /// Where the members break the placement rules.
    pub violations: Vec<String>,
    pub members: Vec<MemberView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RangeView {
    pub volume: u64,
    pub member: u32,
    pub offset: u64,
    pub hash: String,
    pub reported_unix_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TargetView {
    pub member: u32,
    pub disk: String,
    pub generation: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RepairTaskView {
    pub volume: u64,
    /// Members lost: the priority.
    pub priority: u64,
    pub lost_members: Vec<u32>,
    /// `queued`, `running` or `unrecoverable`.
    pub state: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub eta_seconds: Option<f64>,
    pub degraded_for_seconds: u64,
    pub targets: Option<Vec<TargetView>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RepairStatus {
    pub paused: bool,
    pub bytes_per_sec: u64,
    pub concurrency: u32,
    pub degraded_volumes: u32,
    pub lost_volumes: u32,
    pub bytes_rebuilt_total: u64,
    pub volumes_repaired_total: u64,
    pub ranges_repaired_total: u64,
    pub ranges: Vec<RangeView>,
    pub rate_bytes_per_sec: f64,
    pub queue: Vec<RepairTaskView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScrubDiskView {
    pub disk: String,
    pub node: String,
    /// `idle`, `running`, `paused` or `unknown` (not reported yet).
    pub state: String,
    pub pass_started_unix_ms: u64,
    pub last_pass_completed_unix_ms: u64,
    pub pass_age_seconds: Option<u64>,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub bad_ranges: u64,
    pub last_pass_bad_ranges: u64,
    pub index_damage: u64,
    pub last_pass_index_damage: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScrubView {
    pub paused: bool,
    pub bytes_per_sec: u64,
    pub interval_secs: u64,
    pub start_requested_unix_ms: u64,
    pub bad_ranges: u64,
    pub disks: Vec<ScrubDiskView>,
}

/// The cell at a glance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CellStatus {
    pub cluster_id: String,
    pub blocks: u64,
    pub bytes: u64,
    pub volumes_by_state: BTreeMap<String, u64>,
    pub nodes: Vec<NodeView>,
    pub disks: Vec<DiskView>,
    pub volumes: Vec<VolumeView>,
    pub repair: RepairStatus,
    pub scrub: ScrubView,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VerifyView {
    pub running: bool,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub entries: u64,
    pub live: u64,
    pub entries_per_sec: f64,
    pub problems_total: u64,
    pub by_kind: BTreeMap<String, u64>,
    pub problems: Vec<String>,
    /// Stopped before the end of the index.
    pub cancelled: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IndexRebuildView {
    pub running: bool,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub cluster_id_adopted: String,
    pub volumes_total: u64,
    pub volumes_done: u64,
    pub volumes_restored: u64,
    pub records_seen: u64,
    pub blocks_accepted: u64,
    pub blocks_already_known: u64,
    pub blocks_rejected: u64,
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SamplePage {
    /// Give as `after` for the next page; absent on the last.
    pub next: Option<String>,
    pub hashes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// The backup's name: a new directory made inside the configured backup directory (`[admin]
    /// backup_dir`). A plain name, not a path.
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackupDone {
    pub dir: String,
    pub bytes: u64,
    pub seconds: f64,
}

/// A change of the repair knobs; absent fields stay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepairThrottle {
    /// Rebuilt bytes per second across the cell; 0 is unthrottled.
    pub bytes_per_sec: Option<u64>,
    /// Volumes rebuilt at once, 1 to 1024.
    pub concurrency: Option<u32>,
}

/// Compaction: its knobs, the volume being emptied and lifetime counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompactionView {
    pub paused: bool,
    /// Bytes per second of blocks moved; 0 is unthrottled.
    pub bytes_per_sec: u64,
    /// Blocks moved at once.
    pub concurrency: u32,
    /// A sealed volume whose reclaimable share of its bytes reaches this is compacted.
    pub threshold: f64,
    /// The volume being emptied; 0 when none.
    pub donor: u64,
    pub donor_started_unix_ms: u64,
    /// Bytes of the donor to move (live, and deleted within their grace) and moved so far.
    pub donor_total_bytes: u64,
    pub donor_moved_bytes: u64,
    /// Seconds until the donor is empty at the rate so far; absent when unknown.
    pub eta_seconds: Option<u64>,
    pub moved_blocks_total: u64,
    pub moved_bytes_total: u64,
    pub dropped_blocks_total: u64,
    pub reclaimed_bytes_total: u64,
    pub volumes_compacted_total: u64,
    pub stale_moves_total: u64,
    /// Dead bytes of every volume: what compaction can reclaim once past the grace.
    pub dead_bytes: u64,
    /// Volumes the last planning walk found over the threshold, sparsest first.
    pub candidates: Vec<CompactionCandidate>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompactionCandidate {
    pub volume: u64,
    pub live_bytes: u64,
    /// Deleted, within their grace: moved with the live ones.
    pub grace_bytes: u64,
    /// Deleted, past their grace: reclaimed.
    pub expired_bytes: u64,
}

/// The volume servers' trash as meta's ledger knows it: what waits, what is cleared, and whether
/// unlinks are halted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrashView {
    /// Non-empty: every unlink in the cell is halted, and why; an operator resumes them.
    pub halted: String,
    pub halted_unix_ms: u64,
    pub entries: u64,
    pub bytes: u64,
    /// Entries meta cleared: unlinked by their servers once the trash grace has passed.
    pub cleared: u64,
    pub cleared_bytes: u64,
    pub clearances_total: u64,
    pub unlinks_total: u64,
    /// Entries that vanished from a healthy disk's trash without a clearance.
    pub unlinks_without_clearance_total: u64,
    /// Inspections that found a row pointing into a trashed extent.
    pub violations_total: u64,
    pub inspections_total: u64,
    pub last_inspection_unix_ms: u64,
    /// The oldest entries not cleared yet (at most 100), with why each waits.
    pub waiting: Vec<TrashEntryView>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrashEntryView {
    pub node_id: String,
    pub disk_id: String,
    pub name: String,
    /// The extent it holds ("volume/member gen G"); empty when its server cannot tell.
    pub extent: String,
    pub trashed_unix_ms: u64,
    pub bytes: u64,
    pub waiting: String,
}

/// A change of the compaction knobs; absent fields stay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompactionThrottle {
    /// Bytes per second of blocks moved; 0 is unthrottled.
    pub bytes_per_sec: Option<u64>,
    /// Blocks moved at once, 1 to 64.
    pub concurrency: Option<u32>,
    /// Above 0, at most 1.
    pub threshold: Option<f64>,
}

/// A change of the scrub knobs; absent fields stay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScrubThrottle {
    /// Per disk; 0 is unthrottled.
    pub bytes_per_sec: Option<u64>,
    pub interval_secs: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MoveView {
    pub id: u64,
    pub volume: u64,
    pub member: u32,
    pub from_disk: String,
    pub to_disk: String,
    pub bytes: u64,
    /// `pending`, `running`, `done`, `failed` or `dropped`.
    pub state: String,
    /// `rebalance` or `drain`.
    pub reason: String,
    pub done_bytes: u64,
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DrainView {
    pub disk: String,
    pub drained: bool,
    pub members_left: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RebalanceView {
    /// `idle`, `running`, `done` or `cancelled`.
    pub state: String,
    pub paused: bool,
    pub tolerance_pct: f64,
    pub moves_by_state: BTreeMap<String, u64>,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Moves not done or dropped.
    pub moves: Vec<MoveView>,
    pub drains: Vec<DrainView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlannedMoveView {
    pub volume: u64,
    pub member: u32,
    pub from_disk: String,
    pub to_disk: String,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RebalancePlan {
    pub tolerance_pct: f64,
    pub bytes: u64,
    pub moves: Vec<PlannedMoveView>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// Percentage points around the mean fill, 0 to 100.
    pub tolerance: Option<f64>,
}

/// A drain or undrain names a disk or a node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    pub disk: Option<String>,
    pub node: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DrainStarted {
    pub disks: Vec<String>,
    pub moves: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Undrained {
    pub disks: Vec<String>,
    pub undrained: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeclaredEmpty {
    pub disk: String,
    pub declared_empty: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub unix_ms: u64,
    pub level: String,
    pub target: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProgressView {
    pub done: u64,
    /// 0 when unknown.
    pub total: u64,
    pub unit: String,
}

/// A background job of the process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerView {
    pub name: String,
    /// `busy`, `throttled`, `idle`, `paused`, `backoff`, `done`, `cancelled` or `failed`.
    pub phase: String,
    pub paused: bool,
    pub progress: Option<ProgressView>,
    pub detail: String,
    /// Bytes per second; absent for workers without a throttle, 0 for unthrottled.
    pub throttle_bytes_per_sec: Option<u64>,
    /// Failed units in a row.
    pub errors: u32,
    pub last_error: Option<String>,
    pub started_unix_ms: u64,
}

impl From<hoard_runtime::WorkerInfo> for WorkerView {
    fn from(w: hoard_runtime::WorkerInfo) -> Self {
        let phase = serde_json::to_value(w.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        WorkerView {
            name: w.name,
            phase,
            paused: w.paused,
            progress: w.status.progress.map(|p| ProgressView {
                done: p.done,
                total: p.total,
                unit: p.unit.to_string(),
            }),
            detail: w.status.detail,
            throttle_bytes_per_sec: w.throttle_bytes_per_sec,
            errors: w.errors,
            last_error: w.last_error,
            started_unix_ms: w.started_unix_ms,
        }
    }
}

/// What an operator asks of a worker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerRequest {
    pub name: String,
    /// For `throttle`: bytes per second, 0 unthrottled.
    pub bytes_per_sec: Option<u64>,
}
