//! Repair, on real processes with grace periods of seconds: lost servers and disks are detected and their
//! members rebuilt elsewhere while readers keep reading; the most-at-risk volume goes first; a killed
//! repair daemon leaves nothing half-built in service; more than m lost is reported as data loss.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use hoard_testkit::{Client, Cluster, ClusterOpts, block, wait_for};
use hoard_types::BlockHash;
use serde_json::Value;
use tonic::Code;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hoard"))
}

fn opts(servers: usize) -> ClusterOpts {
    ClusterOpts {
        volume_servers: servers,
        heartbeat_grace: "3s".into(),
        ..Default::default()
    }
}

async fn fill(client: &Client, n: u64, seed0: u64) -> Vec<(BlockHash, u64, usize)> {
    futures::stream::iter(0..n)
        .map(|i| {
            let c = client.clone();
            async move {
                let seed = seed0 + i;
                let len = 50_000 + (seed as usize * 7919) % 1_500_000;
                let put = c.put(block(seed, len)).await.expect("put");
                (put.hash, seed, len)
            }
        })
        .buffered(8)
        .collect()
        .await
}

/// Reads every block in a loop until stopped; counts failures.
fn spawn_reader(
    client: Client,
    blocks: Arc<Vec<(BlockHash, u64, usize)>>,
) -> (
    Arc<AtomicBool>,
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    tokio::task::JoinHandle<Vec<String>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let (s, r, e) = (stop.clone(), reads.clone(), errors.clone());
    let h = tokio::spawn(async move {
        let mut problems = Vec::new();
        while !s.load(Ordering::Relaxed) {
            for (h, seed, len) in blocks.iter() {
                match client.get(h).await {
                    Ok(b) if b == block(*seed, *len) => {}
                    Ok(_) => {
                        e.fetch_add(1, Ordering::Relaxed);
                        problems.push(format!("{h}: wrong bytes"));
                    }
                    Err(err) => {
                        e.fetch_add(1, Ordering::Relaxed);
                        problems.push(format!("{h}: {err}"));
                    }
                }
                r.fetch_add(1, Ordering::Relaxed);
                if s.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
        problems
    });
    (stop, reads, errors, h)
}

fn volumes_of(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// Disk id -> node id, from the admin API's disk list.
async fn disk_nodes(cluster: &Cluster) -> HashMap<String, String> {
    let disks = cluster.admin_get("/api/v1/disks").await.unwrap();
    volumes_of(&disks)
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["node"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Waits until every volume (except those listed) has all members ok, none on `gone` nodes or disks.
async fn wait_whole(
    cluster: &Cluster,
    gone_nodes: &[&str],
    gone_disks: &[String],
    timeout: Duration,
) {
    let res = wait_for("all volumes back to full redundancy", timeout, || async {
        let vols = cluster.admin_get("/api/v1/volumes").await.ok()?;
        let disks = disk_nodes(cluster).await;
        let all_ok = volumes_of(&vols)
            .iter()
            .filter(|v| v["state"] != "retired")
            .all(|v| {
                let members = v["members"].as_array().unwrap();
                members.len() == 9
                    && members.iter().all(|m| {
                        let disk = m["disk"].as_str().unwrap();
                        m["state"] == "ok"
                            && !gone_disks.iter().any(|g| g == disk)
                            && !gone_nodes
                                .contains(&disks.get(disk).map(String::as_str).unwrap_or(""))
                    })
                    && v["state"] != "degraded"
            });
        let repair = cluster.admin_get("/api/v1/repair").await.ok()?;
        (all_ok && repair["degraded_volumes"] == 0).then_some(())
    })
    .await;
    if let Err(e) = res {
        let vols = cluster
            .admin_get("/api/v1/volumes")
            .await
            .unwrap_or_default();
        panic!("{e}\nvolumes: {vols:#}\n{}", cluster.logs());
    }
}

/// Every volume has exactly k+m members, on distinct disks, at most m per node.
async fn check_members(cluster: &Cluster) {
    let vols = cluster.admin_get("/api/v1/volumes").await.unwrap();
    let disks = disk_nodes(cluster).await;
    for v in volumes_of(&vols).iter().filter(|v| v["state"] != "retired") {
        let members = v["members"].as_array().unwrap();
        let ds: HashSet<&str> = members
            .iter()
            .map(|m| m["disk"].as_str().unwrap())
            .collect();
        assert_eq!(ds.len(), 9, "volume {} members share disks: {v}", v["id"]);
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        for d in &ds {
            *per_node.entry(disks[*d].as_str()).or_default() += 1;
        }
        assert!(
            per_node.values().all(|&n| n <= 3),
            "volume {} has > m members on a node: {per_node:?}",
            v["id"]
        );
    }
    // In service on the volume servers: exactly one extent per (volume, member), at the committed
    // generation, and nothing else.
    let mut in_service: HashMap<(u64, u32), Vec<u64>> = HashMap::new();
    for inv in cluster.inventories().await.unwrap() {
        for e in inv.extents {
            let r = e.extent.unwrap();
            in_service
                .entry((r.volume, r.member))
                .or_default()
                .push(r.generation);
        }
    }
    // A volume still being created has no extents yet: the frontends open new volumes at any time.
    for v in volumes_of(&vols)
        .iter()
        .filter(|v| v["state"] != "retired" && v["state"] != "creating")
    {
        let id = v["id"].as_u64().unwrap();
        for m in v["members"].as_array().unwrap() {
            let key = (id, m["index"].as_u64().unwrap() as u32);
            let gens = in_service.get(&key).cloned().unwrap_or_default();
            assert_eq!(
                gens,
                vec![m["generation"].as_u64().unwrap()],
                "volume {id} ({}) member {} in service at generations {gens:?}",
                v["state"],
                key.1
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_servers_are_rebuilt_elsewhere_while_readers_see_no_error() {
    let mut cluster = Cluster::start(bin(), opts(5)).unwrap();
    let client = cluster.client().await.unwrap();
    let blocks = Arc::new(fill(&client, 60, 1).await);
    let (stop, reads, errors, reader) = spawn_reader(client.clone(), blocks.clone());

    cluster.kill_volume(0);
    wait_whole(&cluster, &["vol-0"], &[], Duration::from_secs(90)).await;
    check_members(&cluster).await;
    let after_first = reads.load(Ordering::Relaxed);

    cluster.kill_volume(1);
    wait_whole(&cluster, &["vol-0", "vol-1"], &[], Duration::from_secs(90)).await;
    check_members(&cluster).await;

    stop.store(true, Ordering::Relaxed);
    let problems = reader.await.unwrap();
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "reader saw errors: {problems:?}"
    );
    assert!(
        after_first > 0 && reads.load(Ordering::Relaxed) > after_first,
        "the reader kept reading"
    );
    let repair = cluster.admin_get("/api/v1/repair").await.unwrap();
    assert!(
        repair["volumes_repaired_total"].as_u64().unwrap() >= 2,
        "{repair}"
    );
    // New writes work on the three servers left.
    let more = fill(&client, 10, 500).await;
    for (h, seed, len) in more {
        assert_eq!(client.get(&h).await.unwrap(), block(seed, len));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_emptied_disk_is_detected_and_rebuilt() {
    let cluster = Cluster::start(bin(), opts(4)).unwrap();
    let client = cluster.client().await.unwrap();
    let blocks = fill(&client, 40, 1000).await;
    // Pick a disk holding members.
    let disks = cluster.admin_get("/api/v1/disks").await.unwrap();
    let victim = volumes_of(&disks)
        .into_iter()
        .find(|d| d["members"].as_u64().unwrap_or(0) > 0)
        .expect("a disk with members");
    let path = victim["path"].as_str().unwrap().to_string();
    let id = victim["id"].as_str().unwrap().to_string();
    for e in std::fs::read_dir(&path).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    wait_whole(
        &cluster,
        &[],
        std::slice::from_ref(&id),
        Duration::from_secs(60),
    )
    .await;
    check_members(&cluster).await;
    let disks = cluster.admin_get("/api/v1/disks").await.unwrap();
    let state = volumes_of(&disks)
        .into_iter()
        .find(|d| d["id"] == id.as_str())
        .unwrap()["state"]
        .clone();
    assert!(
        state.as_str().unwrap().starts_with("failed"),
        "emptied disk reported as {state}"
    );
    for (h, seed, len) in blocks {
        assert_eq!(client.get(&h).await.unwrap(), block(seed, len));
    }
}

fn wipe(path: &str) {
    for e in std::fs::read_dir(path).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
}

/// Volume id -> the disks of its members.
async fn volume_disks(cluster: &Cluster) -> HashMap<u64, Vec<String>> {
    let vols = cluster.admin_get("/api/v1/volumes").await.unwrap();
    volumes_of(&vols)
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
        .collect()
}

async fn disk_paths(cluster: &Cluster) -> HashMap<String, (String, String)> {
    let disks = cluster.admin_get("/api/v1/disks").await.unwrap();
    volumes_of(&disks)
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                (
                    d["path"].as_str().unwrap().to_string(),
                    d["node"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_volume_missing_two_members_is_rebuilt_first() {
    let cluster = Cluster::start(bin(), opts(5)).unwrap();
    let client = cluster.client().await.unwrap();
    let blocks = fill(&client, 50, 2000).await;
    // Slow, one at a time, and paused while the losses are set up.
    cluster
        .admin_post("/api/v1/repair/pause", Value::Null)
        .await
        .unwrap();
    cluster
        .admin_post(
            "/api/v1/repair/throttle",
            serde_json::json!({"bytes_per_sec": 20_000_000, "concurrency": 1}),
        )
        .await
        .unwrap();
    let vd = volume_disks(&cluster).await;
    let paths = disk_paths(&cluster).await;
    // Two disks on different nodes that share a volume, where some other volume has only one of them.
    let mut choice = None;
    'search: for (v, ds) in &vd {
        for a in ds {
            for b in ds {
                if a >= b || paths[a].1 == paths[b].1 {
                    continue;
                }
                let single = vd
                    .iter()
                    .any(|(w, wd)| w != v && (wd.contains(a) ^ wd.contains(b)));
                if single {
                    choice = Some((a.clone(), b.clone()));
                    break 'search;
                }
            }
        }
    }
    let (a, b) = choice.expect("two disks sharing a volume");
    let doubles: HashSet<u64> = vd
        .iter()
        .filter(|(_, d)| d.contains(&a) && d.contains(&b))
        .map(|(v, _)| *v)
        .collect();
    let singles: HashSet<u64> = vd
        .iter()
        .filter(|(_, d)| d.contains(&a) ^ d.contains(&b))
        .map(|(v, _)| *v)
        .collect();
    wipe(&paths[&a].0);
    wipe(&paths[&b].0);
    // Both losses are seen before anything is repaired.
    // The two disks can be reported on different heartbeats, so wait for the whole picture: every
    // affected volume queued, each double-loss volume with both members lost.
    wait_for("all losses queued", Duration::from_secs(30), || async {
        let r = cluster.admin_get("/api/v1/repair").await.ok()?;
        let mut lost: HashMap<u64, usize> = HashMap::new();
        for t in r["queue"].as_array()? {
            lost.insert(t["volume"].as_u64()?, t["lost_members"].as_array()?.len());
        }
        let complete = lost.len() == doubles.len() + singles.len()
            && doubles.iter().all(|v| lost.get(v) == Some(&2))
            && singles.iter().all(|v| lost.get(v) == Some(&1));
        complete.then_some(())
    })
    .await
    .unwrap();
    let r = cluster.admin_get("/api/v1/repair").await.unwrap();
    let first = &r["queue"][0];
    assert_eq!(first["priority"], 2, "queue head: {r:#}");
    cluster
        .admin_post("/api/v1/repair/resume", Value::Null)
        .await
        .unwrap();
    // Watch the queue drain: no single-loss volume leaves it while a double-loss one is still in it.
    let mut seen_single_done = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let r = cluster.admin_get("/api/v1/repair").await.unwrap();
        let queued: HashSet<u64> = r["queue"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["volume"].as_u64().unwrap())
            .collect();
        let doubles_left = doubles.iter().any(|v| queued.contains(v));
        if singles.iter().any(|v| !queued.contains(v)) {
            assert!(
                !doubles_left,
                "a single-loss volume was repaired before a double-loss one: {r:#}"
            );
            seen_single_done = true;
        }
        if queued.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queue not drained: {r:#}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen_single_done);
    check_members(&cluster).await;
    for (h, seed, len) in blocks {
        assert_eq!(client.get(&h).await.unwrap(), block(seed, len));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repair_daemon_killed_mid_rebuild_completes_after_restart() {
    let mut cluster = Cluster::start(bin(), opts(4)).unwrap();
    let client = cluster.client().await.unwrap();
    let blocks = fill(&client, 120, 3000).await;
    // Slow enough that a rebuild is caught in the middle.
    cluster
        .admin_post(
            "/api/v1/repair/throttle",
            serde_json::json!({"bytes_per_sec": 1_000_000, "concurrency": 1}),
        )
        .await
        .unwrap();
    let disks = cluster.admin_get("/api/v1/disks").await.unwrap();
    let victim = volumes_of(&disks)
        .into_iter()
        .max_by_key(|d| d["members"].as_u64().unwrap_or(0))
        .unwrap();
    let id = victim["id"].as_str().unwrap().to_string();
    wipe(victim["path"].as_str().unwrap());
    // Killed with a throttled step still to go, not between its last step and the commit.
    wait_for("a rebuild in progress", Duration::from_secs(30), || async {
        let r = cluster.admin_get("/api/v1/repair").await.ok()?;
        r["queue"]
            .as_array()?
            .iter()
            .any(|t| {
                let done = t["done_bytes"].as_u64().unwrap_or(0);
                t["state"] == "running" && done > 0 && done < t["total_bytes"].as_u64().unwrap_or(0)
            })
            .then_some(())
    })
    .await
    .unwrap();
    cluster.kill_repair();
    // Nothing half-built is in service while the daemon is gone.
    check_members_ok_or_lost(&cluster).await;
    cluster
        .admin_post(
            "/api/v1/repair/throttle",
            serde_json::json!({"bytes_per_sec": 0, "concurrency": 2}),
        )
        .await
        .unwrap();
    cluster.start_repair().unwrap();
    wait_whole(&cluster, &[], &[id], Duration::from_secs(90)).await;
    check_members(&cluster).await;
    for (h, seed, len) in blocks {
        assert_eq!(client.get(&h).await.unwrap(), block(seed, len));
    }
}

/// While repairs are unfinished: every member meta lists as ok is in service at its generation, and no
/// generation meta has not committed is in service.
async fn check_members_ok_or_lost(cluster: &Cluster) {
    let vols = cluster.admin_get("/api/v1/volumes").await.unwrap();
    let mut in_service: HashMap<(u64, u32), u64> = HashMap::new();
    for inv in cluster.inventories().await.unwrap() {
        for e in inv.extents {
            let r = e.extent.unwrap();
            in_service.insert((r.volume, r.member), r.generation);
        }
    }
    for v in volumes_of(&vols) {
        let id = v["id"].as_u64().unwrap();
        for m in v["members"].as_array().unwrap() {
            let key = (id, m["index"].as_u64().unwrap() as u32);
            let committed = m["generation"].as_u64().unwrap();
            if let Some(g) = in_service.get(&key) {
                assert!(
                    *g <= committed,
                    "volume {id} member {} in service at uncommitted generation {g}",
                    key.1
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_than_m_lost_is_data_loss_for_that_volume_only() {
    // 18 disks and two open volumes: their members land on disjoint disks.
    let cluster = Cluster::start(
        bin(),
        ClusterOpts {
            volume_servers: 6,
            open_volumes: 2,
            heartbeat_grace: "3s".into(),
            extent_size: "64MiB".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let client = cluster.client().await.unwrap();
    let blocks = fill(&client, 30, 4000).await;
    let vd = volume_disks(&cluster).await;
    assert_eq!(vd.len(), 2, "{vd:?}");
    let ids: Vec<u64> = vd.keys().copied().collect();
    let (lost_v, kept_v) = (ids[0], ids[1]);
    assert!(
        vd[&lost_v].iter().all(|d| !vd[&kept_v].contains(d)),
        "volumes share disks: {vd:?}"
    );
    let paths = disk_paths(&cluster).await;
    // Repair paused, so that the four losses count together: repair picks a loss up within a second,
    // and would otherwise rebuild the first members before the last disk is wiped.
    cluster
        .admin_post("/api/v1/repair/pause", Value::Null)
        .await
        .unwrap();
    for d in vd[&lost_v].iter().take(4) {
        wipe(&paths[d].0);
    }
    wait_for("volume reported lost", Duration::from_secs(30), || async {
        let r = cluster.admin_get("/api/v1/repair").await.ok()?;
        (r["lost_volumes"] == 1).then_some(())
    })
    .await
    .unwrap();
    let vols = cluster.admin_get("/api/v1/volumes").await.unwrap();
    let state = |id: u64| {
        volumes_of(&vols)
            .into_iter()
            .find(|v| v["id"] == id)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state(lost_v), "lost");
    assert_ne!(state(kept_v), "lost");
    // The gauges are published just after the state the API shows.
    wait_for("the lost-volume gauge", Duration::from_secs(10), || async {
        reqwest_metrics(&cluster)
            .await
            .contains("hoard_repair_volumes_lost 1")
            .then_some(())
    })
    .await
    .expect("metrics lack the lost volume");
    for (h, seed, len) in &blocks {
        let st = client.stat(&h.to_hex()).await.unwrap();
        let res = client.get(h).await;
        if st.volume == lost_v {
            let e = res.expect_err("a block of the lost volume read back");
            assert_eq!(e.code(), Some(Code::DataLoss), "{e}");
            assert!(e.to_string().contains(&h.to_hex()), "{e}");
        } else {
            assert_eq!(res.unwrap(), block(*seed, *len));
        }
    }
    // Writes go on, on the disks left.
    let more = fill(&client, 5, 9000).await;
    for (h, seed, len) in more {
        assert_eq!(client.get(&h).await.unwrap(), block(seed, len));
    }
}

async fn reqwest_metrics(cluster: &Cluster) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = cluster
        .admin_url()
        .trim_start_matches("http://")
        .to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_fragment_found_by_a_read_is_rewritten_in_place() {
    let cluster = Cluster::start(bin(), opts(4)).unwrap();
    let client = cluster.client().await.unwrap();
    let data = block(77, 1_000_000);
    let h = client.put(data.clone()).await.unwrap().hash;
    let st = client.stat(&h.to_hex()).await.unwrap();
    let vols = cluster.admin_get("/api/v1/volumes").await.unwrap();
    let vol = volumes_of(&vols)
        .into_iter()
        .find(|v| v["id"] == st.volume)
        .unwrap();
    let disk = vol["members"][0]["disk"].as_str().unwrap().to_string();
    let paths = disk_paths(&cluster).await;
    let dat = Path::new(&paths[&disk].0).join(format!("extents/{}/0.dat", st.volume));
    // Damage member 0's fragment (a data fragment, read on every whole-block get).
    let at = 4096 + st.offset + 100;
    let original = {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dat)
            .unwrap();
        let mut orig = vec![0u8; 64];
        f.read_exact_at(&mut orig, at).unwrap();
        let bad: Vec<u8> = orig.iter().map(|b| !b).collect();
        f.write_all_at(&bad, at).unwrap();
        orig
    };
    // A direct read first: its raw reads (sendfile, no crc32c on the server) bring the damaged bytes,
    // the block's hash catches them, and the checked path answers the right bytes.
    let raw_before = cluster.raw_read_bytes().await;
    assert_eq!(client.get_direct(&h).await.unwrap(), data);
    assert!(
        cluster.raw_read_bytes().await > raw_before,
        "the direct read did not use raw reads"
    );
    // The read through the frontend still answers the right bytes, decoded around the bad fragment.
    assert_eq!(client.get(&h).await.unwrap(), data);
    wait_for("range repaired", Duration::from_secs(30), || async {
        let r = cluster.admin_get("/api/v1/repair").await.ok()?;
        (r["ranges_repaired_total"].as_u64()? >= 1 && r["ranges"].as_array()?.is_empty())
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let now = {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&dat).unwrap();
        let mut b = vec![0u8; 64];
        f.read_exact_at(&mut b, at).unwrap();
        b
    };
    assert_eq!(now, original, "the fragment was not rewritten in place");
    // The member stayed where it was: no rebuild, same disk.
    let vols = cluster.admin_get("/api/v1/volumes").await.unwrap();
    let vol = volumes_of(&vols)
        .into_iter()
        .find(|v| v["id"] == st.volume)
        .unwrap();
    assert_eq!(vol["members"][0]["disk"].as_str().unwrap(), disk);
    assert_eq!(client.get(&h).await.unwrap(), data);
}

/// A repair daemon's log so far.
fn log_of(cluster: &Cluster, name: &str) -> String {
    std::fs::read_to_string(cluster.path().join(format!("{name}.log"))).unwrap_or_default()
}

/// A disk holding members, other than `not`.
async fn disk_with_members(cluster: &Cluster, not: &[String]) -> (String, String) {
    let disks = cluster.admin_get("/api/v1/disks").await.unwrap();
    let d = volumes_of(&disks)
        .into_iter()
        .filter(|d| !not.iter().any(|n| d["id"] == n.as_str()))
        .filter(|d| d["state"] == "ok")
        .max_by_key(|d| d["members"].as_u64().unwrap_or(0))
        .expect("a disk with members");
    (
        d["id"].as_str().unwrap().to_string(),
        d["path"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_repair_daemons_never_run_at_once_and_the_standby_takes_over() {
    let mut cluster = Cluster::start(bin(), opts(4)).unwrap();
    cluster.start_second_repair().unwrap();
    let client = cluster.client().await.unwrap();
    let blocks = fill(&client, 60, 5000).await;
    let names = ["repair", "repair-2"];
    let holder = wait_for(
        "one daemon holding the repair lease",
        Duration::from_secs(20),
        || async {
            let held: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| log_of(&cluster, n).contains("repair lease held"))
                .collect();
            let standing: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| log_of(&cluster, n).contains("standing by"))
                .collect();
            (held.len() == 1 && standing.len() == 1 && held[0] != standing[0]).then(|| held[0])
        },
    )
    .await
    .unwrap();
    let standby = if holder == "repair" {
        "repair-2"
    } else {
        "repair"
    };

    // A wiped disk is rebuilt by the holder alone.
    let (first, path) = disk_with_members(&cluster, &[]).await;
    wipe(&path);
    wait_whole(
        &cluster,
        &[],
        std::slice::from_ref(&first),
        Duration::from_secs(60),
    )
    .await;
    assert!(log_of(&cluster, holder).contains("volume repaired"));
    assert!(
        !log_of(&cluster, standby).contains("rebuild begun"),
        "the standby ran a rebuild while {holder} held the lease:\n{}",
        log_of(&cluster, standby)
    );

    // The holder is SIGKILLed: the standby takes the lease once it runs out, and repairs the next loss.
    if holder == "repair" {
        cluster.kill_repair();
    } else {
        cluster.second_repair.take().unwrap().kill();
    }
    let (second, path) = disk_with_members(&cluster, std::slice::from_ref(&first)).await;
    wipe(&path);
    wait_whole(&cluster, &[], &[first, second], Duration::from_secs(90)).await;
    let log = log_of(&cluster, standby);
    assert!(log.contains("repair lease held"), "{log}");
    assert!(log.contains("volume repaired"), "{log}");
    check_members(&cluster).await;
    for (h, seed, len) in blocks {
        assert_eq!(client.get(&h).await.unwrap(), block(seed, len));
    }
}
