//! The CPU side of a put and a get, on 4 MiB blocks: BLAKE3, Reed-Solomon encode and reconstruct with
//! the codec Hoard uses (reed-solomon-erasure, SIMD) and its alternative (reed-solomon-simd), for 6+3,
//! 10+4 and 12+4, and crc32c. Throughput counts original block bytes.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hoard_erasure::Codec;
use hoard_types::Geometry;
use rand::RngCore;
use std::hint::black_box;

const BLOCK: usize = 4 * 1024 * 1024;

fn block() -> Bytes {
    let mut v = vec![0u8; BLOCK];
    rand::rng().fill_bytes(&mut v);
    Bytes::from(v)
}

fn bench(c: &mut Criterion) {
    let data = block();
    let mut g = c.benchmark_group("4 MiB block");
    g.throughput(Throughput::Bytes(BLOCK as u64));
    g.bench_function("blake3", |b| b.iter(|| blake3::hash(black_box(&data))));
    g.bench_function("crc32c", |b| b.iter(|| crc32c::crc32c(black_box(&data))));
    for (k, m) in [(6u32, 3u32), (10, 4), (12, 4)] {
        let geometry = Geometry::new(k, m).unwrap();
        let codec = Codec::new(geometry).unwrap();
        let name = format!("{k}+{m}");
        g.bench_with_input(
            BenchmarkId::new("encode r-s-erasure", &name),
            &data,
            |b, d| b.iter(|| codec.encode(black_box(d)).unwrap()),
        );
        let stripe = codec.encode(&data).unwrap();
        for lose in [1usize, m as usize] {
            g.bench_with_input(
                BenchmarkId::new(format!("reconstruct {lose} data r-s-erasure"), &name),
                &stripe,
                |b, s| {
                    b.iter(|| {
                        let mut frags: Vec<Option<Bytes>> =
                            s.fragments.iter().cloned().map(Some).collect();
                        for f in frags.iter_mut().take(lose) {
                            *f = None;
                        }
                        codec.decode_data(black_box(frags)).unwrap()
                    })
                },
            );
        }
        // The alternative codec, on the same shards.
        let (k, m) = (k as usize, m as usize);
        let len = stripe.frag_len;
        let originals: Vec<&[u8]> = stripe.fragments[..k].iter().map(|f| &f[..]).collect();
        let mut enc = reed_solomon_simd::ReedSolomonEncoder::new(k, m, len).unwrap();
        g.bench_with_input(
            BenchmarkId::new("encode r-s-simd", &name),
            &originals,
            |b, o| {
                b.iter(|| {
                    for s in o {
                        enc.add_original_shard(s).unwrap();
                    }
                    let r = enc.encode().unwrap();
                    r.recovery_iter().count()
                })
            },
        );
        for s in &originals {
            enc.add_original_shard(s).unwrap();
        }
        let recovery: Vec<Vec<u8>> = enc
            .encode()
            .unwrap()
            .recovery_iter()
            .map(|p| p.to_vec())
            .collect();
        let mut dec = reed_solomon_simd::ReedSolomonDecoder::new(k, m, len).unwrap();
        for lose in [1usize, m] {
            g.bench_function(
                BenchmarkId::new(format!("reconstruct {lose} data r-s-simd"), &name),
                |b| {
                    b.iter(|| {
                        for (j, s) in originals.iter().enumerate().skip(lose) {
                            dec.add_original_shard(j, s).unwrap();
                        }
                        for (j, p) in recovery.iter().enumerate().take(lose) {
                            dec.add_recovery_shard(j, p).unwrap();
                        }
                        dec.decode().unwrap().restored_original_iter().count()
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
