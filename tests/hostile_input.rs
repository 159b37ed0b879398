//! Hostile input on real processes: every request of the security review that once killed a process,
//! failed a disk, overwrote an extent or retired volumes is replayed against a running cell, next to
//! the malformed requests that were always refused. After each group every process is alive, no disk
//! has failed, no volume is degraded or lost, and every block reads back byte-exact.
//!
//! `HOARD_BIN` runs the same inputs against another build of the binary (to see them fail there).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use hoard_proto::raw::{self, RawAppend, RawError, RawRead};
use hoard_proto::v1;
use hoard_testkit::{Cluster, ClusterOpts, block, wait_for};
use hoard_types::{BlockHash, Geometry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

fn bin() -> PathBuf {
    std::env::var_os("HOARD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hoard")))
}

/// The blocks the test stored: hash, seed, length.
type Stored = Vec<(BlockHash, u64, usize)>;

/// Every process alive, every disk ok, every volume open or sealed, every block byte-exact.
async fn assert_unharmed(cluster: &mut Cluster, stored: &Stored, after: &str) {
    let dead = cluster.dead();
    assert!(
        dead.is_empty(),
        "after {after}: {dead:?} died\n{}",
        cluster.logs()
    );
    let disks = cluster.admin_get("/api/v1/disks").await.unwrap();
    for d in disks.as_array().unwrap() {
        assert_eq!(d["state"], "ok", "after {after}: disk {d}");
    }
    let volumes = cluster.admin_get("/api/v1/volumes").await.unwrap();
    for v in volumes.as_array().unwrap() {
        assert!(
            v["state"] == "open" || v["state"] == "sealed",
            "after {after}: volume {v}"
        );
        for m in v["members"].as_array().unwrap() {
            assert_eq!(m["state"], "ok", "after {after}: volume {v}");
        }
    }
    let client = cluster.client().await.unwrap();
    let reads = futures::stream::iter(stored.clone())
        .map(|(h, seed, len)| {
            let c = client.clone();
            async move { (c.get(&h).await, seed, len) }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    for (got, seed, len) in reads {
        let got = got.unwrap_or_else(|e| panic!("after {after}: block {seed}: {e}"));
        assert!(
            got == block(seed, len),
            "after {after}: block {seed} differs"
        );
    }
}

async fn blockstore(
    cluster: &Cluster,
) -> v1::block_store_client::BlockStoreClient<tonic::transport::Channel> {
    v1::block_store_client::BlockStoreClient::connect(cluster.endpoint())
        .await
        .unwrap()
}

async fn volume_client(addr: &str) -> v1::volume_client::VolumeClient<tonic::transport::Channel> {
    v1::volume_client::VolumeClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

async fn meta_client(cluster: &Cluster) -> v1::meta_client::MetaClient<tonic::transport::Channel> {
    v1::meta_client::MetaClient::connect(cluster.meta_url().to_string())
        .await
        .unwrap()
}

/// A Get through the public API, collected.
async fn get(
    cluster: &Cluster,
    hash: &str,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, tonic::Status> {
    let mut c = blockstore(cluster).await;
    let mut s = c
        .get(v1::GetRequest {
            hash: hash.into(),
            offset,
            length,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.next().await {
        out.extend_from_slice(&m?.data);
    }
    Ok(out)
}

/// An extent in service somewhere: its server's address and what the inventory says of it.
async fn some_extent(cluster: &Cluster) -> (String, v1::ExtentInfo) {
    for p in cluster.volumes.iter().flatten() {
        let addr = p.addr("volume").to_string();
        let inv = volume_client(&addr)
            .await
            .inventory(v1::InventoryRequest {})
            .await
            .unwrap()
            .into_inner();
        if let Some(e) = inv.extents.into_iter().find(|e| e.data_len > 0) {
            return (addr, e);
        }
    }
    panic!("no extent with data");
}

/// A raw append of a 4 KiB fragment (of a 24,576-byte block in 6+3) at `offset` of `extent`, with the
/// extent's own epoch: everything right but where it lands.
fn append_at(e: &v1::ExtentInfo, offset: u64) -> (RawAppend, Bytes) {
    let frag = Bytes::from(vec![0x5au8; 4096]);
    let r = e.extent.unwrap();
    let mut crcs = vec![0u32; (e.k + e.m) as usize];
    crcs[r.member as usize] = hoard_erasure::crc(&frag);
    assert_eq!(Geometry::new(e.k, e.m).unwrap().frag_len(24_576), 4096);
    (
        RawAppend {
            volume: r.volume,
            member: r.member,
            generation: r.generation,
            epoch: e.epoch,
            hash: *BlockHash::of(b"forged").as_bytes(),
            offset,
            frag_len: 4096,
            block_len: 24_576,
            crcs,
        },
        frag,
    )
}

/// A raw read of `len` bytes at `offset` of the extent `r`.
fn read_of(r: &v1::ExtentRef, offset: u64, len: u32) -> RawRead {
    RawRead {
        volume: r.volume,
        member: r.member,
        generation: r.generation,
        offset,
        len,
    }
}

fn refused(r: Result<(), RawError>) -> String {
    match r {
        Err(RawError::Refused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A cell holding blocks of every size class, unharmed so far.
async fn cell_with_blocks() -> (Cluster, hoard_testkit::Client, Stored) {
    let mut cluster = Cluster::start(
        &bin(),
        ClusterOpts {
            extent_size: "16MiB".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let client = cluster.client().await.unwrap();
    let mut stored: Stored = Vec::new();
    for seed in 0..24u64 {
        let len = [2usize, 100, 70_000, 300_000, 1_000_000, 4 << 20][seed as usize % 6];
        let h = client.put(block(seed, len)).await.unwrap().hash;
        stored.push((h, seed, len));
    }
    assert_unharmed(&mut cluster, &stored, "the puts").await;
    (cluster, client, stored)
}

/// A range whose end wraps once asked for 2^61 bytes and aborted the whole cell.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn public_gets_with_ranges_past_the_block_are_refused() {
    let (mut cluster, _client, stored) = cell_with_blocks().await;
    let two = stored[0].0.to_hex();
    // -- The public port. A range whose end wraps once asked for 2^61 bytes and aborted the process.
    for (offset, length) in [
        (1, u64::MAX),
        (2, 0),
        (u64::MAX, 1),
        (1 << 63, 1 << 63),
        (0, 3),
    ] {
        let e = get(&cluster, &two, offset, length).await.unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange, "{offset}+{length}: {e:?}");
        assert!(e.message().contains("past the end"), "{}", e.message());
    }
    assert_eq!(
        get(&cluster, &two, 1, 1).await.unwrap(),
        block(0, 2)[1..].to_vec()
    );
    assert_unharmed(&mut cluster, &stored, "out-of-range gets").await;
}

/// Reads that once failed a disk, appends that once overwrote an extent's header.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volume_requests_out_of_range_fail_no_disk_and_overwrite_nothing() {
    let (mut cluster, _client, stored) = cell_with_blocks().await;
    // -- The volume port: reads that once failed a disk, appends that once overwrote a header.
    let (addr, e) = some_extent(&cluster).await;
    let r = e.extent.unwrap();
    let mut vc = volume_client(&addr).await;
    let read = |offset, frag_len| v1::ReadFragmentRequest {
        extent: Some(r),
        offset,
        frag_len,
        expected_crc: 0,
        hash: Bytes::new(),
    };
    let s = vc.read_fragment(read(1 << 63, 4096)).await.unwrap_err();
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    let s = vc.read_fragment(read(0, u32::MAX)).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    let s = vc
        .read_range(v1::ReadRangeRequest {
            extent: Some(r),
            offset: u64::MAX - 10,
            len: 4096,
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    let pool = hoard_net::Pool::default();
    let mut buf = bytes::BytesMut::with_capacity(4096);
    let m = match pool.read(&addr, read_of(&r, 1 << 63, 4096), &mut buf).await {
        Err(RawError::Refused(m)) => m,
        other => panic!("raw read at 2^63: {other:?}"),
    };
    assert!(m.contains("lies past"), "{m}");
    for offset in [u64::MAX - 4095, u64::MAX - 8191, 0, e.data_len - 1] {
        let (req, frag) = append_at(&e, offset);
        let m = refused(
            pool.append(&addr, &req, &frag, Duration::from_secs(10))
                .await,
        );
        assert!(
            m.contains("capacity") || m.contains("largest extent") || m.contains("append-only"),
            "append at {offset}: {m}"
        );
    }
    // gRPC appends take the same checks.
    let (req, frag) = append_at(&e, u64::MAX - 4095);
    let s = vc
        .append(v1::AppendRequest {
            extent: Some(r),
            epoch: req.epoch,
            record: Some(v1::BlockRecord {
                hash: Bytes::copy_from_slice(&req.hash),
                offset: req.offset,
                frag_len: req.frag_len,
                block_len: req.block_len,
                crcs: req.crcs.clone(),
            }),
            fragment: frag,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(s.code(), Code::OutOfRange | Code::InvalidArgument),
        "{s:?}"
    );
    // A geometry whose k + m wraps, a member past it, a capacity no extent has.
    for (k, m, member, capacity) in [
        (u32::MAX, 2, 0, 1 << 20),
        (6, 3, 9, 1 << 20),
        (6, 3, 0, u64::MAX),
    ] {
        let s = vc
            .create_extent(v1::CreateExtentRequest {
                extent: Some(v1::ExtentRef {
                    volume: 1 << 40,
                    member,
                    generation: 1,
                }),
                disk_id: "nope".into(),
                k,
                m,
                capacity,
            })
            .await
            .unwrap_err();
        assert_eq!(
            s.code(),
            Code::InvalidArgument,
            "{k}+{m} member {member}: {s:?}"
        );
    }
    assert_unharmed(&mut cluster, &stored, "out-of-range volume requests").await;

    // The extent still opens after a restart of its server: nothing touched its header.
    let server = cluster
        .volumes
        .iter()
        .position(|p| {
            p.as_ref()
                .is_some_and(|p| p.addr("volume").to_string() == addr)
        })
        .unwrap();
    cluster.kill_volume(server);
    cluster.start_volume(server).unwrap();
    let restarted = cluster.volumes[server]
        .as_ref()
        .unwrap()
        .addr("volume")
        .to_string();
    wait_for(
        "the restarted server to list the extent",
        Duration::from_secs(30),
        || {
            let restarted = restarted.clone();
            async move {
                let inv = v1::volume_client::VolumeClient::connect(format!("http://{restarted}"))
                    .await
                    .ok()?
                    .inventory(v1::InventoryRequest {})
                    .await
                    .ok()?
                    .into_inner();
                inv.extents
                    .iter()
                    .any(|x| x.extent == Some(r) && x.data_len == e.data_len)
                    .then_some(())
            }
        },
    )
    .await
    .unwrap();
    wait_for(
        "every member back in service",
        Duration::from_secs(30),
        || async {
            let v = cluster.admin_get("/api/v1/volumes").await.ok()?;
            v.as_array()?
                .iter()
                .all(|v| {
                    v["members"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|m| m["state"] == "ok")
                })
                .then_some(())
        },
    )
    .await
    .unwrap();
    assert_unharmed(&mut cluster, &stored, "a restart after hostile appends").await;
}

/// Heartbeats that once wrapped the volume-id counter (retiring volumes), took a live node's address,
/// or reported another node's disk failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_heartbeats_move_no_counter_and_take_no_name() {
    let (mut cluster, _client, stored) = cell_with_blocks().await;
    // -- The meta port: a heartbeat that once wrapped the volume-id counter, one that takes a live
    // node's name, one that reports another node's disk failed.
    let mut mc = meta_client(&cluster).await;
    let status = mc
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let before: Vec<u64> = status.volumes.iter().map(|v| v.id).collect();
    let real = status.disks[0].disk.clone().unwrap();
    mc.heartbeat(v1::HeartbeatRequest {
        node_id: "evil-node".into(),
        address: "127.0.0.1:9".into(),
        extents: vec![v1::ExtentInfo {
            extent: Some(v1::ExtentRef {
                volume: u64::MAX,
                member: 0,
                generation: 1,
            }),
            disk_id: "evil-disk".into(),
            ..Default::default()
        }],
        disks: vec![v1::DiskInfo {
            state: "failed: forged".into(),
            ..real.clone()
        }],
        interval_ms: 1000,
        ..Default::default()
    })
    .await
    .unwrap();
    for _ in 0..4 {
        let got = mc
            .acquire_volume(v1::AcquireVolumeRequest {
                holder: "evil-frontend".into(),
                exclude: before.clone(),
            })
            .await;
        if let Ok(g) = got {
            let id = g.into_inner().volume.unwrap().id;
            assert!(
                !before.contains(&id) && id != 0 && id != u64::MAX,
                "new volume id {id}"
            );
        }
    }
    let victim = &status.nodes[0];
    let s = mc
        .heartbeat(v1::HeartbeatRequest {
            node_id: victim.node_id.clone(),
            address: "127.0.0.1:9".into(),
            interval_ms: 1000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(
        s.message().contains("cannot take its name"),
        "{}",
        s.message()
    );
    let after = mc
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    for v in after.volumes.iter().filter(|v| before.contains(&v.id)) {
        assert_ne!(v.state, "retired", "volume {} was retired", v.id);
    }
    let n = after
        .nodes
        .iter()
        .find(|n| n.node_id == victim.node_id)
        .unwrap();
    assert_eq!(
        n.address, victim.address,
        "a heartbeat took {}'s address",
        n.node_id
    );
    let d = after
        .disks
        .iter()
        .find(|d| d.disk.as_ref().unwrap().disk_id == real.disk_id)
        .unwrap();
    assert_eq!(
        d.node_id, status.disks[0].node_id,
        "a heartbeat took a live node's disk"
    );
    // The repair daemon had a second to react to anything the heartbeats changed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_unharmed(&mut cluster, &stored, "forged heartbeats").await;
}

/// Idle raw connections, bodiless appends, half HTTP/2 prefaces and unfinished admin heads: a normal
/// put and get are not delayed, and all of them are closed within their deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_and_slow_connections_delay_nothing_and_are_closed() {
    let (mut cluster, client, mut stored) = cell_with_blocks().await;
    let (addr, e) = some_extent(&cluster).await;
    let r = e.extent.unwrap();
    // -- Cheap exhaustion: idle and slow connections must not delay a normal put or get.
    let fe = cluster.frontend.as_ref().unwrap().addr("frontend");
    let mut idle = Vec::new();
    for _ in 0..1030 {
        if let Ok(mut s) = TcpStream::connect(addr.as_str()).await {
            let _ = s.write_all(&[0xF7]).await;
            idle.push(s);
        }
    }
    for _ in 0..70 {
        // Headers of appends of 4 MiB + 4 KiB to a volume that does not exist, and no fragment.
        let mut s = TcpStream::connect(addr.as_str()).await.unwrap();
        let (mut req, _) = append_at(&e, e.data_len);
        req.volume = 1 << 50;
        req.frag_len = raw::MAX_APPEND;
        s.write_all(&req.encode_header()).await.unwrap();
        idle.push(s);
    }
    for _ in 0..50 {
        // Half an HTTP/2 preface on the frontend's port, and nothing more.
        let mut s = TcpStream::connect(fe).await.unwrap();
        s.write_all(b"P").await.unwrap();
        idle.push(s);
    }
    let started = Instant::now();
    let h = client.put(block(1000, 3 << 20)).await.unwrap().hash;
    let put_took = started.elapsed();
    stored.push((h, 1000, 3 << 20));
    let started = Instant::now();
    // A fresh connection, as a new reader would open.
    let fresh = hoard_net::Pool::default();
    let mut buf = bytes::BytesMut::with_capacity(4096);
    fresh
        .read(&addr, read_of(&r, 0, 64), &mut buf)
        .await
        .unwrap();
    let read_took = started.elapsed();
    let started = Instant::now();
    assert!(client.get(&stored[5].0).await.unwrap() == block(5, 4 << 20));
    let get_took = started.elapsed();
    eprintln!(
        "with 1030 idle raw connections, 70 bodiless appends and 50 half prefaces: put {put_took:?}, fresh raw read {read_took:?}, get {get_took:?}"
    );
    for (what, took) in [
        ("put", put_took),
        ("raw read", read_took),
        ("get", get_took),
    ] {
        assert!(
            took < Duration::from_secs(2),
            "{what} took {took:?} beside idle connections"
        );
    }
    // Connections that never finished their preface or header are closed within the handshake
    // deadline (5 s), and an append whose fragment does not come within its body deadline (5 s plus
    // its length at 1 MiB/s: 9 s here), not kept.
    let closed_by = Instant::now() + Duration::from_secs(12);
    let mut open = 0;
    for s in idle.iter_mut() {
        let left = closed_by.saturating_duration_since(Instant::now());
        let mut b = [0u8; 64];
        match tokio::time::timeout(left.max(Duration::from_millis(1)), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            // An answer (a refusal), then the close.
            Ok(Ok(_)) => {}
            Err(_) => open += 1,
        }
    }
    assert_eq!(open, 0, "{open} idle connections still open after 12 s");
    drop(idle);

    // Admin HTTP: heads that never end are closed too.
    let admin = cluster.meta.as_ref().unwrap().addr("admin");
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let closed_by = Instant::now() + Duration::from_secs(15);
    for s in slow.iter_mut() {
        let left = closed_by.saturating_duration_since(Instant::now());
        let mut b = [0u8; 512];
        let r = tokio::time::timeout(left.max(Duration::from_millis(1)), async {
            loop {
                match s.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "an admin connection with an unfinished head is still open"
        );
    }
    assert_unharmed(&mut cluster, &stored, "idle and slow connections").await;
}
