//! `hoard admin`: operator commands over the admin HTTP API. Tables by default, JSON with `--json`.

use std::process::ExitCode;

use anyhow::{anyhow, bail};
use futures::StreamExt;
use hoard_admin::http_json;
use serde_json::Value;

use crate::config::human_bytes;

#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// The admin HTTP address of the process running meta (`hoard dev --admin`, or meta's `[admin]`).
    #[arg(
        long,
        env = "HOARD_ADMIN",
        default_value = "http://127.0.0.1:7780",
        global = true
    )]
    pub admin: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: AdminCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum AdminCmd {
    /// The cell at a glance: nodes, disks, volumes by state, repair.
    Status,
    /// Volume servers and their heartbeats.
    Nodes,
    /// Disks: fill, state, members.
    Disks,
    /// Volumes: state, members, live bytes.
    Volumes,
    /// The repair daemon's queue and knobs.
    Repair {
        #[command(subcommand)]
        cmd: RepairCmd,
    },
    /// Walk the block index: every block's volume has its members in service at the right generation.
    Verify {
        /// Also read a sample of blocks through the client endpoint and check their BLAKE3.
        #[arg(long)]
        deep: bool,
        /// Share of blocks read with --deep, in percent.
        #[arg(long, default_value_t = 100.0)]
        sample: f64,
        #[command(flatten)]
        ep: crate::cli::EndpointArg,
    },
    /// Take a consistent copy of the metadata tier into DIR (a new directory on meta's host).
    Backup { dir: String },
    /// Rebuild the block index and the volume table from the disks, after the metadata tier was lost.
    RebuildIndex,
    /// Let a held disk (labelled for another cluster, or holding extents meta does not know) take
    /// new members. What it held is abandoned.
    DeclareEmpty { disk: String },
    /// Even out disk fill: plan, apply, status, pause, resume, cancel.
    Rebalance {
        #[command(subcommand)]
        cmd: RebalanceCmd,
    },
    /// Move every member off a disk or a node, then mark it drained (safe to pull).
    Drain {
        /// `disk` or `node`.
        #[arg(value_parser = ["disk", "node"])]
        what: String,
        id: String,
        /// Wait until drained, with progress.
        #[arg(long)]
        wait: bool,
    },
    /// Let a draining disk or node take members again.
    Undrain {
        #[arg(value_parser = ["disk", "node"])]
        what: String,
        id: String,
    },
    /// Disk scrubbing: every fragment read back and checked on a schedule.
    Scrub {
        #[command(subcommand)]
        cmd: ScrubCmd,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum RebalanceCmd {
    /// Print the moves that bring every disk within the tolerance of the mean fill.
    Plan {
        /// Percentage points around the mean fill.
        #[arg(long, default_value_t = 10.0)]
        tolerance: f64,
    },
    /// Record the plan's moves and run them (throttled with repair's knobs).
    Apply {
        #[arg(long, default_value_t = 10.0)]
        tolerance: f64,
        /// Wait until every move is done, with progress.
        #[arg(long)]
        wait: bool,
    },
    /// Moves by state, bytes done and total.
    Status,
    Pause,
    Resume,
    /// Drop the moves not started yet.
    Cancel,
}

#[derive(clap::Subcommand, Debug)]
pub enum ScrubCmd {
    /// Per disk: state, progress, corrupt ranges found, age of the last full pass.
    Status,
    /// Start a pass on every disk now.
    Start,
    /// Pause scrubbing (passes resume from their checkpoints).
    Pause,
    /// Resume scrubbing.
    Resume,
    /// Change the pace and the schedule.
    Throttle {
        /// Bytes per second per disk (0: unthrottled).
        #[arg(long)]
        bytes_per_sec: Option<u64>,
        /// Time between full passes of a disk, e.g. 14d.
        #[arg(long, value_parser = humantime::parse_duration)]
        interval: Option<std::time::Duration>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum RepairCmd {
    /// Queue by priority, bytes done and total, rate, ETA.
    Status,
    /// Stop starting and stepping rebuilds (running steps finish).
    Pause,
    /// Resume rebuilding.
    Resume,
    /// Change the live throttle.
    Throttle {
        /// Rebuilt bytes per second across the cell (0: unthrottled).
        #[arg(long)]
        bytes_per_sec: Option<u64>,
        /// Volumes rebuilt at once.
        #[arg(long)]
        concurrency: Option<u32>,
    },
}

/// Prints rows as an aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        outln!("{}", s.join("  ").trim_end())
    };
    line(headers.iter().map(|h| h.to_string()).collect())?;
    for r in rows {
        line(r.clone())?;
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

fn fill_bar(used: u64, cap: u64) -> String {
    if cap == 0 {
        return "-".into();
    }
    let pct = used as f64 * 100.0 / cap as f64;
    let n = ((pct / 10.0).round() as usize).min(10);
    format!("[{}{}] {pct:4.1}%", "#".repeat(n), ".".repeat(10 - n))
}

fn print_disks(v: &Value) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let used = d["used_bytes"].as_u64().unwrap_or(0);
            let cap = d["capacity_bytes"].as_u64().unwrap_or(0);
            vec![
                s(&d["id"]),
                s(&d["node"]),
                s(&d["state"]),
                s(&d["members"]),
                human_bytes(used),
                fill_bar(used, cap),
                human_bytes(d["trash_bytes"].as_u64().unwrap_or(0)),
                s(&d["path"]),
            ]
        })
        .collect();
    table(
        &[
            "DISK", "NODE", "STATE", "MEMBERS", "USED", "FILL", "TRASH", "PATH",
        ],
        &rows,
    )?;
    Ok(())
}

fn print_nodes(v: &Value) -> std::io::Result<()> {
    let now = hoard_types::now_ms();
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let hb = n["last_heartbeat_unix_ms"].as_u64().unwrap_or(0);
            vec![
                s(&n["id"]),
                s(&n["state"]),
                s(&n["address"]),
                format!("{:.1}s ago", now.saturating_sub(hb) as f64 / 1000.0),
                n["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", s(v)))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table(&["NODE", "STATE", "ADDRESS", "HEARTBEAT", "LABELS"], &rows)?;
    Ok(())
}

fn print_volumes(v: &Value) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|vol| {
            let members = vol["members"].as_array().cloned().unwrap_or_default();
            let ok = members.iter().filter(|m| m["state"] == "ok").count();
            vec![
                s(&vol["id"]),
                s(&vol["state"]),
                s(&vol["geometry"]),
                format!("{ok}/{}", members.len()),
                s(&vol["blocks"]),
                human_bytes(vol["bytes"].as_u64().unwrap_or(0)),
                {
                    let v: Vec<String> = vol["violations"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(s)
                        .collect();
                    if v.is_empty() {
                        s(&vol["seal_reason"])
                    } else {
                        format!("PLACEMENT: {}", v.join("; "))
                    }
                },
            ]
        })
        .collect();
    table(
        &[
            "VOLUME",
            "STATE",
            "RS",
            "MEMBERS OK",
            "BLOCKS",
            "BYTES",
            "NOTE",
        ],
        &rows,
    )?;
    Ok(())
}

/// A bytes-per-second throttle as shown to operators; 0 is no throttle.
fn throttle_text(rate: u64) -> String {
    if rate == 0 {
        "none".to_string()
    } else {
        format!("{}/s", human_bytes(rate))
    }
}

fn print_repair(r: &Value) -> std::io::Result<()> {
    let rate = r["bytes_per_sec"].as_u64().unwrap_or(0);
    outln!(
        "repair: {}  throttle {}  concurrency {}  degraded {}  lost {}  rate {}/s  rebuilt {} ({} volumes)",
        if r["paused"].as_bool().unwrap_or(false) {
            "PAUSED"
        } else {
            "running"
        },
        throttle_text(rate),
        s(&r["concurrency"]),
        s(&r["degraded_volumes"]),
        s(&r["lost_volumes"]),
        human_bytes(r["rate_bytes_per_sec"].as_f64().unwrap_or(0.0) as u64),
        human_bytes(r["bytes_rebuilt_total"].as_u64().unwrap_or(0)),
        s(&r["volumes_repaired_total"]),
    )?;
    let rows: Vec<Vec<String>> = r["queue"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let done = t["done_bytes"].as_u64().unwrap_or(0);
            let total = t["total_bytes"].as_u64().unwrap_or(0);
            vec![
                s(&t["volume"]),
                s(&t["priority"]),
                s(&t["state"]),
                format!("{} / {}", human_bytes(done), human_bytes(total)),
                t["eta_seconds"]
                    .as_f64()
                    .map(|e| format!("{e:.0}s"))
                    .unwrap_or_else(|| "-".into()),
                format!("{}s", s(&t["degraded_for_seconds"])),
            ]
        })
        .collect();
    if !rows.is_empty() {
        table(
            &["VOLUME", "LOST", "STATE", "PROGRESS", "ETA", "DEGRADED FOR"],
            &rows,
        )?;
    }
    Ok(())
}

fn print_scrub(v: &Value) -> std::io::Result<()> {
    let rate = v["bytes_per_sec"].as_u64().unwrap_or(0);
    outln!(
        "scrub: {}  throttle {} per disk  interval {}  corrupt ranges found {}",
        if v["paused"].as_bool().unwrap_or(false) {
            "PAUSED"
        } else {
            "on"
        },
        throttle_text(rate),
        humantime::format_duration(std::time::Duration::from_secs(
            v["interval_secs"].as_u64().unwrap_or(0)
        )),
        s(&v["bad_ranges"]),
    )?;
    let rows: Vec<Vec<String>> = v["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let done = d["bytes_done"].as_u64().unwrap_or(0);
            let total = d["bytes_total"].as_u64().unwrap_or(0);
            vec![
                s(&d["disk"]),
                s(&d["node"]),
                s(&d["state"]),
                if total > 0 {
                    format!("{} / {}", human_bytes(done), human_bytes(total))
                } else {
                    "-".into()
                },
                s(&d["bad_ranges"]),
                s(&d["index_damage"]),
                d["pass_age_seconds"]
                    .as_u64()
                    .map(|a| {
                        humantime::format_duration(std::time::Duration::from_secs(a)).to_string()
                    })
                    .unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    table(
        &[
            "DISK",
            "NODE",
            "STATE",
            "PROGRESS",
            "BAD",
            "IDX DAMAGE",
            "LAST PASS",
        ],
        &rows,
    )?;
    Ok(())
}

fn bar(template: &str) -> indicatif::ProgressBar {
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

async fn verify(
    base: &str,
    json: bool,
    deep: bool,
    sample: f64,
    ep: &crate::cli::EndpointArg,
) -> anyhow::Result<ExitCode> {
    http_json(base, "POST", "/api/v1/verify", Some(&Value::Null))
        .await
        .map_err(|e| anyhow!(e))?;
    let pb = bar("verify index {spinner} {pos} entries {msg}");
    let v = loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let v = http_json(base, "GET", "/api/v1/verify", None)
            .await
            .map_err(|e| anyhow!(e))?;
        pb.set_position(v["entries"].as_u64().unwrap_or(0));
        if !v["running"].as_bool().unwrap_or(false) {
            break v;
        }
    };
    pb.finish_and_clear();
    let mut problems: Vec<String> = v["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    let mut total = v["problems_total"].as_u64().unwrap_or(0);
    let mut deep_report = Value::Null;
    if deep {
        let client = hoard_client::Client::connect(&ep.endpoint)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let pb = bar("verify blocks [{bar:30}] {pos} read {per_sec} {msg}");
        let (mut read, mut bad) = (0u64, 0u64);
        let mut after = String::new();
        loop {
            let page = http_json(
                base,
                "GET",
                &format!("/api/v1/blocks/sample?pct={sample}&after={after}&limit=10000"),
                None,
            )
            .await
            .map_err(|e| anyhow!(e))?;
            let hashes: Vec<String> = page["hashes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            pb.inc_length(hashes.len() as u64);
            let results: Vec<(String, Result<(), String>)> = futures::stream::iter(hashes)
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
                    bad += 1;
                    problems.push(format!("{h}: read back failed: {e}"));
                }
            }
            match page["next"].as_str() {
                Some(n) => after = n.to_string(),
                None => break,
            }
        }
        pb.finish_and_clear();
        total += bad;
        deep_report = serde_json::json!({ "sample_pct": sample, "read": read, "failed": bad });
    }
    if json {
        let mut out = v.clone();
        out["deep"] = deep_report;
        out["problems"] = serde_json::json!(problems);
        out["problems_total"] = serde_json::json!(total);
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
    } else {
        outln!(
            "verify: {} entries ({} live) in {:.2} s, {:.0} entries/s; {} problem(s)",
            s(&v["entries"]),
            s(&v["live"]),
            (v["finished_unix_ms"].as_u64().unwrap_or(0) as f64
                - v["started_unix_ms"].as_u64().unwrap_or(0) as f64)
                / 1000.0,
            v["entries_per_sec"].as_f64().unwrap_or(0.0),
            total
        )?;
        if deep {
            outln!(
                "deep: {} block(s) read back and checked against their hash, {} failed",
                s(&deep_report["read"]),
                s(&deep_report["failed"])
            )?;
        }
        for p in &problems {
            outln!("problem: {p}")?;
        }
    }
    Ok(if total == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Waits until no move of `reason` is pending or running, with a progress bar over bytes.
async fn wait_moves(base: &str, reason: &str) -> anyhow::Result<Value> {
    let pb = bar("moves [{bar:30}] {bytes}/{total_bytes} {msg}");
    loop {
        let v = http_json(base, "GET", "/api/v1/rebalance", None)
            .await
            .map_err(|e| anyhow!(e))?;
        pb.set_length(v["bytes_total"].as_u64().unwrap_or(0));
        pb.set_position(v["bytes_done"].as_u64().unwrap_or(0));
        let open = v["moves"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| {
                m["reason"] == reason && (m["state"] == "pending" || m["state"] == "running")
            })
            .count();
        pb.set_message(format!("{open} move(s) left"));
        let drains_left = reason == "drain"
            && v["drains"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d["drained"] == false);
        if open == 0 && !drains_left {
            pb.finish_and_clear();
            return Ok(v);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

fn print_moves(v: &Value) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = v["moves"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            vec![
                s(&m["volume"]),
                s(&m["member"]),
                s(&m["from_disk"]),
                s(&m["to_disk"]),
                human_bytes(m["bytes"].as_u64().unwrap_or(0)),
                m.get("state").map(s).unwrap_or_else(|| "planned".into()),
                m.get("reason").map(s).unwrap_or_else(|| "rebalance".into()),
            ]
        })
        .collect();
    table(
        &["VOLUME", "MEMBER", "FROM", "TO", "BYTES", "STATE", "WHY"],
        &rows,
    )?;
    Ok(())
}

async fn rebalance(base: &str, json: bool, cmd: &RebalanceCmd) -> anyhow::Result<ExitCode> {
    let call = |method: &'static str, path: String, body: Option<Value>| async move {
        http_json(base, method, &path, body.as_ref())
            .await
            .map_err(|e| anyhow!(e))
    };
    let v = match cmd {
        RebalanceCmd::Plan { tolerance } => {
            let v = call(
                "GET",
                format!("/api/v1/rebalance/plan?tolerance={tolerance}"),
                None,
            )
            .await?;
            if !json {
                outln!(
                    "{} move(s), {} to copy, to bring every disk within {tolerance} points of the mean fill",
                    v["moves"].as_array().map(|m| m.len()).unwrap_or(0),
                    human_bytes(v["bytes"].as_u64().unwrap_or(0))
                )?;
                print_moves(&v)?;
            }
            v
        }
        RebalanceCmd::Apply { tolerance, wait } => {
            let v = call(
                "POST",
                "/api/v1/rebalance/apply".into(),
                Some(serde_json::json!({ "tolerance": tolerance })),
            )
            .await?;
            if *wait {
                wait_moves(base, "rebalance").await?
            } else {
                v
            }
        }
        RebalanceCmd::Status => call("GET", "/api/v1/rebalance".into(), None).await?,
        RebalanceCmd::Pause => {
            call("POST", "/api/v1/rebalance/pause".into(), Some(Value::Null)).await?
        }
        RebalanceCmd::Resume => {
            call("POST", "/api/v1/rebalance/resume".into(), Some(Value::Null)).await?
        }
        RebalanceCmd::Cancel => {
            call("POST", "/api/v1/rebalance/cancel".into(), Some(Value::Null)).await?
        }
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else if !matches!(cmd, RebalanceCmd::Plan { .. }) {
        outln!(
            "rebalance: {}{}  moves {}  {} / {} copied",
            s(&v["state"]),
            if v["paused"].as_bool().unwrap_or(false) {
                " (PAUSED)"
            } else {
                ""
            },
            v["moves_by_state"]
                .as_object()
                .map(|m| m
                    .iter()
                    .map(|(k, n)| format!("{k}={n}"))
                    .collect::<Vec<_>>()
                    .join(" "))
                .unwrap_or_default(),
            human_bytes(v["bytes_done"].as_u64().unwrap_or(0)),
            human_bytes(v["bytes_total"].as_u64().unwrap_or(0)),
        )?;
        print_moves(&v)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn rebuild_index(base: &str, json: bool) -> anyhow::Result<ExitCode> {
    http_json(base, "POST", "/api/v1/rebuild-index", Some(&Value::Null))
        .await
        .map_err(|e| anyhow!(e))?;
    let pb = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "rebuild-index [{bar:30}] {pos}/{len} volumes {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let v = loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let v = http_json(base, "GET", "/api/v1/rebuild-index", None)
            .await
            .map_err(|e| anyhow!(e))?;
        pb.set_length(v["volumes_total"].as_u64().unwrap_or(0));
        pb.set_position(v["volumes_done"].as_u64().unwrap_or(0));
        pb.set_message(format!("{} blocks accepted", s(&v["blocks_accepted"])));
        if !v["running"].as_bool().unwrap_or(false) {
            break v;
        }
    };
    pb.finish_and_clear();
    if json {
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        outln!(
            "rebuild-index: {} of {} volumes restored; blocks: {} accepted, {} already known, {} rejected (of {} records)",
            s(&v["volumes_restored"]),
            s(&v["volumes_total"]),
            s(&v["blocks_accepted"]),
            s(&v["blocks_already_known"]),
            s(&v["blocks_rejected"]),
            s(&v["records_seen"]),
        )?;
        if let Some(id) = v["cluster_id_adopted"].as_str().filter(|i| !i.is_empty()) {
            outln!("the metadata tier took the disks' cluster id {id}")?;
        }
        for e in v["errors"].as_array().into_iter().flatten() {
            outln!("problem: {}", s(e))?;
        }
    }
    Ok(if v["errors"].as_array().is_some_and(|e| !e.is_empty()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn run(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let base = args.admin.trim_end_matches('/').to_string();
    match &args.cmd {
        AdminCmd::RebuildIndex => return rebuild_index(&base, args.json).await,
        AdminCmd::Rebalance { cmd } => return rebalance(&base, args.json, cmd).await,
        AdminCmd::Drain { what, id, wait } => {
            let v = http_json(
                &base,
                "POST",
                "/api/v1/drain",
                Some(&serde_json::json!({ what.as_str(): id })),
            )
            .await
            .map_err(|e| anyhow!(e))?;
            if !args.json {
                outln!(
                    "draining {what} {id}: {} member move(s) planned",
                    s(&v["moves"])
                )?;
            }
            if *wait {
                wait_moves(&base, "drain").await?;
                if !args.json {
                    outln!("{what} {id} drained: safe to pull")?;
                }
            }
            if args.json {
                outln!("{v}")?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        AdminCmd::Undrain { what, id } => {
            let v = http_json(
                &base,
                "POST",
                "/api/v1/undrain",
                Some(&serde_json::json!({ what.as_str(): id })),
            )
            .await
            .map_err(|e| anyhow!(e))?;
            outln!(
                "{}",
                if args.json {
                    v.to_string()
                } else {
                    format!("{what} {id} takes members again")
                }
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        AdminCmd::Verify { deep, sample, ep } => {
            return verify(&base, args.json, *deep, *sample, ep).await;
        }
        AdminCmd::Backup { dir } => {
            let v = http_json(
                &base,
                "POST",
                "/api/v1/backup",
                Some(&serde_json::json!({ "dir": dir })),
            )
            .await
            .map_err(|e| anyhow!(e))?;
            if args.json {
                outln!("{v}")?;
            } else {
                outln!(
                    "backup of the metadata tier in {} ({}, {:.2} s)",
                    s(&v["dir"]),
                    human_bytes(v["bytes"].as_u64().unwrap_or(0)),
                    v["seconds"].as_f64().unwrap_or(0.0)
                )?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        AdminCmd::DeclareEmpty { disk } => {
            let v = http_json(
                &base,
                "POST",
                &format!("/api/v1/disks/{disk}/declare-empty"),
                Some(&Value::Null),
            )
            .await
            .map_err(|e| anyhow!(e))?;
            outln!(
                "{}",
                if args.json {
                    v.to_string()
                } else {
                    format!("disk {disk} declared empty")
                }
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let (method, path, body) = match &args.cmd {
        AdminCmd::Status => ("GET", "/api/v1/status", None),
        AdminCmd::Nodes => ("GET", "/api/v1/nodes", None),
        AdminCmd::Disks => ("GET", "/api/v1/disks", None),
        AdminCmd::Volumes => ("GET", "/api/v1/volumes", None),
        AdminCmd::Scrub { .. } => ("GET", "/api/v1/scrub", None),
        AdminCmd::RebuildIndex
        | AdminCmd::DeclareEmpty { .. }
        | AdminCmd::Verify { .. }
        | AdminCmd::Backup { .. }
        | AdminCmd::Rebalance { .. }
        | AdminCmd::Drain { .. }
        | AdminCmd::Undrain { .. } => unreachable!("handled above"),
        AdminCmd::Repair { cmd } => match cmd {
            RepairCmd::Status => ("GET", "/api/v1/repair", None),
            RepairCmd::Pause => ("POST", "/api/v1/repair/pause", Some(Value::Null)),
            RepairCmd::Resume => ("POST", "/api/v1/repair/resume", Some(Value::Null)),
            RepairCmd::Throttle {
                bytes_per_sec,
                concurrency,
            } => {
                if bytes_per_sec.is_none() && concurrency.is_none() {
                    bail!("give --bytes-per-sec and/or --concurrency");
                }
                (
                    "POST",
                    "/api/v1/repair/throttle",
                    Some(
                        serde_json::json!({ "bytes_per_sec": bytes_per_sec, "concurrency": concurrency }),
                    ),
                )
            }
        },
    };
    let (method, path, body) = match &args.cmd {
        AdminCmd::Scrub { cmd } => match cmd {
            ScrubCmd::Status => ("GET", "/api/v1/scrub", None),
            ScrubCmd::Start => ("POST", "/api/v1/scrub/start", Some(Value::Null)),
            ScrubCmd::Pause => ("POST", "/api/v1/scrub/pause", Some(Value::Null)),
            ScrubCmd::Resume => ("POST", "/api/v1/scrub/resume", Some(Value::Null)),
            ScrubCmd::Throttle {
                bytes_per_sec,
                interval,
            } => {
                if bytes_per_sec.is_none() && interval.is_none() {
                    bail!("give --bytes-per-sec and/or --interval");
                }
                (
                    "POST",
                    "/api/v1/scrub/throttle",
                    Some(serde_json::json!({
                        "bytes_per_sec": bytes_per_sec,
                        "interval_secs": interval.map(|i| i.as_secs()),
                    })),
                )
            }
        },
        _ => (method, path, body),
    };
    let v = http_json(&base, method, path, body.as_ref())
        .await
        .map_err(|e| anyhow!(e))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    match &args.cmd {
        AdminCmd::Status => {
            outln!(
                "cell {}  blocks {}  bytes {}  volumes {}",
                s(&v["cluster_id"]),
                s(&v["blocks"]),
                human_bytes(v["bytes"].as_u64().unwrap_or(0)),
                v["volumes_by_state"]
                    .as_object()
                    .map(|m| m
                        .iter()
                        .map(|(k, n)| format!("{k}={n}"))
                        .collect::<Vec<_>>()
                        .join(" "))
                    .unwrap_or_default()
            )?;
            outln!()?;
            print_nodes(&v["nodes"])?;
            outln!()?;
            print_disks(&v["disks"])?;
            outln!()?;
            print_repair(&v["repair"])?;
        }
        AdminCmd::Nodes => print_nodes(&v)?,
        AdminCmd::Disks => print_disks(&v)?,
        AdminCmd::Volumes => print_volumes(&v)?,
        AdminCmd::Repair { .. } => print_repair(&v)?,
        AdminCmd::Scrub { .. } => print_scrub(&v)?,
        AdminCmd::RebuildIndex
        | AdminCmd::DeclareEmpty { .. }
        | AdminCmd::Verify { .. }
        | AdminCmd::Backup { .. }
        | AdminCmd::Rebalance { .. }
        | AdminCmd::Drain { .. }
        | AdminCmd::Undrain { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}
