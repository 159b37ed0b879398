//! The cell's tables (status, nodes, disks, volumes) and the repair and scrub knobs.

use std::process::ExitCode;

use anyhow::bail;
use hoard_admin::AdminClient;
use hoard_admin::api::*;

use super::{AdminCmd, RepairCmd, ScrubCmd, render, show};

pub async fn run(api: &AdminClient, json: bool, cmd: &AdminCmd) -> anyhow::Result<ExitCode> {
    let now = hoard_types::now_ms();
    match cmd {
        AdminCmd::Status => {
            let s: CellStatus = api.get("/api/v1/status").await?;
            show(json, &s, |s| render::cell(s, now))?;
        }
        AdminCmd::Nodes => {
            let n: Vec<NodeView> = api.get("/api/v1/nodes").await?;
            show(json, &n, |n| render::nodes(n, now))?;
        }
        AdminCmd::Disks => {
            let d: Vec<DiskView> = api.get("/api/v1/disks").await?;
            show(json, &d, |d| render::disks(d))?;
        }
        _ => {
            let v: Vec<VolumeView> = api.get("/api/v1/volumes").await?;
            show(json, &v, |v| render::volumes(v))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The request a repair command makes: path and body (`None` for a GET).
pub fn repair_request(cmd: &RepairCmd) -> anyhow::Result<(&'static str, Option<RepairThrottle>)> {
    Ok(match cmd {
        RepairCmd::Status => ("/api/v1/repair", None),
        RepairCmd::Pause => ("/api/v1/repair/pause", Some(RepairThrottle::default())),
        RepairCmd::Resume => ("/api/v1/repair/resume", Some(RepairThrottle::default())),
        RepairCmd::Throttle {
            bytes_per_sec,
            concurrency,
        } => {
            if bytes_per_sec.is_none() && concurrency.is_none() {
                bail!("give --bytes-per-sec and/or --concurrency");
            }
            (
                "/api/v1/repair/throttle",
                Some(RepairThrottle {
                    bytes_per_sec: *bytes_per_sec,
                    concurrency: *concurrency,
                }),
            )
        }
    })
}

pub async fn repair(api: &AdminClient, json: bool, cmd: &RepairCmd) -> anyhow::Result<ExitCode> {
    let r: RepairStatus = match repair_request(cmd)? {
        (path, None) => api.get(path).await?,
        (path, Some(body)) => api.post(path, &body).await?,
    };
    show(json, &r, render::repair)?;
    Ok(ExitCode::SUCCESS)
}

/// The request a scrub command makes: path and body (`None` for a GET).
pub fn scrub_request(cmd: &ScrubCmd) -> anyhow::Result<(&'static str, Option<ScrubThrottle>)> {
    Ok(match cmd {
        ScrubCmd::Status => ("/api/v1/scrub", None),
        ScrubCmd::Start => ("/api/v1/scrub/start", Some(ScrubThrottle::default())),
        ScrubCmd::Pause => ("/api/v1/scrub/pause", Some(ScrubThrottle::default())),
        ScrubCmd::Resume => ("/api/v1/scrub/resume", Some(ScrubThrottle::default())),
        ScrubCmd::Throttle {
            bytes_per_sec,
            interval,
        } => {
            if bytes_per_sec.is_none() && interval.is_none() {
                bail!("give --bytes-per-sec and/or --interval");
            }
            (
                "/api/v1/scrub/throttle",
                Some(ScrubThrottle {
                    bytes_per_sec: *bytes_per_sec,
                    interval_secs: interval.map(|i| i.as_secs()),
                }),
            )
        }
    })
}

pub async fn scrub(api: &AdminClient, json: bool, cmd: &ScrubCmd) -> anyhow::Result<ExitCode> {
    let s: ScrubView = match scrub_request(cmd)? {
        (path, None) => api.get(path).await?,
        (path, Some(body)) => api.post(path, &body).await?,
    };
    show(json, &s, render::scrub)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn declare_empty(api: &AdminClient, json: bool, disk: &str) -> anyhow::Result<ExitCode> {
    let d: DeclaredEmpty = api
        .post(&format!("/api/v1/disks/{disk}/declare-empty"), &())
        .await?;
    show(json, &d, |d| format!("disk {} declared empty\n", d.disk))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_need_a_knob_and_send_only_what_was_given() {
        assert!(
            repair_request(&RepairCmd::Throttle {
                bytes_per_sec: None,
                concurrency: None
            })
            .is_err()
        );
        let (path, body) = repair_request(&RepairCmd::Throttle {
            bytes_per_sec: None,
            concurrency: Some(3),
        })
        .unwrap();
        assert_eq!(path, "/api/v1/repair/throttle");
        assert_eq!(
            serde_json::to_value(body.unwrap()).unwrap(),
            serde_json::json!({"bytes_per_sec": null, "concurrency": 3})
        );
        assert!(
            scrub_request(&ScrubCmd::Throttle {
                bytes_per_sec: None,
                interval: None
            })
            .is_err()
        );
        let (_, body) = scrub_request(&ScrubCmd::Throttle {
            bytes_per_sec: None,
            interval: Some(std::time::Duration::from_secs(14 * 86_400)),
        })
        .unwrap();
        assert_eq!(body.unwrap().interval_secs, Some(1_209_600));
        assert_eq!(
            scrub_request(&ScrubCmd::Status).unwrap(),
            ("/api/v1/scrub", None)
        );
    }
}
