//! Deletes on a real cell of processes: the delete contract under racing dedup puts and
//! `FindMissing`, retention and undelete, and compaction emptying sparse volumes while its roles are
//! SIGKILLed, with every live block read back byte-exact; the retired extents leave the trash only
//! under meta's clearance, and one unlinked without it halts every unlink.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use hoard_proto::v1::{DeleteResult, UndeleteResult};
use hoard_testkit::{Cluster, ClusterOpts, block, dir_size, wait_for};
use hoard_types::BlockHash;
use rand::{Rng, SeedableRng};
use tonic::Code;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hoard"))
}

/// The cell's delete timers, shrunk: a block told present is kept for a second; deleted bytes stay
/// eight.
const TIMERS: &str =
    "reference_window = \"1s\"\nassert_refresh = \"100ms\"\ndelete_grace = \"8s\"\n";

/// Longer than the window, the refresh and meta's clock's allowances: a block asserted this long ago
/// may be deleted.
const OLD: Duration = Duration::from_millis(3500);

fn start(opts: ClusterOpts) -> Cluster {
    Cluster::start(
        bin(),
        ClusterOpts {
            meta_extra: TIMERS.into(),
            ..opts
        },
    )
    .expect("cluster starts")
}

fn code_of(e: &hoard_client::ClientError) -> Option<Code> {
    e.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedup_puts_and_find_missing_racing_deletes_lose_no_block_a_client_was_told_is_present() {
    let cluster = start(ClusterOpts {
        repair: false,
        ..ClusterOpts::default()
    });
    let client = cluster.client().await.unwrap();
    const ROUNDS: u64 = 1500;
    // Old blocks: asserted longer ago than the window, so that a delete alone would remove them.
    let blocks: Vec<bytes::Bytes> = (0..ROUNDS)
        .map(|i| block(90_000 + i, 1 + (i as usize % 700)))
        .collect();
    futures::future::try_join_all(blocks.chunks(50).map(|chunk| {
        let client = client.clone();
        async move {
            for b in chunk {
                client.put(b.clone()).await?;
            }
            Ok::<_, hoard_client::ClientError>(())
        }
    }))
    .await
    .unwrap();
    tokio::time::sleep(OLD).await;
    let (mut told, mut deleted, mut kept) = (0u64, 0u64, 0u64);
    let mut rounds = futures::stream::iter(blocks.iter().enumerate().map(|(i, b)| {
        let client = client.clone();
        let b = b.clone();
        async move {
            let hash = BlockHash::of(&b).to_hex();
            // A collector took its token before it read the references (none names the block)...
            let token = client.delete_token().await.unwrap().token;
            // ...and deletes while a client asks for the block, by a dedup put or FindMissing.
            // Whether the client was told the block is present: a put always leaves it so
            // (deduplicated, revived, or written again); FindMissing when it does not list it.
            let ask = async {
                if i % 2 == 0 {
                    client.put(b.clone()).await.unwrap();
                    true
                } else {
                    client
                        .find_missing(std::slice::from_ref(&hash))
                        .await
                        .unwrap()
                        .is_empty()
                }
            };
            let (answer, result) =
                tokio::join!(ask, client.delete(std::slice::from_ref(&hash), token));
            let result = result.unwrap()[0];
            (i, hash, answer, result)
        }
    }))
    .buffer_unordered(8);
    while let Some((i, hash, present, result)) = rounds.next().await {
        match result {
            DeleteResult::Deleted => deleted += 1,
            DeleteResult::Kept => kept += 1,
            other => panic!("round {i}: delete answered {other:?}"),
        }
        if present {
            told += 1;
            // The client was told the block is present, and references it: it must read back.
            let got = client
                .get(&hash.parse().unwrap())
                .await
                .unwrap_or_else(|e| {
                    panic!("round {i}: told present, then {e} (delete: {result:?})")
                });
            assert_eq!(got, blocks[i], "round {i}: the block changed");
        }
    }
    eprintln!("{ROUNDS} rounds: told present {told}, deleted {deleted}, kept {kept}");
    // Both orders happened: deletes that came first, and deletes that found a fresh assertion.
    assert!(deleted > 0 && kept > 0, "deleted {deleted}, kept {kept}");
    assert!(told > ROUNDS / 2, "told present only {told} times");
}

/// Bytes on every disk, and of them in the trash.
fn disk_bytes(cluster: &Cluster) -> (u64, u64) {
    (0..cluster.volumes.len())
        .flat_map(|i| cluster.disk_dirs(i))
        .map(|d| (dir_size(&d), dir_size(&d.join("trash"))))
        .fold((0, 0), |(a, b), (x, y)| (a + x, b + y))
}

async fn trash(cluster: &Cluster) -> serde_json::Value {
    cluster.admin_get("/api/v1/trash").await.unwrap()
}

async fn compaction(cluster: &Cluster) -> serde_json::Value {
    cluster.admin_get("/api/v1/compaction").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_blocks_are_undeletable_within_grace_then_compacted_away_through_kills() {
    let mut cluster = Cluster::start(
        bin(),
        ClusterOpts {
            extent_size: "4MiB".into(),
            open_volumes: 1,
            meta_extra: format!("{TIMERS}trash_inspect_every = \"500ms\"\n"),
            volume_extra: "trash_grace = \"1s\"".into(),
            ..ClusterOpts::default()
        },
    )
    .expect("cluster starts");
    let client = cluster.client().await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let sizes: Vec<usize> = (0..1000)
        .map(|i| match i % 10 {
            0 => rng.random_range(1..64),
            1..=6 => rng.random_range(1_000..64_000),
            _ => rng.random_range(100_000..600_000),
        })
        .collect();
    let hashes: Vec<String> =
        futures::future::try_join_all(sizes.chunks(100).enumerate().map(|(c, chunk)| {
            let client = client.clone();
            async move {
                let mut out = Vec::new();
                for (j, &len) in chunk.iter().enumerate() {
                    out.push(
                        client
                            .put(block((c * 100 + j) as u64, len))
                            .await?
                            .hash
                            .to_hex(),
                    );
                }
                Ok::<_, hoard_client::ClientError>(out)
            }
        }))
        .await
        .unwrap()
        .concat();
    let seed_of = |i: usize| i as u64;
    // Past the reference window, delete 70%.
    tokio::time::sleep(OLD).await;
    // 70% of each size class.
    let dead: Vec<usize> = (0..hashes.len()).filter(|i| (i / 10) % 10 < 7).collect();
    let names: Vec<String> = dead.iter().map(|&i| hashes[i].clone()).collect();
    let token = client.delete_token().await.unwrap().token;
    let out = client.delete(&names, token).await.unwrap();
    assert!(out.iter().all(|r| *r == DeleteResult::Deleted), "{out:?}");
    // Deleted: NOT_FOUND to Get and Stat, listed by FindMissing, not found again by a second delete.
    let e = client.get(&names[0].parse().unwrap()).await.unwrap_err();
    assert_eq!(code_of(&e), Some(Code::NotFound), "{e}");
    let e = client.stat(&names[0]).await.unwrap_err();
    assert_eq!(code_of(&e), Some(Code::NotFound), "{e}");
    assert_eq!(
        client.find_missing(&names[..50]).await.unwrap(),
        names[..50].to_vec()
    );
    assert_eq!(
        client.delete(&names[..1], token).await.unwrap(),
        vec![DeleteResult::AlreadyDeleted]
    );
    // Within the grace: undelete brings some back, a put of the same bytes others, byte-exact and
    // without writing anything.
    let mut live: BTreeSet<usize> = (0..hashes.len()).filter(|i| (i / 10) % 10 >= 7).collect();
    let undeleted: Vec<usize> = dead.iter().copied().step_by(50).collect();
    let back = client
        .undelete(
            &undeleted
                .iter()
                .map(|&i| hashes[i].clone())
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    assert!(
        back.iter().all(|r| *r == UndeleteResult::Restored),
        "{back:?}"
    );
    for &i in dead.iter().skip(25).step_by(50) {
        let p = client.put(block(seed_of(i), sizes[i])).await.unwrap();
        assert!(
            p.deduplicated,
            "a re-put within the grace revives the block in place"
        );
        live.insert(i);
    }
    live.extend(undeleted.iter().copied());
    for &i in &live {
        if dead.contains(&i) {
            let got = client.get(&hashes[i].parse().unwrap()).await.unwrap();
            assert_eq!(
                got,
                block(seed_of(i), sizes[i]),
                "block {i} came back changed"
            );
        }
    }
    let dead_bytes: u64 = dead
        .iter()
        .filter(|i| !live.contains(i))
        .map(|&i| sizes[i] as u64)
        .sum();
    let (before, _) = disk_bytes(&cluster);
    // Past the grace, compaction runs unthrottled; SIGKILLs of the compactor, a volume server, the
    // frontend and meta partway.
    tokio::time::sleep(Duration::from_secs(9)).await;
    cluster
        .admin_post(
            "/api/v1/compaction/throttle",
            serde_json::json!({"bytes_per_sec": 0, "concurrency": 4}),
        )
        .await
        .unwrap();
    cluster
        .admin_post("/api/v1/compaction/start", serde_json::json!({}))
        .await
        .unwrap();
    if let Err(e) = wait_for("compaction under way", Duration::from_secs(60), || async {
        (compaction(&cluster).await["donor_moved_bytes"].as_u64()? > 0).then_some(())
    })
    .await
    {
        panic!(
            "{e}\ncompaction: {}\nvolumes: {}\n{}",
            compaction(&cluster).await,
            cluster.admin_get("/api/v1/volumes").await.unwrap(),
            cluster.logs()
        );
    }
    // Each kill lands at a seeded random point of the donor being emptied.
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
    cluster.kill_repair();
    cluster.start_repair().unwrap();
    wait_for("a volume compacted", Duration::from_secs(60), || async {
        (compaction(&cluster).await["volumes_compacted_total"].as_u64()? >= 1).then_some(())
    })
    .await
    .unwrap();
    // A volume server dies while a donor is emptied (its members read degraded, writes go to
    // volumes without it) and comes back.
    let moved = compaction(&cluster).await["moved_blocks_total"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
    cluster.kill_volume(1);
    wait_for("compaction goes on", Duration::from_secs(60), || async {
        (compaction(&cluster).await["moved_blocks_total"].as_u64()? > moved).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    cluster.start_volume(1).unwrap();
    // The frontend serving clients dies mid-compaction too (the compactor has its own write path).
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
    cluster.kill_frontend();
    cluster.start_frontend().unwrap();
    let client = cluster.client().await.unwrap();
    cluster.restart_meta_same_port().unwrap();
    // Done when no sealed volume is over the threshold and none is being emptied.
    wait_for(
        "every sparse volume compacted",
        Duration::from_secs(180),
        || async {
            cluster
                .admin_post("/api/v1/compaction/start", serde_json::json!({}))
                .await
                .ok()?;
            let c = compaction(&cluster).await;
            let vols = cluster.admin_get("/api/v1/volumes").await.ok()?;
            let sparse = vols.as_array()?.iter().any(|v| {
                let (live, dead) = (
                    v["bytes"].as_u64().unwrap_or(0),
                    v["dead_bytes"].as_u64().unwrap_or(0),
                );
                v["state"] == "sealed" && dead > 0 && dead as f64 >= 0.3 * (live + dead) as f64
            });
            (c["donor"].as_u64()? == 0 && !sparse).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    // The donors' extents leave the trash under meta's clearances, once the trash grace passed.
    if let Err(e) = wait_for("the trash emptied", Duration::from_secs(60), || async {
        let t = trash(&cluster).await;
        (disk_bytes(&cluster).1 == 0 && t["entries"] == 0).then_some(())
    })
    .await
    {
        panic!("{e}\ntrash: {}\n{}", trash(&cluster).await, cluster.logs());
    }
    let t = trash(&cluster).await;
    assert_eq!(t["halted"], "", "{t}");
    assert_eq!(t["unlinks_without_clearance_total"], 0, "{t}");
    assert_eq!(t["violations_total"], 0, "{t}");
    assert!(t["unlinks_total"].as_u64().unwrap() > 0, "{t}");
    let (after, _) = disk_bytes(&cluster);
    let c = compaction(&cluster).await;
    eprintln!(
        "disk bytes {before} -> {after}, dead block bytes {dead_bytes}; compaction {c}; trash {t}"
    );
    assert!(
        before.saturating_sub(after) as f64 >= 0.9 * dead_bytes as f64,
        "disk bytes fell from {before} to {after}: less than 90% of {dead_bytes} dead bytes"
    );
    assert!(c["moved_blocks_total"].as_u64().unwrap() > 0);
    // Every live block reads back byte-exact; the deleted ones are gone, also for Undelete.
    for &i in &live {
        let got = client
            .get(&hashes[i].parse().unwrap())
            .await
            .unwrap_or_else(|e| panic!("live block {i}: {e}"));
        assert_eq!(got, block(seed_of(i), sizes[i]), "live block {i} changed");
    }
    let gone: Vec<String> = dead
        .iter()
        .filter(|i| !live.contains(i))
        .take(20)
        .map(|&i| hashes[i].clone())
        .collect();
    assert!(
        client
            .undelete(&gone)
            .await
            .unwrap()
            .iter()
            .all(|r| *r == UndeleteResult::NotFound)
    );
    let e = client.get(&gone[0].parse().unwrap()).await.unwrap_err();
    assert_eq!(code_of(&e), Some(Code::NotFound), "{e}");
    // An extent unlinked without a clearance (here: a trashed extent of a volume meta never knew,
    // which it never clears, removed by hand) halts every unlink in the cell until resumed.
    let entry = cluster.disk_dirs(0)[0]
        .join("trash")
        .join(format!("v999999-m0-g1-{}", hoard_types::now_ms()));
    std::fs::create_dir_all(&entry).unwrap();
    std::fs::write(entry.join("0.dat"), b"not cleared").unwrap();
    wait_for(
        "the entry in the ledger",
        Duration::from_secs(30),
        || async {
            let t = trash(&cluster).await;
            let listed = t["waiting"].as_array()?.iter().any(|e| {
                e["waiting"]
                    .as_str()
                    .unwrap_or("")
                    .contains("unknown to meta")
            });
            listed.then_some(())
        },
    )
    .await
    .unwrap();
    std::fs::remove_dir_all(&entry).unwrap();
    wait_for("unlinks halted", Duration::from_secs(30), || async {
        let t = trash(&cluster).await;
        (t["unlinks_without_clearance_total"] == 1).then_some(t)
    })
    .await
    .unwrap();
    let t = trash(&cluster).await;
    assert!(
        t["halted"].as_str().unwrap().contains("v999999-m0-g1"),
        "{t}"
    );
    let t: serde_json::Value = cluster
        .admin_post("/api/v1/trash/resume", serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(t["halted"], "", "{t}");
}
