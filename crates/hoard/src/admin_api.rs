//! The operator API of a process that runs meta: JSON over HTTP under `/api/v1`, beside `/metrics`,
//! `/healthz`, `/readyz` and `/status`. `hoard admin` is a client of it.

use std::sync::Arc;

use hoard_admin::axum::extract::{Path, Query, State};
use hoard_admin::axum::http::StatusCode;
use hoard_admin::axum::routing::{get, post};
use hoard_admin::axum::{Json, Router};
use hoard_meta::MetaState;
use hoard_meta::scrub::ScrubChange;
use hoard_proto::v1;
use hoard_types::state::MoveState;
use serde_json::{Value, json};

use crate::admin_json;

type ApiResult = Result<Json<Value>, (StatusCode, String)>;

fn bad(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, e.to_string())
}

/// An optional non-negative integer field of a JSON body; absent or null is `None`.
fn optional_u64(body: &Value, k: &str) -> Result<Option<u64>, (StatusCode, String)> {
    match body.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(format!("{k} must be a non-negative integer"))),
    }
}

pub fn routes(meta: Arc<MetaState>) -> Router {
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
        .route("/api/v1/backup", post(backup))
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
        .with_state(meta)
}

/// The status page for people: one self-contained page that polls the API.
async fn status_page() -> hoard_admin::axum::response::Html<&'static str> {
    hoard_admin::axum::response::Html(include_str!("status.html"))
}

async fn events() -> ApiResult {
    Ok(Json(json!(crate::telemetry::recent_events())))
}

async fn status(State(m): State<Arc<MetaState>>) -> ApiResult {
    let s = m.cluster_status();
    let r = m.repair().repair_status();
    let mut v = admin_json::cluster(&s);
    v["repair"] = admin_json::repair(&r);
    v["scrub"] = admin_json::scrub(&m.scrub().knobs(), &m.scrub().status());
    Ok(Json(v))
}

async fn nodes(State(m): State<Arc<MetaState>>) -> ApiResult {
    let s = m.cluster_status();
    Ok(Json(json!(
        s.nodes.iter().map(admin_json::node).collect::<Vec<_>>()
    )))
}

async fn disks(State(m): State<Arc<MetaState>>) -> ApiResult {
    let s = m.cluster_status();
    Ok(Json(json!(
        s.disks.iter().map(admin_json::disk).collect::<Vec<_>>()
    )))
}

async fn volumes(State(m): State<Arc<MetaState>>) -> ApiResult {
    let s = m.cluster_status();
    Ok(Json(json!(
        s.volumes.iter().map(admin_json::volume).collect::<Vec<_>>()
    )))
}

async fn repair_status(State(m): State<Arc<MetaState>>) -> ApiResult {
    Ok(Json(admin_json::repair(&m.repair().repair_status())))
}

fn set(m: &MetaState, req: v1::SetRepairKnobsRequest) -> ApiResult {
    m.repair().set_knobs(&req).map_err(bad)?;
    Ok(Json(admin_json::repair(&m.repair().repair_status())))
}

async fn repair_pause(State(m): State<Arc<MetaState>>) -> ApiResult {
    set(
        &m,
        v1::SetRepairKnobsRequest {
            paused: Some(true),
            ..Default::default()
        },
    )
}

async fn repair_resume(State(m): State<Arc<MetaState>>) -> ApiResult {
    set(
        &m,
        v1::SetRepairKnobsRequest {
            paused: Some(false),
            ..Default::default()
        },
    )
}

async fn repair_throttle(State(m): State<Arc<MetaState>>, Json(body): Json<Value>) -> ApiResult {
    let field = |k: &str| optional_u64(&body, k);
    let concurrency = match field("concurrency")? {
        Some(c) if c == 0 || c > 1024 => return Err(bad("concurrency must be 1 to 1024")),
        c => c.map(|c| c as u32),
    };
    set(
        &m,
        v1::SetRepairKnobsRequest {
            paused: None,
            bytes_per_sec: field("bytes_per_sec")?,
            concurrency,
        },
    )
}

fn scrub_json(m: &MetaState) -> Json<Value> {
    Json(admin_json::scrub(&m.scrub().knobs(), &m.scrub().status()))
}

async fn scrub_status(State(m): State<Arc<MetaState>>) -> ApiResult {
    Ok(scrub_json(&m))
}

fn scrub_set(m: &MetaState, c: ScrubChange) -> ApiResult {
    m.scrub().set(c).map_err(bad)?;
    Ok(scrub_json(m))
}

async fn scrub_start(State(m): State<Arc<MetaState>>) -> ApiResult {
    scrub_set(
        &m,
        ScrubChange {
            start: true,
            ..Default::default()
        },
    )
}

async fn scrub_pause(State(m): State<Arc<MetaState>>) -> ApiResult {
    scrub_set(
        &m,
        ScrubChange {
            paused: Some(true),
            ..Default::default()
        },
    )
}

async fn scrub_resume(State(m): State<Arc<MetaState>>) -> ApiResult {
    scrub_set(
        &m,
        ScrubChange {
            paused: Some(false),
            ..Default::default()
        },
    )
}

async fn scrub_throttle(State(m): State<Arc<MetaState>>, Json(body): Json<Value>) -> ApiResult {
    let field = |k: &str| optional_u64(&body, k);
    scrub_set(
        &m,
        ScrubChange {
            bytes_per_sec: field("bytes_per_sec")?,
            interval_secs: field("interval_secs")?,
            ..Default::default()
        },
    )
}

fn index_json(m: &MetaState) -> Json<Value> {
    let s = m.index_rebuild().report();
    Json(json!({
        "running": s.running,
        "started_unix_ms": s.started_unix_ms,
        "finished_unix_ms": s.finished_unix_ms,
        "cluster_id_adopted": s.cluster_id_adopted,
        "volumes_total": s.volumes_total,
        "volumes_done": s.volumes_done,
        "volumes_restored": s.volumes_restored,
        "records_seen": s.records_seen,
        "blocks_accepted": s.blocks_accepted,
        "blocks_already_known": s.blocks_already_known,
        "blocks_rejected": s.blocks_rejected,
        "errors": s.errors,
    }))
}

async fn index_status(State(m): State<Arc<MetaState>>) -> ApiResult {
    Ok(index_json(&m))
}

async fn index_start(State(m): State<Arc<MetaState>>) -> ApiResult {
    m.index_rebuild().start().map(|_| ()).map_err(bad)?;
    Ok(index_json(&m))
}

async fn declare_empty(State(m): State<Arc<MetaState>>, Path(id): Path<String>) -> ApiResult {
    m.nodes().declare_disk_empty(&id).map_err(bad)?;
    Ok(Json(json!({ "disk": id, "declared_empty": true })))
}

fn verify_json(m: &MetaState) -> Json<Value> {
    let r = m.verify().report();
    Json(json!({
        "running": r.running,
        "started_unix_ms": r.started_unix_ms,
        "finished_unix_ms": r.finished_unix_ms,
        "entries": r.entries,
        "live": r.live,
        "entries_per_sec": r.entries_per_sec,
        "problems_total": r.problems_total,
        "by_kind": r.by_kind,
        "problems": r.problems,
    }))
}

async fn verify_status(State(m): State<Arc<MetaState>>) -> ApiResult {
    Ok(verify_json(&m))
}

async fn verify_start(State(m): State<Arc<MetaState>>) -> ApiResult {
    m.verify().start().map(|_| ()).map_err(bad)?;
    Ok(verify_json(&m))
}

#[derive(serde::Deserialize)]
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

async fn sample_blocks(State(m): State<Arc<MetaState>>, Query(q): Query<SampleQuery>) -> ApiResult {
    let after: Vec<u8> = if q.after.is_empty() {
        Vec::new()
    } else {
        q.after
            .parse::<hoard_types::BlockHash>()
            .map_err(bad)?
            .as_bytes()
            .to_vec()
    };
    let (hashes, more) = tokio::task::spawn_blocking(move || {
        m.verify()
            .sample_blocks(q.pct, &after, q.limit.min(100_000))
    })
    .await
    .map_err(bad)?
    .map_err(bad)?;
    let hex: Vec<String> = hashes
        .iter()
        .map(|h| hoard_types::BlockHash::from_bytes(*h).to_hex())
        .collect();
    Ok(Json(
        json!({ "next": if more { hex.last().cloned() } else { None }, "hashes": hex }),
    ))
}

/// A consistent copy of the metadata tier (a RocksDB checkpoint) into a new directory on meta's host.
async fn backup(State(m): State<Arc<MetaState>>, Json(body): Json<Value>) -> ApiResult {
    let dir = body["dir"]
        .as_str()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| bad("give the backup directory as {\"dir\": PATH}"))?
        .to_string();
    let path = std::path::PathBuf::from(&dir);
    if path.exists() {
        return Err(bad(format!(
            "{dir} exists already; a backup goes into a new directory"
        )));
    }
    let started = std::time::Instant::now();
    let p = path.clone();
    tokio::task::spawn_blocking(move || m.engine().checkpoint(&p))
        .await
        .map_err(bad)?
        .map_err(bad)?;
    let bytes = crate::admin_json::dir_bytes(&path);
    Ok(Json(
        json!({ "dir": dir, "bytes": bytes, "seconds": started.elapsed().as_secs_f64() }),
    ))
}

fn rebalance_json(m: &MetaState) -> Json<Value> {
    let (job, moves, drains) = m.moves().moves();
    let mut by_state = std::collections::BTreeMap::<String, u64>::new();
    let (mut done, mut total) = (0u64, 0u64);
    let state_of = |t: &hoard_proto::v1::MoveTask| t.state.parse::<MoveState>().ok();
    for t in &moves {
        *by_state.entry(t.state.clone()).or_default() += 1;
        match state_of(t) {
            Some(MoveState::Dropped) => {}
            Some(MoveState::Done) => {
                total += t.bytes;
                done += t.bytes;
            }
            _ => {
                total += t.bytes;
                done += t.done_bytes;
            }
        }
    }
    Json(json!({
        "state": job.state,
        "paused": job.paused,
        "tolerance_pct": job.tolerance_pct,
        "moves_by_state": by_state,
        "bytes_done": done,
        "bytes_total": total,
        "moves": moves
            .iter()
            .filter(|t| !matches!(state_of(t), Some(MoveState::Done | MoveState::Dropped)))
            .map(admin_json::move_task)
            .collect::<Vec<_>>(),
        "drains": drains.iter().map(|(d, drained, left)| json!({"disk": d, "drained": drained, "members_left": left})).collect::<Vec<_>>(),
    }))
}

async fn rebalance_status(State(m): State<Arc<MetaState>>) -> ApiResult {
    Ok(rebalance_json(&m))
}

#[derive(serde::Deserialize)]
struct Tolerance {
    #[serde(default = "ten")]
    tolerance: f64,
}

fn ten() -> f64 {
    10.0
}

async fn rebalance_plan(State(m): State<Arc<MetaState>>, Query(q): Query<Tolerance>) -> ApiResult {
    if !(0.0..=100.0).contains(&q.tolerance) {
        return Err(bad("tolerance must be 0 to 100 (percentage points)"));
    }
    let plan = m.moves().plan_rebalance(q.tolerance);
    Ok(Json(json!({
        "tolerance_pct": q.tolerance,
        "bytes": plan.iter().map(|p| p.bytes).sum::<u64>(),
        "moves": plan.iter().map(|p| json!({
            "volume": p.volume, "member": p.member, "from_disk": p.from_disk,
            "to_disk": p.to_disk, "bytes": p.bytes,
        })).collect::<Vec<_>>(),
    })))
}

async fn rebalance_apply(State(m): State<Arc<MetaState>>, body: Option<Json<Value>>) -> ApiResult {
    let tol = body
        .and_then(|Json(b)| b["tolerance"].as_f64())
        .unwrap_or(10.0);
    if !(0.0..=100.0).contains(&tol) {
        return Err(bad("tolerance must be 0 to 100 (percentage points)"));
    }
    m.moves().apply_rebalance(tol).map_err(bad)?;
    Ok(rebalance_json(&m))
}

async fn rebalance_action(
    State(m): State<Arc<MetaState>>,
    Path(action): Path<String>,
) -> ApiResult {
    let action: hoard_types::state::RebalanceAction = action.parse().map_err(bad)?;
    m.moves().rebalance_control(action).map_err(bad)?;
    Ok(rebalance_json(&m))
}

fn drain_targets(m: &MetaState, body: &Value) -> Result<Vec<String>, (StatusCode, String)> {
    if let Some(d) = body["disk"].as_str() {
        return Ok(vec![d.to_string()]);
    }
    if let Some(n) = body["node"].as_str() {
        let disks = m.moves().disks_of_node(n);
        if disks.is_empty() {
            return Err(bad(format!("no node {n} with disks")));
        }
        return Ok(disks);
    }
    Err(bad("give {\"disk\": ID} or {\"node\": ID}"))
}

async fn drain(State(m): State<Arc<MetaState>>, Json(body): Json<Value>) -> ApiResult {
    let disks = drain_targets(&m, &body)?;
    let n = m.moves().drain(&disks).map_err(bad)?;
    Ok(Json(json!({ "disks": disks, "moves": n })))
}

async fn undrain(State(m): State<Arc<MetaState>>, Json(body): Json<Value>) -> ApiResult {
    let disks = drain_targets(&m, &body)?;
    m.moves().undrain(&disks).map_err(bad)?;
    Ok(Json(json!({ "disks": disks, "undrained": true })))
}
