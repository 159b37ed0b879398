//! Long operator jobs with progress: verify (and its deep read-back), rebuild-index, backup.

use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use hoard_admin::AdminClient;
use hoard_admin::api::*;
use serde::Serialize;

use crate::config::human_bytes;

/// A progress bar on stderr when it is a terminal; hidden otherwise.
pub fn bar(template: &str) -> indicatif::ProgressBar {
    let pb = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb
}

/// What `--deep` read back.
#[derive(Serialize)]
struct Deep {
    sample_pct: f64,
    read: u64,
    failed: u64,
}

/// `--json` output of verify: the index walk's report, the deep read-back, and every problem.
#[derive(Serialize)]
struct VerifyOutput {
    #[serde(flatten)]
    walk: VerifyView,
    deep: Option<Deep>,
}

/// Reads back a sample of blocks through the client endpoint; problems are appended.
async fn deep_read(
    api: &AdminClient,
    sample: f64,
    ep: &crate::cli::EndpointArg,
    problems: &mut Vec<String>,
) -> anyhow::Result<Deep> {
    let client = hoard_client::Client::connect(&ep.endpoint)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pb = bar("verify blocks [{bar:30}] {pos} read {per_sec} {msg}");
    let (mut read, mut failed) = (0u64, 0u64);
    let mut after = String::new();
    loop {
        let page: SamplePage = api
            .get(&format!(
                "/api/v1/blocks/sample?pct={sample}&after={after}&limit=10000"
            ))
            .await?;
        pb.inc_length(page.hashes.len() as u64);
        let results: Vec<(String, Result<(), String>)> = futures::stream::iter(page.hashes)
            .map(|h| {
                let c = client.clone();
                async move {
                    let r = c
                        .get_raw(&h, 0, 0)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    (h, r)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        for (h, r) in results {
            read += 1;
            pb.inc(1);
            if let Err(e) = r {
                failed += 1;
                problems.push(format!("{h}: read back failed: {e}"));
            }
        }
        match page.next {
            Some(n) => after = n,
            None => break,
        }
    }
    pb.finish_and_clear();
    Ok(Deep {
        sample_pct: sample,
        read,
        failed,
    })
}

pub async fn verify(
    api: &AdminClient,
    json: bool,
    deep: bool,
    sample: f64,
    ep: &crate::cli::EndpointArg,
) -> anyhow::Result<ExitCode> {
    let _: VerifyView = api.post("/api/v1/verify", &()).await?;
    let pb = bar("verify index {spinner} {pos} entries {msg}");
    let mut walk = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let v: VerifyView = api.get("/api/v1/verify").await?;
        pb.set_position(v.entries);
        if !v.running {
            break v;
        }
    };
    pb.finish_and_clear();
    let deep = if deep {
        let d = deep_read(api, sample, ep, &mut walk.problems).await?;
        walk.problems_total += d.failed;
        Some(d)
    } else {
        None
    };
    let (total, cancelled) = (walk.problems_total, walk.cancelled);
    if json {
        let out = VerifyOutput { walk, deep };
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
    } else {
        outln!(
            "verify: {} entries ({} live) in {:.2} s, {:.0} entries/s; {} problem(s){}",
            walk.entries,
            walk.live,
            walk.finished_unix_ms.saturating_sub(walk.started_unix_ms) as f64 / 1000.0,
            walk.entries_per_sec,
            total,
            if walk.cancelled { " (cancelled)" } else { "" }
        )?;
        if let Some(d) = &deep {
            outln!(
                "deep: {} block(s) read back and checked against their hash, {} failed",
                d.read,
                d.failed
            )?;
        }
        for p in &walk.problems {
            outln!("problem: {p}")?;
        }
    }
    Ok(if total == 0 && !cancelled {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn rebuild_index(api: &AdminClient, json: bool) -> anyhow::Result<ExitCode> {
    let _: IndexRebuildView = api.post("/api/v1/rebuild-index", &()).await?;
    let pb = bar("rebuild-index [{bar:30}] {pos}/{len} volumes {msg}");
    let v = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let v: IndexRebuildView = api.get("/api/v1/rebuild-index").await?;
        pb.set_length(v.volumes_total);
        pb.set_position(v.volumes_done);
        pb.set_message(format!("{} blocks accepted", v.blocks_accepted));
        if !v.running {
            break v;
        }
    };
    pb.finish_and_clear();
    if json {
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        outln!(
            "rebuild-index: {} of {} volumes restored; blocks: {} accepted, {} already known, {} rejected (of {} records)",
            v.volumes_restored,
            v.volumes_total,
            v.blocks_accepted,
            v.blocks_already_known,
            v.blocks_rejected,
            v.records_seen,
        )?;
        if !v.cluster_id_adopted.is_empty() {
            outln!(
                "the metadata tier took the disks' cluster id {}",
                v.cluster_id_adopted
            )?;
        }
        for e in &v.errors {
            outln!("problem: {e}")?;
        }
    }
    Ok(if v.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn backup(api: &AdminClient, json: bool, name: &str) -> anyhow::Result<ExitCode> {
    let b: BackupDone = api
        .post("/api/v1/backup", &BackupRequest { name: name.into() })
        .await?;
    super::show(json, &b, |b| {
        format!(
            "backup of the metadata tier in {} ({}, {:.2} s)\n",
            b.dir,
            human_bytes(b.bytes),
            b.seconds
        )
    })?;
    Ok(ExitCode::SUCCESS)
}
