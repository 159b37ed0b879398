//! Rebalance, drain and undrain, with `--wait` progress over the moves.

use std::process::ExitCode;
use std::time::Duration;

use hoard_admin::AdminClient;
use hoard_admin::api::*;

use super::jobs::bar;
use super::{RebalanceCmd, render, show};

/// Whether the moves of `reason` (and, for drains, the drains) are all finished.
pub fn settled(v: &RebalanceView, reason: &str) -> (usize, bool) {
    let open = v
        .moves
        .iter()
        .filter(|m| m.reason == reason && (m.state == "pending" || m.state == "running"))
        .count();
    let drains_left = reason == "drain" && v.drains.iter().any(|d| !d.drained);
    (open, open == 0 && !drains_left)
}

/// Waits until no move of `reason` is pending or running, with a progress bar over bytes.
async fn wait_moves(api: &AdminClient, reason: &str) -> anyhow::Result<RebalanceView> {
    let pb = bar("moves [{bar:30}] {bytes}/{total_bytes} {msg}");
    loop {
        let v: RebalanceView = api.get("/api/v1/rebalance").await?;
        pb.set_length(v.bytes_total);
        pb.set_position(v.bytes_done);
        let (open, done) = settled(&v, reason);
        pb.set_message(format!("{open} move(s) left"));
        if done {
            pb.finish_and_clear();
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn rebalance(
    api: &AdminClient,
    json: bool,
    cmd: &RebalanceCmd,
) -> anyhow::Result<ExitCode> {
    let v: RebalanceView = match cmd {
        RebalanceCmd::Plan { tolerance } => {
            let p: RebalancePlan = api
                .get(&format!("/api/v1/rebalance/plan?tolerance={tolerance}"))
                .await?;
            show(json, &p, render::plan)?;
            return Ok(ExitCode::SUCCESS);
        }
        RebalanceCmd::Apply { tolerance, wait } => {
            let v = api
                .post(
                    "/api/v1/rebalance/apply",
                    &ApplyRequest {
                        tolerance: Some(*tolerance),
                    },
                )
                .await?;
            if *wait {
                wait_moves(api, "rebalance").await?
            } else {
                v
            }
        }
        RebalanceCmd::Status => api.get("/api/v1/rebalance").await?,
        RebalanceCmd::Pause => api.post("/api/v1/rebalance/pause", &()).await?,
        RebalanceCmd::Resume => api.post("/api/v1/rebalance/resume", &()).await?,
        RebalanceCmd::Cancel => api.post("/api/v1/rebalance/cancel", &()).await?,
    };
    show(json, &v, render::rebalance)?;
    Ok(ExitCode::SUCCESS)
}

/// The body naming a disk or a node.
pub fn target(what: &str, id: &str) -> DrainRequest {
    if what == "node" {
        DrainRequest {
            node: Some(id.into()),
            ..Default::default()
        }
    } else {
        DrainRequest {
            disk: Some(id.into()),
            ..Default::default()
        }
    }
}

pub async fn drain(
    api: &AdminClient,
    json: bool,
    what: &str,
    id: &str,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let started: DrainStarted = api.post("/api/v1/drain", &target(what, id)).await?;
    if !json {
        outln!(
            "draining {what} {id}: {} member move(s) planned",
            started.moves
        )?;
    }
    if wait {
        wait_moves(api, "drain").await?;
        if !json {
            outln!("{what} {id} drained: safe to pull")?;
        }
    }
    if json {
        outln!("{}", serde_json::to_string(&started)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn undrain(
    api: &AdminClient,
    json: bool,
    what: &str,
    id: &str,
) -> anyhow::Result<ExitCode> {
    let u: Undrained = api.post("/api/v1/undrain", &target(what, id)).await?;
    show(json, &u, |_| format!("{what} {id} takes members again\n"))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(reason: &str, state: &str) -> MoveView {
        MoveView {
            id: 1,
            volume: 1,
            member: 0,
            from_disk: "a".into(),
            to_disk: "b".into(),
            bytes: 10,
            state: state.into(),
            reason: reason.into(),
            done_bytes: 0,
            error: String::new(),
        }
    }

    fn view(moves: Vec<MoveView>, drained: bool) -> RebalanceView {
        RebalanceView {
            state: "running".into(),
            paused: false,
            tolerance_pct: 10.0,
            moves_by_state: Default::default(),
            bytes_done: 0,
            bytes_total: 0,
            moves,
            drains: vec![DrainView {
                disk: "a".into(),
                drained,
                members_left: u32::from(!drained),
            }],
        }
    }

    #[test]
    fn a_drain_waits_for_its_moves_and_for_the_disk_to_be_drained() {
        // A rebalance move in flight does not hold up a drain's wait, and the other way round.
        assert_eq!(
            settled(&view(vec![mv("rebalance", "running")], true), "drain"),
            (0, true)
        );
        assert_eq!(
            settled(&view(vec![mv("drain", "pending")], true), "drain"),
            (1, false)
        );
        assert_eq!(
            settled(&view(vec![mv("drain", "failed")], true), "drain"),
            (0, true)
        );
        // No moves left, but meta has not marked the disk drained yet.
        assert_eq!(settled(&view(vec![], false), "drain"), (0, false));
        assert_eq!(settled(&view(vec![], false), "rebalance"), (0, true));
    }

    #[test]
    fn drain_targets_name_a_disk_or_a_node() {
        assert_eq!(
            serde_json::to_value(target("node", "vol-1")).unwrap(),
            serde_json::json!({"disk": null, "node": "vol-1"})
        );
        assert_eq!(target("disk", "d-1").disk.as_deref(), Some("d-1"));
    }
}
