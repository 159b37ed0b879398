//! Cluster tests of the core write and read paths: separate meta, frontend and volume-server processes
//! on 127.0.0.1, killed with SIGKILL where the test says so.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hoard_testkit::{Client, Cluster, ClusterOpts, block, wait_for};
use hoard_types::{BlockHash, MAX_BLOCK_LEN};
use rand::{Rng, SeedableRng};
use tonic::Code;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hoard"))
}

fn start(opts: ClusterOpts) -> Cluster {
    Cluster::start(bin(), opts).expect("cluster starts")
}

/// Block sizes for the round trip: the edges, then log-uniform random sizes from 1 B to 4 MiB.
fn sizes(n: usize, seed: u64) -> Vec<usize> {
    let max = MAX_BLOCK_LEN as usize;
    let mut v = vec![
        1,
        2,
        63,
        64,
        65,
        383,
        384,
        385,
        6 * 64 + 1,
        1 << 20,
        max - 1,
        max,
        max,
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while v.len() < n {
        let exp: f64 = rng.random_range(0.0..(max as f64).ln());
        v.push((exp.exp() as usize).clamp(1, max));
    }
    v
}

/// Blocks of the given sizes, seeded `first`, `first + 1`, ...
fn blocks_from(first: u64, sizes: Vec<usize>) -> Vec<(u64, usize)> {
    sizes
        .into_iter()
        .enumerate()
        .map(|(i, l)| (first + i as u64, l))
        .collect()
}

async fn put_all(client: &Client, blocks: &[(u64, usize)]) -> Vec<BlockHash> {
    futures::stream::iter(blocks.iter().copied())
        .map(|(seed, len)| {
            let c = client.clone();
            async move {
                let data = block(seed, len);
                let put = c
                    .put(data.clone())
                    .await
                    .unwrap_or_else(|e| panic!("put of {len} B: {e}"));
                assert_eq!(put.hash, BlockHash::of(&data));
                put.hash
            }
        })
        .buffered(8)
        .collect()
        .await
}

async fn check_all(client: &Client, blocks: &[(u64, usize)], hashes: &[BlockHash]) {
    futures::stream::iter(blocks.iter().copied().zip(hashes.iter().copied()))
        .for_each_concurrent(8, |((seed, len), h)| {
            let c = client.clone();
            async move {
                let want = block(seed, len);
                let got = c
                    .get(&h)
                    .await
                    .unwrap_or_else(|e| panic!("get {h} ({len} B): {e}"));
                assert!(got == want, "block {h} of {len} B came back different");
                // The direct read (fragments straight from volume servers, or the frontend when one
                // is missing) returns the same bytes.
                let direct = c
                    .get_direct(&h)
                    .await
                    .unwrap_or_else(|e| panic!("direct get {h} ({len} B): {e}"));
                assert!(
                    direct == want,
                    "block {h} of {len} B came back different from a direct read"
                );
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_trip_of_500_random_blocks_is_byte_exact() {
    // Small extents (2 MiB per member, 12 MiB of data per volume) so that the blocks fill volumes.
    let cluster = start(ClusterOpts {
        extent_size: "2MiB".into(),
        ..ClusterOpts::default()
    });
    let client = cluster.client().await.unwrap();
    let blocks = blocks_from(0, sizes(500, 7));
    assert!(blocks.iter().any(|&(_, l)| l as u64 == MAX_BLOCK_LEN));
    assert!(blocks.iter().any(|&(_, l)| l % 6 != 0));
    let hashes = put_all(&client, &blocks).await;
    check_all(&client, &blocks, &hashes).await;
    let never = BlockHash::of(b"never stored");
    let (code, msg) = code_of(client.get_direct(&never).await.unwrap_err());
    assert_eq!(code, Code::NotFound, "{msg}");
    assert!(msg.contains(&never.to_hex()), "{msg}");

    // Ranges, including ones that cross fragment boundaries and the last byte.
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    for (&(seed, len), h) in blocks.iter().zip(&hashes).take(60) {
        let data = block(seed, len);
        let off = rng.random_range(0..len as u64);
        let n = rng.random_range(1..=len as u64 - off);
        let got = client.get_range(h, off, n).await.unwrap();
        assert_eq!(
            &got[..],
            &data[off as usize..(off + n) as usize],
            "range {off}+{n} of {len}"
        );
    }
    // Volumes were filled and sealed on the way, and new ones opened to take their place.
    let vols = cluster.admin_get("/api/v1/volumes").await.unwrap();
    let vols = vols.as_array().unwrap();
    let sealed = vols.iter().filter(|v| v["state"] == "sealed").count();
    assert!(
        sealed >= 1 && vols.len() > 4,
        "expected rollover to new volumes: {} volumes, {sealed} sealed",
        vols.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_bytes_put_twice_are_stored_once() {
    let cluster = start(ClusterOpts::default());
    let client = cluster.client().await.unwrap();
    let data = block(1, 3_000_000);
    let first = client.put(data.clone()).await.unwrap();
    assert!(!first.deduplicated);
    // Fragments and fragment bytes stored, over every extent. (Bytes under the disk directories are
    // no measure: the frontend may be opening more volumes in the background, with empty extents.)
    let records = || async {
        let inv = cluster.inventories().await.unwrap();
        inv.iter()
            .flat_map(|i| &i.extents)
            .fold((0, 0), |(n, b), e| (n + e.records, b + e.data_len))
    };
    let stored = records().await;
    assert_eq!(stored.0, 9, "one block, nine fragments");
    assert!(stored.1 >= 3_000_000 / 6 * 9, "{stored:?}");
    for _ in 0..3 {
        let again = client.put(data.clone()).await.unwrap();
        assert_eq!(again.hash, first.hash);
        assert!(
            again.deduplicated,
            "a second put of the same bytes must be a dedup hit"
        );
    }
    assert_eq!(
        records().await,
        stored,
        "a dedup put stored fragments or bytes"
    );
    // Concurrent puts of one new block store it once in the index and answer the same hash.
    let data2 = block(2, 1_000_000);
    let puts = futures::future::join_all((0..6).map(|_| client.put(data2.clone()))).await;
    let hashes: Vec<BlockHash> = puts.into_iter().map(|p| p.unwrap().hash).collect();
    assert!(hashes.iter().all(|h| *h == BlockHash::of(&data2)));
    assert_eq!(client.get(&hashes[0]).await.unwrap(), data2);
}

/// Fragment bytes the volume servers appended: (all, by the raw protocol).
async fn appended(cluster: &Cluster) -> (u64, u64) {
    let c = cluster
        .settled_volume_counters(&[
            "hoard_volume_append_bytes_total",
            "hoard_volume_raw_append_bytes_total",
        ])
        .await;
    (c[0], c[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocks_and_fragments_go_by_the_raw_protocol_or_by_grpc_as_configured() {
    let mut cluster = start(ClusterOpts::default());
    let client = cluster.client().await.unwrap();
    let blocks = blocks_from(3000, sizes(16, 41));
    let hashes = put_all(&client, &blocks).await;
    check_all(&client, &blocks, &hashes).await;
    let least: u64 = blocks.iter().map(|&(_, l)| l as u64).sum();
    // The Rust client puts by the raw protocol on the frontend's port.
    assert_eq!(
        cluster
            .frontend_counter("hoard_frontend_raw_put_bytes_total")
            .await,
        least,
        "block bytes put by the raw protocol"
    );
    let (all, raw) = appended(&cluster).await;
    assert!(
        all >= least,
        "{all} bytes appended for {least} bytes of blocks"
    );
    assert_eq!(raw, all, "by default every fragment goes by a raw append");
    // The frontend keeps its raw connections for the next puts; the volume servers count them.
    let open = cluster.volume_counter("hoard_volume_raw_connections").await;
    assert!(open > 0, "no raw connection counted as served");

    // The same cell with a frontend told to append over gRPC, and a client told to put over gRPC.
    cluster.kill_frontend();
    cluster.opts.frontend_extra = "raw_appends = false".into();
    cluster.start_frontend().unwrap();
    let client = cluster.client().await.unwrap().with_raw_puts(false);
    let more = blocks_from(4000, sizes(16, 43));
    let more_hashes = put_all(&client, &more).await;
    check_all(&client, &more, &more_hashes).await;
    check_all(&client, &blocks, &hashes).await;
    let more_least: u64 = more.iter().map(|&(_, l)| l as u64).sum();
    let (all2, raw2) = appended(&cluster).await;
    assert_eq!(raw2, raw, "raw appends with raw_appends = false");
    assert_eq!(
        cluster
            .frontend_counter("hoard_frontend_raw_put_bytes_total")
            .await,
        0,
        "raw puts from a client told to put over gRPC"
    );
    assert_eq!(
        cluster
            .frontend_counter("hoard_frontend_put_bytes_total")
            .await,
        more_least
    );
    assert!(
        all2 - all >= more_least,
        "{} bytes appended over gRPC for {more_least} bytes of blocks",
        all2 - all
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_and_writes_survive_a_killed_volume_server() {
    let mut cluster = start(ClusterOpts::default());
    let client = cluster.client().await.unwrap();
    let blocks = blocks_from(1000, sizes(60, 11));
    let hashes = put_all(&client, &blocks).await;

    // 4 servers x 3 disks with RS 6+3: placement puts at most 3 (= m) members of a volume on one server.
    cluster.kill_volume(1);
    check_all(&client, &blocks, &hashes).await;
    // Ranges that need a lost data fragment are decoded from parity too.
    for (&(seed, len), h) in blocks.iter().zip(&hashes).take(20) {
        let data = block(seed, len);
        let off = len / 2;
        let got = client
            .get_range(h, off as u64, (len - off) as u64)
            .await
            .unwrap();
        assert_eq!(&got[..], &data[off..]);
    }
    // New puts go to volumes on the three servers left.
    let more: Vec<(u64, usize)> = (0..20)
        .map(|i| (5000 + i, 200_000 + i as usize * 1000))
        .collect();
    let more_hashes = put_all(&client, &more).await;
    check_all(&client, &more, &more_hashes).await;
}

/// The frontend's count of whole-block reads it served.
async fn frontend_gets(cluster: &Cluster) -> u64 {
    cluster
        .frontend_counter("hoard_frontend_get_seconds_count")
        .await
}

/// Reads every block back, one at a time, directly from the volume servers or through the frontend.
async fn read_back(client: &Client, blocks: &[(u64, usize)], hashes: &[BlockHash], direct: bool) {
    for (&(seed, len), h) in blocks.iter().zip(hashes) {
        let got = if direct {
            client.get_direct(h).await
        } else {
            client.get(h).await
        };
        let got = got.unwrap_or_else(|e| panic!("get {h} ({len} B, direct: {direct}): {e}"));
        assert!(got == block(seed, len), "block {h} of {len} B differs");
    }
}

/// Fragment bytes the volume servers sent by raw reads, and by any read.
const READ_COUNTERS: [&str; 2] = [
    "hoard_volume_raw_read_bytes_total",
    "hoard_volume_read_bytes_total",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn direct_and_frontend_reads_decode_from_parity_when_members_are_lost() {
    let mut cluster = start(ClusterOpts {
        heartbeat_grace: "2s".into(),
        repair: false,
        // No read-back checks, so that every read the frontend counts is a fallback of ours.
        frontend_extra: "watch_share = 0.0".into(),
        ..ClusterOpts::default()
    });
    let client = cluster.client().await.unwrap();
    let blocks = blocks_from(7000, sizes(40, 21));
    let hashes = put_all(&client, &blocks).await;

    cluster.kill_volume(2);
    // Meta marks the dead server's members lost once its heartbeats stop for the grace period.
    wait_for(
        "members on the dead server lost",
        Duration::from_secs(30),
        || async {
            let vols = cluster.admin_get("/api/v1/volumes").await.ok()?;
            vols.as_array()?
                .iter()
                .flat_map(|v| v["members"].as_array().cloned().unwrap_or_default())
                .any(|m| m["state"] == "lost")
                .then_some(())
        },
    )
    .await
    .unwrap();

    let before = frontend_gets(&cluster).await;
    let reads = || cluster.settled_volume_counters(&READ_COUNTERS);
    let [raw_before, all_before] = reads().await[..] else {
        unreachable!()
    };
    read_back(&client, &blocks, &hashes, true).await;
    assert_eq!(
        frontend_gets(&cluster).await,
        before,
        "direct reads fell back to the frontend instead of decoding from parity"
    );
    // The fragments, parity among them, came by raw reads: at least k of them for every block.
    let [raw_now, all_now] = reads().await[..] else {
        unreachable!()
    };
    let (raw, all) = (raw_now - raw_before, all_now - all_before);
    let least: u64 = blocks.iter().map(|&(_, len)| len as u64).sum();
    assert!(
        raw >= least,
        "raw reads sent {raw} bytes for {least} bytes of blocks"
    );
    // And only by raw reads: a block rebuilt wrongly would fail its hash and be read again over gRPC.
    assert_eq!(
        all, raw,
        "fragments read over gRPC: the raw path's decode did not produce the blocks"
    );
    // The frontend's whole-block reads take the same path: fragments by raw reads, parity rebuilt in
    // place, nothing over gRPC.
    let (raw_before, all_before) = (raw_now, all_now);
    read_back(&client, &blocks, &hashes, false).await;
    // The count moves when the frontend serves reads.
    assert_eq!(frontend_gets(&cluster).await, before + blocks.len() as u64);
    let [raw_now, all_now] = reads().await[..] else {
        unreachable!()
    };
    let (raw, all) = (raw_now - raw_before, all_now - all_before);
    assert!(raw >= least, "raw reads sent {raw} bytes for {least} bytes");
    assert_eq!(
        all, raw,
        "fragments read over gRPC: the frontend's rebuild in place did not produce the blocks"
    );
    assert!(
        cluster
            .frontend_counter("hoard_frontend_degraded_reads_total")
            .await
            > 0,
        "no read needed parity: the test lost no data member"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_puts_survive_sigkill_of_the_whole_cell() {
    let mut cluster = start(ClusterOpts::default());
    let client = cluster.client().await.unwrap();
    let writers = Writers::start(&client, 10_000, 40).await;
    // Kill everything mid-stream.
    cluster.kill_all();
    let acked = writers.stop().await;
    assert!(acked.len() >= 40);

    cluster.restart_all().unwrap();
    let client = cluster.client().await.unwrap();
    check_acked(&cluster, &client, &acked).await;
    // The restarted cell takes new writes.
    let fresh = block(1, 12345);
    let put = client.put(fresh.clone()).await.unwrap();
    assert_eq!(client.get(&put.hash).await.unwrap(), fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frontend_stopped_under_raw_puts_exits_cleanly_and_loses_no_acknowledged_block() {
    let mut cluster = start(ClusterOpts::default());
    let client = cluster.client().await.unwrap();
    let writers = Writers::start(&client, 20_000, 30).await;
    assert!(
        cluster
            .frontend_counter("hoard_frontend_raw_put_bytes_total")
            .await
            > 0,
        "the writers' puts did not go by the raw protocol"
    );
    // SIGTERM with raw puts in flight: the frontend stops taking them, answers those under way, hands
    // its volumes back and exits.
    let mut fe = cluster.frontend.take().unwrap();
    let status = tokio::task::block_in_place(|| fe.terminate()).unwrap();
    assert!(status.success(), "the frontend exited with {status:?}");
    let acked = writers.stop().await;
    assert!(acked.len() >= 30);

    cluster.start_frontend().unwrap();
    let client = cluster.client().await.unwrap();
    check_acked(&cluster, &client, &acked).await;
}

/// Writers putting blocks of seeded random sizes until stopped, remembering what was acknowledged.
struct Writers {
    acked: Arc<Acked>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// Six writers, seeds from `first_seed`; returns once `at_least` puts were acknowledged.
    async fn start(client: &Client, first_seed: u64, at_least: usize) -> Writers {
        let acked = Arc::new(Acked::default());
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(first_seed));
        let tasks = (0..6)
            .map(|_| {
                let (c, acked, stop, next) =
                    (client.clone(), acked.clone(), stop.clone(), next.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let seed = next.fetch_add(1, Ordering::Relaxed);
                        let len = 1 + (seed as usize * 7919) % (MAX_BLOCK_LEN as usize);
                        if let Ok(put) = c.put(block(seed, len)).await {
                            acked.push(put.hash, seed, len);
                        }
                    }
                })
            })
            .collect();
        let what = format!("{at_least} acknowledged puts");
        hoard_testkit::wait_for(&what, Duration::from_secs(120), || {
            let n = acked.len();
            async move { (n >= at_least).then_some(()) }
        })
        .await
        .unwrap();
        Writers { acked, stop, tasks }
    }

    /// Stops the writers and returns what was acknowledged.
    async fn stop(self) -> HashMap<BlockHash, (u64, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.acked.take()
    }
}

/// Every acknowledged block reads back byte-exact.
async fn check_acked(cluster: &Cluster, client: &Client, acked: &HashMap<BlockHash, (u64, usize)>) {
    for (h, (seed, len)) in acked {
        let got = client
            .get(h)
            .await
            .unwrap_or_else(|e| panic!("acknowledged block {h} lost: {e}\n{}", cluster.logs()));
        assert!(
            got == block(*seed, *len),
            "acknowledged block {h} came back different"
        );
    }
}

/// Acknowledged puts: hash -> (seed, length) of the bytes.
#[derive(Default)]
struct Acked(std::sync::Mutex<HashMap<BlockHash, (u64, usize)>>);

impl Acked {
    fn push(&self, h: BlockHash, seed: u64, len: usize) {
        self.0.lock().unwrap().insert(h, (seed, len));
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn take(&self) -> HashMap<BlockHash, (u64, usize)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn code_of(e: hoard_client::ClientError) -> (Code, String) {
    match e {
        hoard_client::ClientError::Status(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_with_the_right_status_and_nothing_is_stored() {
    let cluster = start(ClusterOpts::default());
    let client = cluster.client().await.unwrap();
    let before = cluster.disk_usage();

    let (code, msg) = code_of(
        client
            .put(Bytes::from(vec![7u8; MAX_BLOCK_LEN as usize + 1]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("4 MiB"), "{msg}");

    let (code, msg) = code_of(client.put(Bytes::new()).await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("empty"), "{msg}");

    let data = block(3, 1000);
    let wrong = BlockHash::of(b"something else");
    let (code, msg) = code_of(
        client
            .put_checked(data.clone(), Some(wrong))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(
        msg.contains(&wrong.to_hex()) && msg.contains("expected"),
        "{msg}"
    );
    let missing = client
        .find_missing(&[BlockHash::of(&data).to_hex()])
        .await
        .unwrap();
    assert_eq!(missing.len(), 1, "a refused put must store nothing");

    for bad in ["xyz", "", &"g".repeat(64), &"a".repeat(63)] {
        let (code, msg) = code_of(client.get_raw(bad, 0, 0).await.unwrap_err());
        assert_eq!(code, Code::InvalidArgument, "hash {bad:?}");
        assert!(msg.contains("64 hex"), "{msg}");
    }
    let (code, _) = code_of(client.stat("nope").await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    let (code, _) = code_of(
        client
            .find_missing(&["nope".to_string()])
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::InvalidArgument);

    let unknown = BlockHash::of(b"never stored");
    let (code, msg) = code_of(client.get(&unknown).await.unwrap_err());
    assert_eq!(code, Code::NotFound);
    assert!(msg.contains(&unknown.to_hex()), "{msg}");
    let (code, _) = code_of(client.stat(&unknown.to_hex()).await.unwrap_err());
    assert_eq!(code, Code::NotFound);

    // Ranges past the end.
    let put = client.put(data.clone()).await.unwrap();
    let (code, _) = code_of(client.get_range(&put.hash, 1000, 1).await.unwrap_err());
    assert_eq!(code, Code::OutOfRange);
    let (code, _) = code_of(client.get_range(&put.hash, 10, 991).await.unwrap_err());
    assert_eq!(code, Code::OutOfRange);
    assert!(cluster.disk_usage() > before);

    // The frontend's port takes raw puts only: a raw read there is named and the connection closed.
    let fe = cluster.frontend.as_ref().unwrap().addr("frontend");
    let mut s = tokio::net::TcpStream::connect(fe).await.unwrap();
    let read = hoard_proto::raw::RawRead {
        volume: 1,
        member: 0,
        generation: 1,
        offset: 0,
        len: 10,
    };
    let mut buf = bytes::BytesMut::with_capacity(10);
    match hoard_proto::raw::read_fragment(&mut s, &read, &mut buf).await {
        Err(hoard_proto::raw::RawError::Protocol(m)) => assert!(m.contains("raw puts only"), "{m}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    // A server that does not speak the raw protocol leaves a raw put unanswered: the client puts by
    // gRPC instead, and that answer is the one it returns (meta serves no BlockStore).
    let meta = cluster.meta.as_ref().unwrap().addr("meta");
    let not_a_frontend = Client::connect(&format!("http://{meta}")).await.unwrap();
    let (code, _) = code_of(not_a_frontend.put(block(4, 1000)).await.unwrap_err());
    assert_eq!(
        code,
        Code::Unimplemented,
        "the put did not fall back to gRPC"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_few_disks_answers_unavailable_with_the_numbers() {
    let cluster = start(ClusterOpts {
        volume_servers: 2,
        disks_per_server: 2,
        ..Default::default()
    });
    let client = cluster.client().await.unwrap();
    let (code, msg) = code_of(client.put(block(1, 100)).await.unwrap_err());
    assert_eq!(code, Code::Unavailable, "{msg}");
    assert!(msg.contains("need 9") && msg.contains("4 healthy"), "{msg}");

    // Enough disks but too few servers to keep at most 3 members on each.
    let cluster = start(ClusterOpts {
        volume_servers: 2,
        disks_per_server: 6,
        ..Default::default()
    });
    let client = cluster.client().await.unwrap();
    let (code, msg) = code_of(client.put(block(1, 100)).await.unwrap_err());
    assert_eq!(code, Code::Unavailable, "{msg}");
    assert!(
        msg.contains("need 3 node") && msg.contains("2 exist"),
        "{msg}"
    );
}
