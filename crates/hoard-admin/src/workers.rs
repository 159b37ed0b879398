//! `/api/v1/workers`: the background jobs of the process (every role's), listed and controlled.

use axum::Json;
use axum::extract::Path;
use hoard_runtime::{ControlError, Registry};

use crate::api::{Failure, Reply, WorkerRequest, WorkerView};
use crate::extract::Body;

pub async fn list() -> Json<Vec<WorkerView>> {
    Json(
        Registry::global()
            .list()
            .into_iter()
            .map(WorkerView::from)
            .collect(),
    )
}

fn failure(e: ControlError) -> Failure {
    match e {
        ControlError::NoSuchWorker(_) => Failure::not_found(e),
        ControlError::Running(_) | ControlError::NoThrottle(_) => Failure::conflict(e),
    }
}

/// `pause`, `resume`, `cancel` or `throttle` the worker named in the body, or every worker under it.
pub async fn control(
    Path(action): Path<String>,
    Body(req): Body<WorkerRequest>,
) -> Reply<Vec<WorkerView>> {
    if req.name.is_empty() {
        return Err(Failure::invalid("give the worker as {\"name\": NAME}"));
    }
    if (action == "throttle") != req.bytes_per_sec.is_some() {
        return Err(Failure::invalid(
            "bytes_per_sec goes with throttle, and only with throttle",
        ));
    }
    if !["pause", "resume", "cancel", "throttle"].contains(&action.as_str()) {
        return Err(Failure::not_found(format!(
            "no worker action {action:?} (pause, resume, cancel or throttle)"
        )));
    }
    let handles = Registry::global().matching(&req.name).map_err(failure)?;
    // All or nothing: a throttle is set only when every worker named has one.
    if action == "throttle"
        && let Some(h) = handles
            .iter()
            .find(|h| h.info().throttle_bytes_per_sec.is_none())
    {
        return Err(failure(ControlError::NoThrottle(h.info().name)));
    }
    for h in &handles {
        match action.as_str() {
            "pause" => h.pause(),
            "resume" => h.resume(),
            "cancel" => h.cancel(),
            _ => {
                h.set_rate(req.bytes_per_sec.unwrap_or(0));
            }
        }
        tracing::info!(worker = %h.info().name, %action, "operator command");
    }
    // Phases follow the command at the worker's next step; the answer shows the command taken.
    Ok(Json(
        handles.iter().map(|h| WorkerView::from(h.info())).collect(),
    ))
}
