//! Integrity on real processes: scrub finds rotten fragments and damaged index records, repair fixes the
//! fragments in place, and a scrub pass survives a SIGKILL of its server.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use hoard_testkit::{Client, Cluster, ClusterOpts, block, wait_for};
use hoard_types::{BlockHash, Geometry};
use rand::{Rng, SeedableRng};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hoard"))
}

async fn fill(client: &Client, n: u64, seed0: u64) -> Vec<(BlockHash, u64, usize)> {
    futures::stream::iter(0..n)
        .map(|i| {
            let c = client.clone();
            async move {
                let seed = seed0 + i;
                let len = 200_000 + (seed as usize * 7919) % 1_000_000;
                (c.put(block(seed, len)).await.expect("put").hash, seed, len)
            }
        })
        .buffered(8)
        .collect()
        .await
}

/// Where a block's fragment for `member` lives on disk: (path of the member's .dat, byte offset).
async fn fragment_file(
    cluster: &Cluster,
    client: &Client,
    h: &BlockHash,
    member: usize,
) -> (PathBuf, u64, u64) {
    let st = client.stat(&h.to_hex()).await.unwrap();
    let vols = cluster.admin_get("/api/v1/volumes").await.unwrap();
    let vol = vols
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == st.volume)
        .unwrap()
        .clone();
    let disk = vol["members"][member]["disk"].as_str().unwrap().to_string();
    let disks = cluster.admin_get("/api/v1/disks").await.unwrap();
    let path = disks
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == disk.as_str())
        .unwrap()["path"]
        .as_str()
        .unwrap()
        .to_string();
    let frag_len = Geometry::DEFAULT.frag_len(st.size);
    (
        Path::new(&path).join(format!("extents/{}/{member}.dat", st.volume)),
        4096 + st.offset,
        frag_len,
    )
}

fn flip(path: &Path, at: u64, n: usize) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = vec![0u8; n];
    f.read_exact_at(&mut b, at).unwrap();
    for x in b.iter_mut() {
        *x = !*x;
    }
    f.write_all_at(&b, at).unwrap();
}

/// Starts a scrub pass on every disk and waits for all of them to complete it.
async fn scrub_pass(cluster: &Cluster) -> Value {
    let started = hoard_types::now_ms();
    cluster
        .admin_post("/api/v1/scrub/start", Value::Null)
        .await
        .unwrap();
    wait_for(
        "a full scrub pass on every disk",
        Duration::from_secs(120),
        || async {
            let s = cluster.admin_get("/api/v1/scrub").await.ok()?;
            let all = s["disks"].as_array()?.iter().all(|d| {
                d["state"] == "idle"
                    && d["last_pass_completed_unix_ms"].as_u64().unwrap_or(0) >= started
            });
            all.then_some(s)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()))
}

fn sum(s: &Value, field: &str) -> u64 {
    s["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d[field].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrub_finds_every_rotten_fragment_and_repair_fixes_them() {
    let cluster = Cluster::start(bin(), ClusterOpts::default()).unwrap();
    let client = cluster.client().await.unwrap();
    cluster
        .admin_post(
            "/api/v1/scrub/throttle",
            serde_json::json!({"bytes_per_sec": 0}),
        )
        .await
        .unwrap();
    let blocks = fill(&client, 60, 1).await;
    // Hold repair back, so that what reads report stays queued and scrub must find all of it.
    cluster
        .admin_post("/api/v1/repair/pause", Value::Null)
        .await
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut damaged = HashSet::new();
    for (h, _, _) in blocks.iter().take(50) {
        let member = rng.random_range(0..9);
        let (path, at, frag_len) = fragment_file(&cluster, &client, h, member).await;
        flip(&path, at + rng.random_range(0..frag_len - 16), 16);
        damaged.insert((h.to_hex(), member));
    }
    assert_eq!(damaged.len(), 50);
    // Every read answers the right bytes at once, decoded around the bad fragment.
    for (h, seed, len) in &blocks {
        assert!(
            client.get(h).await.unwrap() == block(*seed, *len),
            "block {h} came back wrong"
        );
    }
    let s = scrub_pass(&cluster).await;
    assert_eq!(sum(&s, "last_pass_bad_ranges"), 50, "{s:#}");
    let r = cluster.admin_get("/api/v1/repair").await.unwrap();
    assert_eq!(r["ranges"].as_array().unwrap().len(), 50, "{r:#}");
    cluster
        .admin_post("/api/v1/repair/resume", Value::Null)
        .await
        .unwrap();
    wait_for("range repairs", Duration::from_secs(60), || async {
        let r = cluster.admin_get("/api/v1/repair").await.ok()?;
        r["ranges"].as_array()?.is_empty().then_some(())
    })
    .await
    .unwrap();
    let r = cluster.admin_get("/api/v1/repair").await.unwrap();
    assert_eq!(r["ranges_repaired_total"], 50, "{r:#}");
    let s = scrub_pass(&cluster).await;
    assert_eq!(
        sum(&s, "last_pass_bad_ranges"),
        0,
        "a second pass still finds damage: {s:#}"
    );
    for (h, seed, len) in &blocks {
        assert!(client.get(h).await.unwrap() == block(*seed, *len));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_index_records_are_reported_and_nothing_is_served_from_them() {
    let cluster = Cluster::start(bin(), ClusterOpts::default()).unwrap();
    let client = cluster.client().await.unwrap();
    cluster
        .admin_post(
            "/api/v1/scrub/throttle",
            serde_json::json!({"bytes_per_sec": 0}),
        )
        .await
        .unwrap();
    let blocks = fill(&client, 40, 100).await;
    // Garble one record slot of one member, and cut another member's .idx mid-record.
    let (dat_a, _, _) = fragment_file(&cluster, &client, &blocks[0].0, 1).await;
    let idx_a = dat_a.with_extension("idx");
    let (dat_b, _, _) = fragment_file(&cluster, &client, &blocks[1].0, 2).await;
    let idx_b = dat_b.with_extension("idx");
    assert_ne!(idx_a, idx_b);
    let slot = 60 + 4 * 9;
    flip(&idx_a, 64 + 20, 4);
    let len_b = std::fs::metadata(&idx_b).unwrap().len();
    assert!(len_b > 64 + slot as u64, "member b has records");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&idx_b)
        .unwrap()
        .set_len(len_b - slot as u64 / 2)
        .unwrap();
    let s = scrub_pass(&cluster).await;
    assert!(sum(&s, "last_pass_index_damage") >= 2, "{s:#}");
    // Reads go by the block index and the fragment crcs, never by a damaged record.
    for (h, seed, len) in &blocks {
        assert!(client.get(h).await.unwrap() == block(*seed, *len));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scrub_pass_resumes_from_its_checkpoint_after_sigkill() {
    let mut cluster = Cluster::start(bin(), ClusterOpts::default()).unwrap();
    let client = cluster.client().await.unwrap();
    fill(&client, 100, 500).await;
    // Slow enough to be caught in the middle: 1 MB/s per disk.
    cluster
        .admin_post(
            "/api/v1/scrub/throttle",
            serde_json::json!({"bytes_per_sec": 1_000_000}),
        )
        .await
        .unwrap();
    cluster
        .admin_post("/api/v1/scrub/start", Value::Null)
        .await
        .unwrap();
    // A disk of server 0 with a checkpoint a few MB into its pass.
    let disks: Vec<PathBuf> = cluster.disk_dirs(0);
    let (disk_path, cp) = wait_for(
        "a scrub checkpoint mid-pass",
        Duration::from_secs(60),
        || {
            let disks = disks.clone();
            async move {
                disks.iter().find_map(|d| {
                    let text = std::fs::read_to_string(d.join("scrub.toml")).ok()?;
                    let cp = parse_checkpoint(&text);
                    (cp["pass_started_unix_ms"] > 0 && cp["bytes_done"] >= 3_000_000)
                        .then(|| (d.clone(), cp))
                })
            }
        },
    )
    .await
    .unwrap();
    // Slower still across the restart, so that the resumed pass is seen running before it ends.
    cluster
        .admin_post(
            "/api/v1/scrub/throttle",
            serde_json::json!({"bytes_per_sec": 200_000}),
        )
        .await
        .unwrap();
    cluster.kill_volume(0);
    let restarted = hoard_types::now_ms();
    cluster.start_volume(0).unwrap();
    // Only reports sent by the restarted process count.
    wait_for(
        "a heartbeat from the restarted server",
        Duration::from_secs(30),
        || async {
            let nodes = cluster.admin_get("/api/v1/nodes").await.ok()?;
            nodes
                .as_array()?
                .iter()
                .any(|n| {
                    n["id"] == "vol-0"
                        && n["last_heartbeat_unix_ms"].as_u64().unwrap_or(0) > restarted + 600
                })
                .then_some(())
        },
    )
    .await
    .unwrap();
    // After the restart the pass goes on from the checkpoint: same pass, progress kept.
    let id = std::fs::read_to_string(disk_path.join("hoard-disk.toml")).unwrap();
    let disk_id = parse_checkpoint_str(&id, "disk_id");
    let seen = wait_for(
        "the resumed pass to report",
        Duration::from_secs(30),
        || async {
            let s = cluster.admin_get("/api/v1/scrub").await.ok()?;
            let d = s["disks"]
                .as_array()?
                .iter()
                .find(|d| d["disk"] == disk_id.as_str())?
                .clone();
            (d["state"] == "running"
                && d["pass_started_unix_ms"].as_u64()? == cp["pass_started_unix_ms"])
                .then_some(d)
        },
    )
    .await
    .unwrap();
    assert!(
        seen["bytes_done"].as_u64().unwrap() >= cp["bytes_done"],
        "progress went back: checkpoint {} bytes, now {}",
        cp["bytes_done"],
        seen["bytes_done"]
    );
    cluster
        .admin_post(
            "/api/v1/scrub/throttle",
            serde_json::json!({"bytes_per_sec": 0}),
        )
        .await
        .unwrap();
    wait_for(
        "the resumed pass to complete",
        Duration::from_secs(60),
        || async {
            let s = cluster.admin_get("/api/v1/scrub").await.ok()?;
            let d = s["disks"]
                .as_array()?
                .iter()
                .find(|d| d["disk"] == disk_id.as_str())?
                .clone();
            (d["state"] == "idle"
                && d["last_pass_completed_unix_ms"].as_u64()? > cp["pass_started_unix_ms"])
                .then_some(())
        },
    )
    .await
    .unwrap();
}

fn parse_checkpoint(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(" = ")?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn parse_checkpoint_str(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(" = ")?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_metadata_tier_is_rebuilt_from_the_disks() {
    let mut cluster = Cluster::start(bin(), ClusterOpts::default()).unwrap();
    let client = cluster.client().await.unwrap();
    let blocks = fill(&client, 50, 7000).await;
    let mut max_volume = 0;
    for (h, _, _) in &blocks {
        max_volume = max_volume.max(client.stat(&h.to_hex()).await.unwrap().volume);
    }
    // Lose the metadata tier entirely.
    cluster.kill_all();
    std::fs::remove_dir_all(cluster.path().join("meta")).unwrap();
    cluster.restart_all().unwrap();
    let client = cluster.client().await.unwrap();
    wait_for("every disk reported", Duration::from_secs(30), || async {
        let d = cluster.admin_get("/api/v1/disks").await.ok()?;
        (d.as_array()?.len() == 12).then_some(d)
    })
    .await
    .unwrap();
    // The empty tier keeps new data off disks it cannot account for.
    let disks = cluster.admin_get("/api/v1/disks").await.unwrap();
    assert!(
        disks
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"].as_str().unwrap().starts_with("held")),
        "{disks:#}"
    );
    let err = client.put(block(1, 1000)).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
    // Rebuild, through the operator command.
    let out = std::process::Command::new(bin())
        .args(["admin", "rebuild-index"])
        .env("HOARD_ADMIN", cluster.admin_url())
        .env("HOARD_ADMIN_TOKEN", &cluster.admin_token)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "rebuild-index failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("50 accepted"), "{text}");
    for (h, seed, len) in &blocks {
        let got = client
            .get(h)
            .await
            .unwrap_or_else(|e| panic!("block {h} lost: {e}"));
        assert!(got == block(*seed, *len), "block {h} came back wrong");
    }
    // The disks are this tier's again, and new volumes never reuse an old id.
    let h = wait_for("a put after the rebuild", Duration::from_secs(30), || {
        let c = client.clone();
        async move { c.put(block(2, 1000)).await.ok() }
    })
    .await
    .unwrap()
    .hash;
    let st = client.stat(&h.to_hex()).await.unwrap();
    assert!(
        st.volume > max_volume,
        "new volume {} reuses an id up to {max_volume}",
        st.volume
    );
}

fn admin_cli(cluster: &Cluster, args: &[&str]) -> (bool, Value) {
    let out = std::process::Command::new(bin())
        .args(args)
        .env("HOARD_ADMIN", cluster.admin_url())
        .env("HOARD_ADMIN_TOKEN", &cluster.admin_token)
        .env("HOARD_ENDPOINT", cluster.endpoint())
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.success(), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_walks_the_index_and_reads_back_a_sample() {
    let mut cluster = Cluster::start(bin(), ClusterOpts::default()).unwrap();
    let client = cluster.client().await.unwrap();
    fill(&client, 30, 9000).await;
    // Every server reports the extents it holds now within a beat or two; a server that a busy machine
    // held back for a few beats is a finding until it reports, so wait for a clean run.
    let last = std::sync::Mutex::new(Value::Null);
    let clean = wait_for("a clean verify", Duration::from_secs(30), || async {
        let (ok, v) = admin_cli(
            &cluster,
            &["admin", "verify", "--deep", "--sample", "100", "--json"],
        );
        let clean = ok && v["problems_total"] == 0;
        *last.lock().unwrap() = v;
        clean.then_some(())
    })
    .await;
    let v = last.into_inner().unwrap();
    assert!(clean.is_ok(), "{v:#}");
    assert_eq!(v["entries"], 30);
    assert_eq!(v["problems_total"], 0, "{v:#}");
    assert_eq!(v["deep"]["read"], 30);
    // A server that stopped reporting makes its volumes' blocks a finding.
    cluster.kill_volume(2);
    // Once its last report is stale (a few missed beats), verification flags its members.
    let (ok, v) = wait_for(
        "verify to flag the silent server",
        Duration::from_secs(20),
        || async {
            let (ok, v) = admin_cli(&cluster, &["admin", "verify", "--json"]);
            (!ok).then_some((ok, v))
        },
    )
    .await
    .unwrap();
    assert!(!ok, "verify passed with a server gone: {v:#}");
    assert!(v["problems_total"].as_u64().unwrap() > 0);
    let listed = v["problems"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|p| p.as_str().unwrap().contains("not in service")
                || p.as_str().unwrap().contains("not reporting")),
        "{v:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_watcher_reads_back_stored_blocks_after_its_delays() {
    let cluster = Cluster::start(
        bin(),
        ClusterOpts {
            frontend_extra: "watch_share = 1.0\nwatch_delays = [\"1s\", \"1s\"]".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let client = cluster.client().await.unwrap();
    fill(&client, 5, 9500).await;
    let fe = cluster.frontend.as_ref().unwrap();
    wait_for("10 read-back checks", Duration::from_secs(30), || async {
        let m = cluster.metrics_of(fe).await.ok()?;
        m.lines()
            .any(|l| l.starts_with("hoard_watcher_checks_total{result=\"ok\"} 10"))
            .then_some(())
    })
    .await
    .unwrap();
    let m = cluster.metrics_of(fe).await.unwrap();
    assert!(
        m.contains("hoard_watcher_checks_total{result=\"failed\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("hoard_watcher_pending 0"),
        "every check done: {m}"
    );
}
