//! Disks that fill or slow down, on real processes and a real size-capped filesystem: a volume server whose disks
//! are small tmpfs mounts fills up under a running cell. Appends to it fail cleanly (the disk is full,
//! not failed), the volumes they were for are sealed, puts move to other volumes without a client
//! error, new volumes stay off the full disks, the fill alert's series crosses its threshold, and
//! every acknowledged block reads back. A disk whose synced writes slow down (the volume server's fault
//! injector delays them) is marked slow within seconds, gets no new members while it is, and is no
//! longer slow once it is fast again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hoard_testkit::{Cluster, ClusterOpts, block, wait_for};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hoard"))
}

/// tmpfs mounts, unmounted when dropped (lazily: the volume server may still hold files open).
struct Mounts(Vec<PathBuf>);

impl Mounts {
    fn tmpfs(dirs: &[PathBuf], size: &str) -> Mounts {
        let mut m = Mounts(Vec::new());
        for d in dirs {
            std::fs::create_dir_all(d).unwrap();
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(d)
                .output()
                .expect("mount runs");
            assert!(
                out.status.success(),
                "this test needs to mount a small tmpfs (root, or CAP_SYS_ADMIN): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            m.0.push(d.clone());
        }
        m
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = Command::new("umount").arg("-l").arg(d).status();
        }
    }
}

/// Writes filler into `dir` until its filesystem refuses more (ENOSPC).
fn fill(dir: &Path) {
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0x5a_u8; 256 << 10];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    let _ = f.sync_all();
}

fn libc_enospc() -> i32 {
    28 // ENOSPC on Linux
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_that_fills_fails_its_appends_cleanly_and_puts_go_elsewhere() {
    let mut cluster = Cluster::start(
        bin(),
        ClusterOpts {
            start_volumes: Some(0),
            extent_size: "8MiB".into(),
            ..ClusterOpts::default()
        },
    )
    .expect("cluster starts");
    // The fourth server's three disks are 40 MiB filesystems of their own.
    let dirs = cluster.disk_dirs(3);
    let _mounts = Mounts::tmpfs(&dirs, "40m");
    for v in 0..4 {
        cluster.start_volume(v).unwrap();
    }
    let on_small = |v: &Value| {
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["node"] == "vol-3")
    };
    // Puts until some open volume has a member on the small disks.
    let client = cluster.client().await.unwrap();
    let mut acked = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        assert!(
            std::time::Instant::now() < deadline,
            "no open volume placed a member on the fourth server"
        );
        let b = block(i, 100_000);
        acked.push((client.put(b.clone()).await.unwrap().hash, b));
        let vols = cluster.admin_get("/api/v1/volumes").await.unwrap();
        if vols
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["state"] == "open" && on_small(v))
        {
            break;
        }
    }

    for d in &dirs {
        fill(d);
    }
    // Puts go on, with no error: the full disk's volumes are sealed and the puts move.
    for j in 0..60u64 {
        let b = block(10_000 + j, 200_000 + (j as usize % 5) * 50_000);
        let h = client
            .put(b.clone())
            .await
            .unwrap_or_else(|e| panic!("put {j} after the disk filled: {e}"))
            .hash;
        acked.push((h, b));
    }
    let vols = cluster.admin_get("/api/v1/volumes").await.unwrap();
    let vols = vols.as_array().unwrap();
    let sealed_full: Vec<&Value> = vols
        .iter()
        .filter(|v| v["state"] == "sealed" && on_small(v))
        .collect();
    assert!(
        !sealed_full.is_empty(),
        "no volume with a member on the full disks was sealed: {vols:#?}"
    );
    let reasons: Vec<&str> = sealed_full
        .iter()
        .filter_map(|v| v["seal_reason"].as_str())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("full (member") && r.contains("the disk is full")),
        "no volume was sealed as full (rather than failed): {reasons:?}"
    );
    for v in vols.iter().filter(|v| v["state"] == "open") {
        assert!(
            !on_small(v),
            "open volume {} has a member on a full disk",
            v["id"]
        );
    }
    // Full is not failed: the disks stay in service for reads, and nothing is rebuilt.
    let disks = cluster.admin_get("/api/v1/disks").await.unwrap();
    for d in disks.as_array().unwrap() {
        if d["node"] == "vol-3" {
            assert_eq!(d["state"], "ok", "a full disk is not a failed one: {d}");
        }
    }
    assert!(cluster.volumes[3].as_mut().unwrap().alive());
    let repair = cluster.admin_get("/api/v1/repair").await.unwrap();
    assert_eq!(repair["lost_volumes"], 0, "{repair}");
    // The alert's series: the fill of each full disk above the high water (0.9), and the refusals
    // counted.
    // (meta publishes its gauges every second, from the heartbeats' free bytes).
    let fills = wait_for(
        "the full disks' fill above 0.9",
        Duration::from_secs(15),
        || async {
            let m = cluster.metrics_of(cluster.meta.as_ref()?).await.ok()?;
            let fills: Vec<f64> = m
                .lines()
                .filter(|l| l.starts_with("hoard_disk_fill_ratio{") && l.contains("node=\"vol-3\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
                .collect();
            (fills.len() == 3 && fills.iter().all(|f| *f > 0.9)).then_some(fills)
        },
    )
    .await
    .unwrap();
    let refused = cluster
        .counter_of(
            cluster.volumes[3].as_ref().unwrap(),
            "hoard_volume_disk_full_total",
        )
        .await;
    assert!(refused > 0, "no append was refused as disk-full");
    eprintln!(
        "{} blocks acknowledged; {} volumes sealed as full; {refused} appends refused; fill {fills:?}",
        acked.len(),
        sealed_full.len()
    );
    for (h, b) in &acked {
        assert_eq!(&client.get(h).await.unwrap(), b, "block {h}");
    }
}

/// The `/api/v1/disks` entry of disk `id`.
async fn disk_entry(cluster: &Cluster, id: &str) -> Option<Value> {
    let disks = cluster.admin_get("/api/v1/disks").await.ok()?;
    disks.as_array()?.iter().find(|d| d["id"] == id).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_whose_latency_climbs_is_marked_slow_and_gets_no_new_members() {
    let cluster = Cluster::start(
        bin(),
        ClusterOpts {
            extent_size: "2MiB".into(),
            open_volumes: 2,
            repair: false,
            volume_extra: "slow_disk = \"100ms\"".into(),
            ..ClusterOpts::default()
        },
    )
    .expect("cluster starts");
    let client = cluster.client().await.unwrap();
    let mut stored = Vec::new();
    for i in 0..5u64 {
        let b = block(i, 256 << 10);
        stored.push((client.put(b.clone()).await.unwrap().hash, b));
    }
    let disks = cluster.admin_get("/api/v1/disks").await.unwrap();
    let victim = disks
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["members"].as_u64().unwrap_or(0) > 0)
        .expect("a disk with members")
        .clone();
    let id = victim["id"].as_str().unwrap().to_string();
    assert_eq!(victim["slow"], false, "{victim}");
    // Every synced write to it now takes 300 ms more (the fault injector's file; see hoard_volume::slow).
    let fault = Path::new(victim["path"].as_str().unwrap()).join(".hoard-fault-delay");
    std::fs::write(&fault, "300ms").unwrap();
    let marked = wait_for("the disk marked slow", Duration::from_secs(30), || async {
        let d = disk_entry(&cluster, &id).await?;
        (d["slow"] == true).then_some(d)
    })
    .await
    .unwrap();
    assert!(
        marked["state"].as_str().unwrap().starts_with("slow"),
        "{marked}"
    );
    assert!(marked["sync_ms"].as_u64().unwrap() >= 300, "{marked}");
    wait_for("hoard_disk_slow at 1", Duration::from_secs(20), || async {
        let m = cluster.metrics_of(cluster.meta.as_ref()?).await.ok()?;
        m.lines()
            .any(|l| l.starts_with("hoard_disk_slow{") && l.contains(&id) && l.ends_with(" 1"))
            .then_some(())
    })
    .await
    .unwrap();
    let volumes = cluster.admin_get("/api/v1/volumes").await.unwrap();
    let before = volumes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["id"].as_u64())
        .max()
        .unwrap();

    // 60 MiB more: several new volumes (each holds 12 MiB), none of them on the slow disk.
    for i in 0..60u64 {
        let b = block(100 + i, 1 << 20);
        let p = client
            .put(b.clone())
            .await
            .expect("a put beside a slow disk");
        stored.push((p.hash, b));
    }
    let volumes = cluster.admin_get("/api/v1/volumes").await.unwrap();
    let new: Vec<&Value> = volumes
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["id"].as_u64().unwrap() > before)
        .collect();
    assert!(new.len() >= 2, "only {} new volumes", new.len());
    for v in &new {
        let on_it = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["disk"] == id.as_str());
        assert!(
            !on_it,
            "volume {} placed a member on the slow disk {id}",
            v["id"]
        );
    }

    // Fast again: no longer slow, once its recent probes say so.
    std::fs::remove_file(&fault).unwrap();
    wait_for(
        "the disk no longer slow",
        Duration::from_secs(30),
        || async {
            let d = disk_entry(&cluster, &id).await?;
            (d["slow"] == false && d["state"] == "ok").then_some(())
        },
    )
    .await
    .unwrap();
    for (h, b) in &stored {
        assert_eq!(&client.get(h).await.unwrap(), b);
    }
}
