//! Operator jobs on real processes under client load: rebalance after adding nodes, draining a node,
//! SIGKILLs in the middle of both, and a full cell.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use hoard_testkit::{Client, Cluster, ClusterOpts, block, wait_for};
use hoard_types::BlockHash;
use serde_json::{Value, json};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hoard"))
}

async fn fill(client: &Client, n: u64, seed0: u64, size: usize) -> Vec<(BlockHash, u64, usize)> {
    futures::stream::iter(0..n)
        .map(|i| {
            let c = client.clone();
            async move {
                let seed = seed0 + i;
                let len = size / 2 + (seed as usize * 7919) % size;
                (c.put(block(seed, len)).await.expect("put").hash, seed, len)
            }
        })
        .buffered(8)
        .collect()
        .await
}

/// Client load until stopped: reads of known blocks and puts of new ones; counts failures.
struct Load {
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    ops: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(client: &Client, blocks: Arc<Vec<(BlockHash, u64, usize)>>, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        let ops = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        {
            let (c, s, e, o, b) = (
                client.clone(),
                stop.clone(),
                errors.clone(),
                ops.clone(),
                blocks,
            );
            tasks.push(tokio::spawn(async move {
                let mut problems = Vec::new();
                while !s.load(Ordering::Relaxed) {
                    for (h, seed, len) in b.iter() {
                        match c.get(h).await {
                            Ok(got) if got == block(*seed, *len) => {}
                            Ok(_) => problems.push(format!("{h}: wrong bytes")),
                            Err(err) => problems.push(format!("get {h}: {err}")),
                        }
                        o.fetch_add(1, Ordering::Relaxed);
                        if s.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
                e.fetch_add(problems.len() as u64, Ordering::Relaxed);
                problems
            }));
        }
        for w in 0..writers {
            let (c, s, e, o) = (client.clone(), stop.clone(), errors.clone(), ops.clone());
            tasks.push(tokio::spawn(async move {
                let mut problems = Vec::new();
                let mut i = 0u64;
                while !s.load(Ordering::Relaxed) {
                    let seed = 1_000_000 * (w as u64 + 1) + i;
                    let data = block(seed, 100_000 + (seed as usize % 300_000));
                    match c.put(data.clone()).await {
                        Ok(p) => match c.get(&p.hash).await {
                            Ok(b) if b == data => {}
                            Ok(_) => problems.push(format!("{}: wrong bytes", p.hash)),
                            Err(err) => problems.push(format!("get {}: {err}", p.hash)),
                        },
                        Err(err) => problems.push(format!("put: {err}")),
                    }
                    o.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                e.fetch_add(problems.len() as u64, Ordering::Relaxed);
                problems
            }));
        }
        Load {
            stop,
            errors,
            ops,
            tasks,
        }
    }

    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut problems = Vec::new();
        for t in self.tasks {
            problems.extend(t.await.unwrap());
        }
        (
            self.ops.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            problems,
        )
    }
}

fn fills(disks: &Value) -> Vec<(String, String, f64)> {
    disks
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["state"] == "ok")
        .map(|d| {
            let used = d["used_bytes"].as_f64().unwrap();
            let cap = d["capacity_bytes"].as_f64().unwrap();
            (
                d["id"].as_str().unwrap().to_string(),
                d["node"].as_str().unwrap().to_string(),
                used / cap,
            )
        })
        .collect()
}

async fn no_violations(cluster: &Cluster) {
    let vols = cluster.admin_get("/api/v1/volumes").await.unwrap();
    for v in vols.as_array().unwrap() {
        assert!(
            v["violations"].as_array().unwrap().is_empty(),
            "volume {} breaks placement: {}",
            v["id"],
            v["violations"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_after_adding_nodes_evens_out_fill_while_clients_read() {
    let mut cluster = Cluster::start(
        bin(),
        ClusterOpts {
            volume_servers: 6,
            start_volumes: Some(4),
            disk_capacity: Some("256MiB".into()),
            // Small extents fill and seal quickly: only sealed volumes move.
            extent_size: "4MiB".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let client = cluster.client().await.unwrap();
    let blocks = Arc::new(fill(&client, 200, 1, 1_500_000).await);
    cluster.start_volume(4).unwrap();
    cluster.start_volume(5).unwrap();
    // The new disks are known and every disk's use is reported.
    wait_for("18 disks", Duration::from_secs(20), || async {
        let d = cluster.admin_get("/api/v1/disks").await.ok()?;
        (d.as_array()?.len() == 18).then_some(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let plan = cluster
        .admin_get("/api/v1/rebalance/plan?tolerance=5")
        .await
        .unwrap();
    let moves = plan["moves"].as_array().unwrap().clone();
    assert!(
        !moves.is_empty(),
        "{plan:#}\n{:#}\n{}",
        cluster.admin_get("/api/v1/disks").await.unwrap(),
        cluster.admin_get("/api/v1/volumes").await.unwrap()
    );
    // The plan puts members only on disks that do not hold the volume already.
    let vols = cluster.admin_get("/api/v1/volumes").await.unwrap();
    let disks_of: HashMap<u64, Vec<String>> = vols
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["id"].as_u64().unwrap(),
                v["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["disk"].as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    for m in &moves {
        let to = m["to_disk"].as_str().unwrap();
        assert!(
            !disks_of[&m["volume"].as_u64().unwrap()]
                .iter()
                .any(|d| d == to),
            "{m}"
        );
    }
    let load = Load::start(&client, blocks.clone(), 0);
    cluster
        .admin_post("/api/v1/rebalance/apply", json!({"tolerance": 5}))
        .await
        .unwrap();
    wait_for(
        "the rebalance to finish",
        Duration::from_secs(180),
        || async {
            let r = cluster.admin_get("/api/v1/rebalance").await.ok()?;
            (r["state"] == "done").then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let (ops, errors, problems) = load.finish().await;
    assert_eq!(
        errors, 0,
        "client errors during the rebalance: {problems:?}"
    );
    assert!(ops > 0);
    // Once the servers report their new contents: every disk within the tolerance of the mean.
    let f = wait_for(
        "every disk within 5 points of the mean",
        Duration::from_secs(30),
        || async {
            let f = fills(&cluster.admin_get("/api/v1/disks").await.ok()?);
            let mean = f.iter().map(|x| x.2).sum::<f64>() / f.len() as f64;
            f.iter()
                .all(|x| (x.2 - mean).abs() <= 0.05 + 1e-9)
                .then_some(f)
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}",
            futures::executor::block_on(cluster.admin_get("/api/v1/disks"))
        )
    });
    assert!(
        f.iter().any(|x| x.1 == "vol-4" && x.2 > 0.0),
        "the new nodes took members"
    );
    no_violations(&cluster).await;
    for (h, seed, len) in blocks.iter() {
        assert_eq!(client.get(h).await.unwrap(), block(*seed, *len));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_drains_under_load_without_client_errors() {
    let cluster = Cluster::start(
        bin(),
        ClusterOpts {
            volume_servers: 5,
            ..Default::default()
        },
    )
    .unwrap();
    let client = cluster.client().await.unwrap();
    let blocks = Arc::new(fill(&client, 60, 100, 800_000).await);
    let load = Load::start(&client, blocks.clone(), 2);
    let out = std::process::Command::new(bin())
        .args(["admin", "drain", "node", "vol-0", "--wait"])
        .env("HOARD_ADMIN", cluster.admin_url())
        .env("HOARD_ADMIN_TOKEN", &cluster.admin_token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("drained"));
    let (ops, errors, problems) = load.finish().await;
    assert_eq!(errors, 0, "client errors during the drain: {problems:?}");
    assert!(ops > 10);
    let disks = cluster.admin_get("/api/v1/disks").await.unwrap();
    for d in disks
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["node"] == "vol-0")
    {
        assert_eq!(d["members"], 0, "{d}");
        assert_eq!(d["state"], "drained", "{d}");
    }
    // The moved members' old copies leave service for vol-0's trash (deleted after the grace period),
    // and operators see the space they hold.
    wait_for(
        "old copies in the trash",
        Duration::from_secs(30),
        || async {
            let disks = cluster.admin_get("/api/v1/disks").await.ok()?;
            let mine: Vec<Value> = disks
                .as_array()?
                .iter()
                .filter(|d| d["node"] == "vol-0")
                .cloned()
                .collect();
            let trash: u64 = mine
                .iter()
                .map(|d| d["trash_bytes"].as_u64().unwrap_or(0))
                .sum();
            (mine.iter().all(|d| d["used_bytes"] == 0) && trash > 0).then_some(())
        },
    )
    .await
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["admin", "disks"])
        .env("HOARD_ADMIN", cluster.admin_url())
        .env("HOARD_ADMIN_TOKEN", &cluster.admin_token)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("TRASH"));
    no_violations(&cluster).await;
    for (h, seed, len) in blocks.iter() {
        assert_eq!(client.get(h).await.unwrap(), block(*seed, *len));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkills_mid_drain_and_mid_move_lose_nothing() {
    let mut cluster = Cluster::start(
        bin(),
        ClusterOpts {
            volume_servers: 6,
            heartbeat_grace: "3s".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let client = cluster.client().await.unwrap();
    let blocks = fill(&client, 120, 5000, 1_000_000).await;
    // Slow moves, so that they are caught in the middle.
    cluster
        .admin_post(
            "/api/v1/repair/throttle",
            json!({"bytes_per_sec": 2_000_000, "concurrency": 2}),
        )
        .await
        .unwrap();
    cluster
        .admin_post("/api/v1/drain", json!({"node": "vol-1"}))
        .await
        .unwrap();
    let admin = cluster.admin_url();
    let token = cluster.admin_token.clone();
    let running = move || {
        let (admin, token) = (admin.clone(), token.clone());
        async move {
            let r = hoard_admin::http_json(&admin, Some(&token), "GET", "/api/v1/rebalance", None)
                .await
                .ok()?;
            r["moves"]
                .as_array()?
                .iter()
                .any(|m| m["state"] == "running" && m["done_bytes"].as_u64().unwrap_or(0) > 0)
                .then_some(())
        }
    };
    wait_for("a move under way", Duration::from_secs(60), running)
        .await
        .unwrap();
    // The daemon dies mid-move, comes back, and goes on: moves make progress past what was done when
    // it died (the killed daemon's own move still reads as running, so that alone proves nothing).
    let done = |r: &Value| r["bytes_done"].as_u64().unwrap_or(0);
    let base = done(&cluster.admin_get("/api/v1/rebalance").await.unwrap());
    cluster.kill_repair();
    cluster.start_repair().unwrap();
    wait_for("moves going again", Duration::from_secs(60), || async {
        let r = cluster.admin_get("/api/v1/rebalance").await.ok()?;
        (done(&r) > base).then_some(())
    })
    .await
    .unwrap();
    // The draining node itself dies mid-drain: repair takes over its members.
    cluster.kill_volume(1);
    cluster
        .admin_post(
            "/api/v1/repair/throttle",
            json!({"bytes_per_sec": 0, "concurrency": 2}),
        )
        .await
        .unwrap();
    wait_for(
        "every volume whole, nothing on vol-1",
        Duration::from_secs(120),
        || async {
            let vols = cluster.admin_get("/api/v1/volumes").await.ok()?;
            let disks = cluster.admin_get("/api/v1/disks").await.ok()?;
            let on_1: Vec<String> = disks
                .as_array()?
                .iter()
                .filter(|d| d["node"] == "vol-1")
                .map(|d| d["id"].as_str().unwrap().to_string())
                .collect();
            let whole =
                vols.as_array()?.iter().all(|v| {
                    v["members"].as_array().unwrap().iter().all(|m| {
                        m["state"] == "ok" && !on_1.iter().any(|d| m["disk"] == d.as_str())
                    })
                });
            let r = cluster.admin_get("/api/v1/repair").await.ok()?;
            (whole && r["degraded_volumes"] == 0).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    no_violations(&cluster).await;
    for (h, seed, len) in &blocks {
        assert_eq!(
            client.get(h).await.unwrap(),
            block(*seed, *len),
            "block {h}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_cell_answers_resource_exhausted_and_keeps_what_it_acknowledged() {
    let cluster = Cluster::start(
        bin(),
        ClusterOpts {
            disk_capacity: Some("40MiB".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let client = cluster.client().await.unwrap();
    let mut acked = Vec::new();
    let mut refusal = None;
    for seed in 0..400u64 {
        let data = block(seed, 1_500_000);
        match client.put(data).await {
            Ok(p) => acked.push((p.hash, seed)),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let e = refusal.expect("a full cell refuses puts");
    assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted), "{e}");
    assert!(e.to_string().contains("full"), "{e}");
    assert!(
        acked.len() > 10,
        "only {} puts before the cell filled",
        acked.len()
    );
    for (h, seed) in &acked {
        assert_eq!(client.get(h).await.unwrap(), block(*seed, 1_500_000));
    }
}
