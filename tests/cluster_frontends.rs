//! Two frontends at once on a real cell, and a client that knows both: calls are spread over them,
//! and a SIGKILLed frontend costs the client's callers no error. A SIGSTOPped volume server (it
//! accepts connections, answers nothing) stalls neither reads (they are hedged) nor puts (an append
//! deadline learned from recent appends moves them to another volume).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hoard_testkit::{Client, Cluster, ClusterOpts, block};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hoard"))
}

/// Block bytes a frontend took in puts (raw and gRPC), from its metrics.
async fn put_bytes(admin: SocketAddr) -> u64 {
    counter(admin, "hoard_frontend_put_bytes_total").await
        + counter(admin, "hoard_frontend_raw_put_bytes_total").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_of_two_frontends_spreads_its_calls_and_rides_through_a_frontend_kill() {
    let mut cluster = Cluster::start(
        bin(),
        ClusterOpts {
            repair: false,
            open_volumes: 1,
            ..ClusterOpts::default()
        },
    )
    .expect("cluster starts");
    cluster.start_second_frontend().unwrap();
    let client = Client::connect(&cluster.endpoints()).await.unwrap();
    assert_eq!(
        client.frontend_urls().len(),
        2,
        "{:?}",
        client.frontend_urls()
    );

    // Writers and readers while the first frontend is SIGKILLed: every call must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop, next) = (client.clone(), Arc::clone(&stop), Arc::clone(&next));
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    let len = 1_000 + (seed as usize * 7919) % 200_000;
                    match client.put(block(seed, len)).await {
                        Ok(p) => {
                            acked.push((seed, len, p.hash));
                            match client.get(&p.hash).await {
                                Ok(b) if b == block(seed, len) => {}
                                Ok(_) => errors.push(format!("get {seed}: wrong bytes")),
                                Err(e) => errors.push(format!("get {seed}: {e}")),
                            }
                        }
                        Err(e) => errors.push(format!("put {seed}: {e}")),
                    }
                }
                (acked, errors)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let admins: Vec<SocketAddr> = [&cluster.frontend, &cluster.second_frontend]
        .iter()
        .map(|p| p.as_ref().unwrap().addr("admin"))
        .collect();
    for a in &admins {
        assert!(
            put_bytes(*a).await > 0,
            "frontend at {a} took no put: calls are not spread"
        );
    }
    cluster.kill_frontend();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        let (a, e) = t.await.unwrap();
        acked.extend(a);
        errors.extend(e);
    }
    assert!(
        errors.is_empty(),
        "{} client-visible errors around a frontend kill: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(acked.len() > 20, "only {} puts", acked.len());
    // Every acknowledged block reads back byte-exact through the frontend left.
    for (seed, len, hash) in &acked {
        assert_eq!(client.get(hash).await.unwrap(), block(*seed, *len));
    }
    eprintln!(
        "{} blocks put and read back around a frontend kill, no error",
        acked.len()
    );
}

/// A frontend counter, from its metrics (summed over its labels).
async fn counter(admin: SocketAddr, name: &str) -> u64 {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `f`, which must finish within `secs`: unhedged, a read of a stopped member waits out the raw
/// read's timeout (30 s); without a learned deadline, an append waits the fixed append_timeout (30 s)
/// on a connection it has, or the connect timeout (5 s) once the stopped server's accept queue is full.
async fn within<T>(secs: u64, f: impl std::future::Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what} took over {secs} s with a stopped volume server"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_volume_server_stalls_neither_reads_nor_puts() {
    let cluster = Cluster::start(
        bin(),
        ClusterOpts {
            repair: false,
            ..ClusterOpts::default()
        },
    )
    .expect("cluster starts");
    let client = cluster.client().await.unwrap();
    let blocks: Vec<_> = futures::future::try_join_all((0..48u64).map(|i| {
        let client = client.clone();
        async move {
            let b = block(i, 64_000 + i as usize * 10_000);
            client.put(b.clone()).await.map(|p| (p.hash, b))
        }
    }))
    .await
    .unwrap();
    // Learn the healthy latencies, then stop a server that holds members of every volume.
    let mut healthy_get = Duration::ZERO;
    for (h, b) in &blocks {
        let t = std::time::Instant::now();
        assert_eq!(&client.get(h).await.unwrap(), b);
        healthy_get = healthy_get.max(t.elapsed());
    }
    let admin = cluster.frontend.as_ref().unwrap().addr("admin");
    let hedged_before = counter(admin, "hoard_frontend_hedged_reads_total").await;
    let retries_before = counter(admin, "hoard_frontend_put_retries_total").await;
    let stopped = cluster.volumes[0].as_ref().unwrap();
    stopped.stop();

    let started = std::time::Instant::now();
    let mut slowest_get = Duration::ZERO;
    for (h, b) in &blocks {
        let t = std::time::Instant::now();
        assert_eq!(&within(10, client.get(h), "a get").await.unwrap(), b);
        slowest_get = slowest_get.max(t.elapsed());
    }
    let gets_took = started.elapsed();
    let hedged = counter(admin, "hoard_frontend_hedged_reads_total").await - hedged_before;
    // Direct reads (client to volume servers) hedge the same way.
    let mut slowest_direct = Duration::ZERO;
    for (h, b) in &blocks {
        let t = std::time::Instant::now();
        assert_eq!(
            &within(10, client.get_direct(h), "a direct get")
                .await
                .unwrap(),
            b
        );
        slowest_direct = slowest_direct.max(t.elapsed());
    }

    let mut slowest_put = Duration::ZERO;
    let mut written = Vec::new();
    for i in 0..16u64 {
        let b = block(1000 + i, 200_000 + i as usize * 1000);
        let t = std::time::Instant::now();
        let p = within(4, client.put(b.clone()), "a put")
            .await
            .expect("a put with a stopped server");
        slowest_put = slowest_put.max(t.elapsed());
        written.push((p.hash, b));
    }
    let retries = counter(admin, "hoard_frontend_put_retries_total").await - retries_before;
    stopped.cont();
    eprintln!(
        "healthy: slowest get {healthy_get:?}; with a stopped server: {} gets in {gets_took:?} (slowest {slowest_get:?}, {hedged} hedged); \
         direct gets slowest {slowest_direct:?}; 16 puts, slowest {slowest_put:?}, {retries} moved to another volume",
        blocks.len()
    );
    assert!(hedged > 0, "no read was hedged");
    assert!(retries > 0, "no put met the stopped member");
    for (h, b) in written.iter().chain(&blocks) {
        assert_eq!(&client.get(h).await.unwrap(), b);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_volume_server_killed_under_load_costs_no_client_error() {
    let mut cluster = Cluster::start(
        bin(),
        ClusterOpts {
            repair: false,
            ..ClusterOpts::default()
        },
    )
    .expect("cluster starts");
    let client = cluster.client().await.unwrap();
    // Three clients put a block and read back one written earlier, without pause, while one of the
    // four servers (members of every volume) is SIGKILLed under them.
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..3u64)
        .map(|w| {
            let (client, stop, errors) = (client.clone(), Arc::clone(&stop), Arc::clone(&errors));
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let b = block(w * 1_000_000 + i, 50_000 + (i as usize % 7) * 90_000);
                    i += 1;
                    match client.put(b.clone()).await {
                        Ok(p) => acked.push((p.hash, b)),
                        Err(e) => errors.lock().push(format!("put: {e}")),
                    }
                    if let Some((h, b)) = acked.get(i as usize * 7 % acked.len().max(1)) {
                        match client.get(h).await {
                            Ok(got) if got == b => {}
                            Ok(_) => errors.lock().push(format!("get {h}: wrong bytes")),
                            Err(e) => errors.lock().push(format!("get {h}: {e}")),
                        }
                    }
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.kill_volume(1);
    let killed_at = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in workers {
        acked.extend(w.await.unwrap());
    }
    let errors = errors.lock().clone();
    eprintln!(
        "{} blocks acknowledged, {} client errors; the kill came {:?} before the load stopped",
        acked.len(),
        errors.len(),
        killed_at.elapsed()
    );
    assert!(
        errors.is_empty(),
        "client-visible errors around a volume server's SIGKILL: {errors:?}"
    );
    assert!(acked.len() > 30, "only {} puts in 9 s", acked.len());
    for (h, b) in &acked {
        assert_eq!(&client.get(h).await.unwrap(), b, "block {h}");
        assert_eq!(
            &client.get_direct(h).await.unwrap(),
            b,
            "block {h} (direct)"
        );
    }
}
