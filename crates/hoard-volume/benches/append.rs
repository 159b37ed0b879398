//! Extent appends of 6+3 fragments of 4 MiB blocks (700 KiB, O_DIRECT), each durable before it returns,
//! at several concurrencies: group commit lets concurrent appends share an fdatasync.
//! The scratch files live under /var/tmp (the same disk as the data would).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hoard_types::{BlockHash, Geometry};
use hoard_volume::extent::{Extent, MemberFile};
use hoard_volume::format::BlockRecord;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("hoard-append-bench")
        .tempdir_in("/var/tmp")
        .unwrap();
    let frag_len = Geometry::DEFAULT.frag_len(4 << 20) as usize;
    let frag = Bytes::from(vec![7u8; frag_len]);
    let crc = crc32c::crc32c(&frag);
    let mut g = c.benchmark_group("extent append (700 KiB, synced)");
    g.sample_size(20);
    for concurrency in [1usize, 4, 16] {
        let mf = MemberFile {
            format: 1,
            volume: concurrency as u64,
            member: 0,
            k: 6,
            m: 3,
            generation: 1,
            epoch: 0,
            capacity: 64 << 30,
            disk_id: "bench".into(),
            created_unix_ms: 0,
        };
        let extent = Extent::create(
            &dir.path().join(format!("stage-{concurrency}")),
            &dir.path().join(format!("extent-{concurrency}")),
            mf,
        )
        .unwrap();
        extent.fence(1, 1).unwrap();
        let next = Arc::new(AtomicU64::new(0));
        g.throughput(Throughput::Bytes((frag_len * concurrency) as u64));
        g.bench_function(BenchmarkId::from_parameter(concurrency), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let tasks: Vec<_> = (0..concurrency)
                        .map(|_| {
                            let (e, f, next) =
                                (Arc::clone(&extent), frag.clone(), Arc::clone(&next));
                            tokio::spawn(async move {
                                let i = next.fetch_add(1, Ordering::Relaxed);
                                let rec = BlockRecord {
                                    hash: BlockHash::of(&i.to_le_bytes()),
                                    offset: i * f.len() as u64,
                                    frag_len: f.len() as u32,
                                    block_len: 4 << 20,
                                    crcs: vec![crc; 9],
                                };
                                e.append(1, 1, rec, f).await.unwrap()
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
