//! Two frontends at once on a real cell, and a client that knows both: calls are spread over them,
//! and a SIGKILLed frontend costs the client's callers no error.

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
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.lines()
        .filter(|l| {
            l.starts_with("hoard_frontend_put_bytes_total")
                || l.starts_with("hoard_frontend_raw_put_bytes_total")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
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
