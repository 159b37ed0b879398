//! Metadata tier micro-benchmarks on RocksDB: block lookup, synced commit, and the verification walk
//! (target: at least 1M index entries per second on one core).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use futures::future::BoxFuture;
use hoard_meta::engine::{Cf, WriteBatch};
use hoard_meta::rows::BlockRow;
use hoard_meta::schema::encode;
use hoard_meta::volume_ops::VolumeOps;
use hoard_meta::{MetaConfig, MetaState, RocksEngine};
use hoard_proto::v1;
use hoard_types::state::BlockState;
use hoard_types::{BlockHash, BlockLocation, Geometry};

struct AcceptAll;

impl VolumeOps for AcceptAll {
    fn create_extent(
        &self,
        _: String,
        _: v1::CreateExtentRequest,
    ) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

const ROWS: u64 = 1_000_000;

fn setup(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> (Arc<MetaState>, u64) {
    let engine = Arc::new(RocksEngine::open(dir).unwrap());
    let state = MetaState::open(engine, MetaConfig::default(), Arc::new(AcceptAll)).unwrap();
    for n in 0..4 {
        state
            .heartbeat_wire(&v1::HeartbeatRequest {
                node_id: format!("n{n}"),
                address: format!("127.0.0.1:{}", 9000 + n),
                disks: (0..3)
                    .map(|d| v1::DiskInfo {
                        disk_id: format!("d{n}-{d}"),
                        state: "ok".into(),
                        capacity_bytes: 1 << 40,
                        free_bytes: 1 << 40,
                        ..Default::default()
                    })
                    .collect(),
                interval_ms: 1000,
                ..Default::default()
            })
            .unwrap();
    }
    let (vol, _) = rt.block_on(state.volumes().acquire("bench", &[])).unwrap();
    // A million rows, written straight into the engine in large batches.
    let g = Geometry::DEFAULT;
    let mut b = WriteBatch::default();
    for i in 0..ROWS {
        let row = BlockRow {
            volume: vol.id,
            offset: (i * 4096) % (1 << 30),
            frag_len: g.frag_len(4 << 20) as u32,
            block_len: 4 << 20,
            crcs: vec![i as u32; 9],
            created_unix_ms: 0,
            state: BlockState::Live,
            asserted_unix_ms: 0,
            deleted_unix_ms: 0,
        };
        b.put(
            Cf::Blocks,
            BlockHash::of(&i.to_le_bytes()).as_bytes().to_vec(),
            encode(&row),
        );
        if b.ops.len() >= 50_000 {
            state.engine().write(std::mem::take(&mut b), false).unwrap();
        }
    }
    state.engine().write(b, true).unwrap();
    (state, vol.id)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (state, vol) = setup(&rt, dir.path());

    let mut i = 0u64;
    c.bench_function("meta lookup (hit, 1M rows)", |b| {
        b.iter(|| {
            i = (i + 7919) % ROWS;
            state
                .blocks()
                .lookup(&[BlockHash::of(&i.to_le_bytes())])
                .unwrap()
        })
    });
    let mut j = ROWS;
    c.bench_function("meta commit (synced, one at a time)", |b| {
        b.iter(|| {
            j += 1;
            let loc = BlockLocation {
                volume: vol,
                offset: 0,
                frag_len: 192,
                block_len: 1000,
                crcs: vec![0; 9],
            };
            rt.block_on(state.blocks().commit(BlockHash::of(&j.to_le_bytes()), loc))
                .unwrap()
        })
    });
    let mut group = c.benchmark_group("verify");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("walk of 1M index entries", |b| {
        b.iter(|| rt.block_on(state.verify().start().unwrap().finished()))
    });
    group.finish();
    // The rate as the operator sees it.
    let t = Instant::now();
    rt.block_on(state.verify().start().unwrap().finished());
    let r = state.verify().report();
    println!(
        "verify: {} entries in {:.3} s = {:.2} M entries/s (one walk)",
        r.entries,
        t.elapsed().as_secs_f64(),
        r.entries as f64 / t.elapsed().as_secs_f64() / 1e6
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
