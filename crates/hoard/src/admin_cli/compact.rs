//! `hoard admin compact`: status, start (with `--wait`), pause, resume, cancel, throttle; and
//! `hoard admin trash`: status, inspect, resume.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use hoard_admin::AdminClient;
use hoard_admin::api::*;

use super::jobs::bar;
use super::{CompactCmd, TrashCmd, render, show};

/// The request a command makes: its path, and the body of a POST (`None`: a GET).
fn request(cmd: &CompactCmd) -> anyhow::Result<(&'static str, Option<CompactionThrottle>)> {
    Ok(match cmd {
        CompactCmd::Status => ("/api/v1/compaction", None),
        CompactCmd::Start { .. } => ("/api/v1/compaction/start", Some(Default::default())),
        CompactCmd::Pause => ("/api/v1/compaction/pause", Some(Default::default())),
        CompactCmd::Resume => ("/api/v1/compaction/resume", Some(Default::default())),
        CompactCmd::Cancel => ("/api/v1/compaction/cancel", Some(Default::default())),
        CompactCmd::Throttle {
            bytes_per_sec,
            concurrency,
            threshold,
        } => {
            if bytes_per_sec.is_none() && concurrency.is_none() && threshold.is_none() {
                bail!("throttle needs --bytes-per-sec, --concurrency or --threshold");
            }
            (
                "/api/v1/compaction/throttle",
                Some(CompactionThrottle {
                    bytes_per_sec: *bytes_per_sec,
                    concurrency: *concurrency,
                    threshold: *threshold,
                }),
            )
        }
    })
}

/// Waits until compaction has nothing left: no donor after a planning round that found none.
async fn wait(api: &AdminClient, mut c: CompactionView) -> anyhow::Result<CompactionView> {
    let pb = bar("compact [{bar:30}] {bytes}/{total_bytes} {msg}");
    let mut idle_polls = 0;
    loop {
        pb.set_length(c.donor_total_bytes);
        pb.set_position(c.donor_moved_bytes);
        pb.set_message(format!(
            "volume {}, {} compacted",
            c.donor, c.volumes_compacted_total
        ));
        if c.paused {
            pb.finish_and_clear();
            bail!("compaction is paused: resume it to wait for it");
        }
        // A start asks for a planning round at the compactor's next request (every 2 s when idle):
        // no donor for a few polls in a row means none is left over the threshold.
        idle_polls = if c.donor == 0 { idle_polls + 1 } else { 0 };
        if idle_polls >= 12 {
            pb.finish_and_clear();
            return Ok(c);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        c = api.get("/api/v1/compaction").await?;
    }
}

pub async fn run(api: &AdminClient, json: bool, cmd: &CompactCmd) -> anyhow::Result<ExitCode> {
    let mut c: CompactionView = match request(cmd)? {
        (path, None) => api.get(path).await?,
        (path, Some(body)) => api.post(path, &body).await?,
    };
    if let CompactCmd::Start { wait: true } = cmd {
        c = wait(api, c).await?;
    }
    show(json, &c, render::compaction)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn trash(api: &AdminClient, json: bool, cmd: &TrashCmd) -> anyhow::Result<ExitCode> {
    let t: TrashView = match cmd {
        TrashCmd::Status => api.get("/api/v1/trash").await?,
        TrashCmd::Inspect => api.post("/api/v1/trash/inspect", &()).await?,
        TrashCmd::Resume => api.post("/api/v1/trash/resume", &()).await?,
    };
    show(json, &t, render::trash)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_needs_a_knob_and_sends_only_what_was_given() {
        assert!(
            request(&CompactCmd::Throttle {
                bytes_per_sec: None,
                concurrency: None,
                threshold: None
            })
            .is_err()
        );
        let (path, body) = request(&CompactCmd::Throttle {
            bytes_per_sec: None,
            concurrency: None,
            threshold: Some(0.5),
        })
        .unwrap();
        assert_eq!(path, "/api/v1/compaction/throttle");
        assert_eq!(
            serde_json::to_value(body.unwrap()).unwrap(),
            serde_json::json!({"bytes_per_sec": null, "concurrency": null, "threshold": 0.5})
        );
        assert_eq!(
            request(&CompactCmd::Status).unwrap(),
            ("/api/v1/compaction", None)
        );
    }
}
