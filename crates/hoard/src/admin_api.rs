//! The operator API of a process that runs meta: JSON over HTTP under `/api/v1`, beside `/metrics`,
//! `/healthz`, `/readyz` and `/status`. `hoard admin` is a client of it. Requests and answers are the
//! types of [`hoard_admin::api`]; the routes are described in [`hoard_admin::openapi::META`].

use std::sync::Arc;

use hoard_admin::api::*;
use hoard_admin::axum::extract::{Path, State};
use hoard_admin::axum::routing::{get, post};
use hoard_admin::axum::{Json, Router};
use hoard_admin::extract::{Body, Params};
use hoard_meta::scrub::ScrubChange;
use hoard_meta::{MetaError, MetaState};
use hoard_proto::v1;
use hoard_types::state::RebalanceAction;

use crate::views;

type Meta = State<Arc<MetaState>>;

/// The one mapping from meta's errors to the API's.
fn failure(e: MetaError) -> Failure {
    match e {
        MetaError::NoVolume(_) | MetaError::NotFound(_) => Failure::not_found(e),
        MetaError::Invalid(_) => Failure::invalid(e),
        MetaError::Conflict(_) | MetaError::Full(_) => Failure::conflict(e),
        MetaError::Placement(_) | MetaError::CreateFailed(_) | MetaError::ShuttingDown => {
            Failure::unavailable(e)
        }
        MetaError::Engine(_) | MetaError::Corrupt { .. } => Failure::internal(e),
    }
}

fn joined(e: tokio::task::JoinError) -> Failure {
    Failure::internal(format!("the request's task failed: {e}"))
}

/// The routes; backups go under `backup_dir` (none: backups are refused).
pub fn routes(meta: Arc<MetaState>, backup_dir: Option<std::path::PathBuf>) -> Router {
    let backup_dir = Arc::new(backup_dir);
    Router::new()
        .route("/", get(status_page))
        .route("/api/v1/status", get(status))
        .route("/api/v1/events", get(events))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/disks", get(disks))
        .route("/api/v1/volumes", get(volumes))
        .route("/api/v1/repair", get(repair_status))
        .route("/api/v1/repair/pause", post(repair_pause))
        .route("/api/v1/repair/resume", post(repair_resume))
        .route("/api/v1/repair/throttle", post(repair_throttle))
        .route("/api/v1/rebuild-index", get(index_status).post(index_start))
        .route("/api/v1/verify", get(verify_status).post(verify_start))
        .route(
            "/api/v1/backup",
            post(move |m: Meta, b: Body<BackupRequest>| backup(m, b, Arc::clone(&backup_dir))),
        )
        .route("/api/v1/rebalance", get(rebalance_status))
        .route("/api/v1/rebalance/plan", get(rebalance_plan))
        .route("/api/v1/rebalance/apply", post(rebalance_apply))
        .route("/api/v1/rebalance/{action}", post(rebalance_action))
        .route("/api/v1/drain", post(drain))
        .route("/api/v1/undrain", post(undrain))
        .route("/api/v1/blocks/sample", get(sample_blocks))
        .route("/api/v1/disks/{id}/declare-empty", post(declare_empty))
        .route("/api/v1/scrub", get(scrub_status))
        .route("/api/v1/scrub/start", post(scrub_start))
        .route("/api/v1/scrub/pause", post(scrub_pause))
        .route("/api/v1/scrub/resume", post(scrub_resume))
        .route("/api/v1/scrub/throttle", post(scrub_throttle))
        .route("/api/v1/compaction", get(compaction_status))
        .route("/api/v1/compaction/start", post(compaction_start))
        .route("/api/v1/compaction/pause", post(compaction_pause))
        .route("/api/v1/compaction/resume", post(compaction_resume))
        .route("/api/v1/compaction/cancel", post(compaction_cancel))
        .route("/api/v1/compaction/throttle", post(compaction_throttle))
        .route("/api/v1/trash", get(trash_status))
        .route("/api/v1/trash/inspect", post(trash_inspect))
        .route("/api/v1/trash/resume", post(trash_resume))
        .with_state(meta)
}

/// The status page for people: one self-contained page that polls the API.
async fn status_page() -> hoard_admin::axum::response::Html<&'static str> {
    hoard_admin::axum::response::Html(include_str!("status.html"))
}

async fn events() -> Json<Vec<EventView>> {
    Json(crate::telemetry::recent_events())
}

async fn status(State(m): Meta) -> Json<CellStatus> {
    Json(views::cell(&m))
}

async fn nodes(State(m): Meta) -> Json<Vec<NodeView>> {
    Json(m.cluster_status().nodes.iter().map(views::node).collect())
}

async fn disks(State(m): Meta) -> Json<Vec<DiskView>> {
    Json(m.cluster_status().disks.iter().map(views::disk).collect())
}

async fn volumes(State(m): Meta) -> Json<Vec<VolumeView>> {
    Json(
        m.cluster_status()
            .volumes
            .iter()
            .map(views::volume)
            .collect(),
    )
}

fn repair_view(m: &MetaState) -> Json<RepairStatus> {
    Json(views::repair(&m.repair().repair_status()))
}

async fn repair_status(State(m): Meta) -> Json<RepairStatus> {
    repair_view(&m)
}

fn set_repair(m: &MetaState, req: v1::SetRepairKnobsRequest) -> Reply<RepairStatus> {
    m.repair().set_knobs(&req).map_err(failure)?;
    Ok(repair_view(m))
}

async fn repair_pause(State(m): Meta) -> Reply<RepairStatus> {
    set_repair(
        &m,
        v1::SetRepairKnobsRequest {
            paused: Some(true),
            ..Default::default()
        },
    )
}

async fn repair_resume(State(m): Meta) -> Reply<RepairStatus> {
    set_repair(
        &m,
        v1::SetRepairKnobsRequest {
            paused: Some(false),
            ..Default::default()
        },
    )
}

async fn repair_throttle(State(m): Meta, Body(t): Body<RepairThrottle>) -> Reply<RepairStatus> {
    if t.concurrency.is_some_and(|c| c == 0 || c > 1024) {
        return Err(Failure::invalid("concurrency must be 1 to 1024"));
    }
    set_repair(
        &m,
        v1::SetRepairKnobsRequest {
            paused: None,
            bytes_per_sec: t.bytes_per_sec,
            concurrency: t.concurrency,
        },
    )
}

fn compaction_view(m: &MetaState) -> Json<CompactionView> {
    Json(views::compaction(m))
}

async fn compaction_status(State(m): Meta) -> Json<CompactionView> {
    compaction_view(&m)
}

async fn compaction_start(State(m): Meta) -> Reply<CompactionView> {
    m.compaction().start().map_err(failure)?;
    Ok(compaction_view(&m))
}

async fn compaction_pause(State(m): Meta) -> Reply<CompactionView> {
    m.compaction()
        .set_knobs(Some(true), None, None, None)
        .map_err(failure)?;
    Ok(compaction_view(&m))
}

async fn compaction_resume(State(m): Meta) -> Reply<CompactionView> {
    m.compaction()
        .set_knobs(Some(false), None, None, None)
        .map_err(failure)?;
    Ok(compaction_view(&m))
}

async fn compaction_cancel(State(m): Meta) -> Reply<CompactionView> {
    m.compaction().cancel().map_err(failure)?;
    Ok(compaction_view(&m))
}

async fn compaction_throttle(
    State(m): Meta,
    Body(t): Body<CompactionThrottle>,
) -> Reply<CompactionView> {
    m.compaction()
        .set_knobs(None, t.bytes_per_sec, t.concurrency, t.threshold)
        .map_err(failure)?;
    Ok(compaction_view(&m))
}

async fn trash_status(State(m): Meta) -> Json<TrashView> {
    Json(views::trash(&m))
}

async fn trash_inspect(State(m): Meta) -> Reply<TrashView> {
    m.trash().inspect().await.map_err(failure)?;
    Ok(Json(views::trash(&m)))
}

async fn trash_resume(State(m): Meta) -> Reply<TrashView> {
    m.trash().resume().map_err(failure)?;
    Ok(Json(views::trash(&m)))
}

fn scrub_view(m: &MetaState) -> Json<ScrubView> {
    Json(views::scrub(&m.scrub().knobs(), &m.scrub().status()))
}

async fn scrub_status(State(m): Meta) -> Json<ScrubView> {
    scrub_view(&m)
}

fn set_scrub(m: &MetaState, c: ScrubChange) -> Reply<ScrubView> {
    m.scrub().set(c).map_err(failure)?;
    Ok(scrub_view(m))
}

async fn scrub_start(State(m): Meta) -> Reply<ScrubView> {
    set_scrub(
        &m,
        ScrubChange {
            start: true,
            ..Default::default()
        },
    )
}

async fn scrub_pause(State(m): Meta) -> Reply<ScrubView> {
    set_scrub(
        &m,
        ScrubChange {
            paused: Some(true),
            ..Default::default()
        },
    )
}

async fn scrub_resume(State(m): Meta) -> Reply<ScrubView> {
    set_scrub(
        &m,
        ScrubChange {
            paused: Some(false),
            ..Default::default()
        },
    )
}

async fn scrub_throttle(State(m): Meta, Body(t): Body<ScrubThrottle>) -> Reply<ScrubView> {
    set_scrub(
        &m,
        ScrubChange {
            bytes_per_sec: t.bytes_per_sec,
            interval_secs: t.interval_secs,
            ..Default::default()
        },
    )
}

async fn index_status(State(m): Meta) -> Json<IndexRebuildView> {
    Json(views::index_rebuild(m.index_rebuild().report()))
}

async fn index_start(State(m): Meta) -> Reply<IndexRebuildView> {
    m.index_rebuild().start().map_err(failure)?;
    Ok(index_status(State(m)).await)
}

async fn declare_empty(State(m): Meta, Path(id): Path<String>) -> Reply<DeclaredEmpty> {
    m.nodes().declare_disk_empty(&id).map_err(failure)?;
    Ok(Json(DeclaredEmpty {
        disk: id,
        declared_empty: true,
    }))
}

async fn verify_status(State(m): Meta) -> Json<VerifyView> {
    Json(views::verify(m.verify().report()))
}

async fn verify_start(State(m): Meta) -> Reply<VerifyView> {
    m.verify().start().map_err(failure)?;
    Ok(verify_status(State(m)).await)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleQuery {
    #[serde(default = "hundred")]
    pct: f64,
    #[serde(default)]
    after: String,
    #[serde(default = "page")]
    limit: usize,
}

fn hundred() -> f64 {
    100.0
}

fn page() -> usize {
    10_000
}

async fn sample_blocks(State(m): Meta, Params(q): Params<SampleQuery>) -> Reply<SamplePage> {
    let after: Vec<u8> = if q.after.is_empty() {
        Vec::new()
    } else {
        q.after
            .parse::<hoard_types::BlockHash>()
            .map_err(|e| Failure::invalid(format!("after: {e}")))?
            .as_bytes()
            .to_vec()
    };
    let (hashes, more) = tokio::task::spawn_blocking(move || {
        m.verify()
            .sample_blocks(q.pct, &after, q.limit.min(100_000))
    })
    .await
    .map_err(joined)?
    .map_err(failure)?;
    let hashes: Vec<String> = hashes
        .iter()
        .map(|h| hoard_types::BlockHash::from_bytes(*h).to_hex())
        .collect();
    Ok(Json(SamplePage {
        next: if more { hashes.last().cloned() } else { None },
        hashes,
    }))
}

/// A consistent copy of the metadata tier (a RocksDB checkpoint) into a new directory on meta's host.
/// A backup's name as a directory of `root`: one plain path component.
fn backup_path(root: Option<&std::path::Path>, name: &str) -> Result<std::path::PathBuf, Failure> {
    let Some(root) = root else {
        return Err(Failure::conflict(
            "backups are off: no backup directory is configured ([admin] backup_dir)",
        ));
    };
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255;
    if !plain {
        return Err(Failure::invalid(format!(
            "backup name {name:?} is not a plain name: a backup goes into {}/NAME, give NAME (such as 2026-12-04) and no path",
            root.display()
        )));
    }
    Ok(root.join(name))
}

async fn backup(
    State(m): Meta,
    Body(req): Body<BackupRequest>,
    root: Arc<Option<std::path::PathBuf>>,
) -> Reply<BackupDone> {
    let path = backup_path(root.as_deref(), &req.name)?;
    if path.exists() {
        return Err(Failure::conflict(format!(
            "{} exists already; a backup goes into a new directory",
            path.display()
        )));
    }
    if let Some(root) = root.as_deref() {
        std::fs::create_dir_all(root).map_err(|e| {
            Failure::internal(format!(
                "cannot make the backup directory {}: {e}",
                root.display()
            ))
        })?;
    }
    let started = std::time::Instant::now();
    let p = path.clone();
    tokio::task::spawn_blocking(move || m.engine().checkpoint(&p))
        .await
        .map_err(joined)?
        .map_err(failure)?;
    Ok(Json(BackupDone {
        bytes: views::dir_bytes(&path),
        dir: path.display().to_string(),
        seconds: started.elapsed().as_secs_f64(),
    }))
}

async fn rebalance_status(State(m): Meta) -> Json<RebalanceView> {
    Json(views::rebalance(&m))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Tolerance {
    #[serde(default = "ten")]
    tolerance: f64,
}

fn ten() -> f64 {
    10.0
}

fn check_tolerance(t: f64) -> Result<f64, Failure> {
    if (0.0..=100.0).contains(&t) {
        Ok(t)
    } else {
        Err(Failure::invalid(
            "tolerance must be 0 to 100 (percentage points)",
        ))
    }
}

async fn rebalance_plan(State(m): Meta, Params(q): Params<Tolerance>) -> Reply<RebalancePlan> {
    let tolerance = check_tolerance(q.tolerance)?;
    let plan = m.moves().plan_rebalance(tolerance);
    Ok(Json(RebalancePlan {
        tolerance_pct: tolerance,
        bytes: plan.iter().map(|p| p.bytes).sum(),
        moves: plan
            .into_iter()
            .map(|p| PlannedMoveView {
                volume: p.volume,
                member: p.member,
                from_disk: p.from_disk,
                to_disk: p.to_disk,
                bytes: p.bytes,
            })
            .collect(),
    }))
}

async fn rebalance_apply(State(m): Meta, Body(req): Body<ApplyRequest>) -> Reply<RebalanceView> {
    let tolerance = check_tolerance(req.tolerance.unwrap_or(10.0))?;
    m.moves().apply_rebalance(tolerance).map_err(failure)?;
    Ok(rebalance_status(State(m)).await)
}

async fn rebalance_action(State(m): Meta, Path(action): Path<String>) -> Reply<RebalanceView> {
    let action: RebalanceAction = action.parse().map_err(Failure::not_found)?;
    m.moves().rebalance_control(action).map_err(failure)?;
    Ok(rebalance_status(State(m)).await)
}

fn drain_targets(m: &MetaState, req: &DrainRequest) -> Result<Vec<String>, Failure> {
    match (&req.disk, &req.node) {
        (Some(d), None) => Ok(vec![d.clone()]),
        (None, Some(n)) => {
            let disks = m.moves().disks_of_node(n);
            if disks.is_empty() {
                return Err(Failure::not_found(format!("no node {n} with disks")));
            }
            Ok(disks)
        }
        _ => Err(Failure::invalid("give {\"disk\": ID} or {\"node\": ID}")),
    }
}

async fn drain(State(m): Meta, Body(req): Body<DrainRequest>) -> Reply<DrainStarted> {
    let disks = drain_targets(&m, &req)?;
    let moves = m.moves().drain(&disks).map_err(failure)?;
    Ok(Json(DrainStarted {
        disks,
        moves: moves as u64,
    }))
}

async fn undrain(State(m): Meta, Body(req): Body<DrainRequest>) -> Reply<Undrained> {
    let disks = drain_targets(&m, &req)?;
    m.moves().undrain(&disks).map_err(failure)?;
    Ok(Json(Undrained {
        disks,
        undrained: true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoard_admin::axum::http::StatusCode;

    #[test]
    fn meta_errors_map_to_statuses_by_kind() {
        let cases = [
            (MetaError::NoVolume(3), StatusCode::NOT_FOUND),
            (
                MetaError::NotFound("no disk d".into()),
                StatusCode::NOT_FOUND,
            ),
            (MetaError::Invalid("bad".into()), StatusCode::BAD_REQUEST),
            (MetaError::Conflict("running".into()), StatusCode::CONFLICT),
            (MetaError::Full("full".into()), StatusCode::CONFLICT),
            (MetaError::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE),
            (
                MetaError::CreateFailed("no".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                MetaError::Engine("io".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (e, want) in cases {
            let text = e.to_string();
            let f = failure(e);
            assert_eq!(f.status, want, "{text}");
            assert_eq!(f.error.message, text);
        }
    }
}
