//! `hoard bench`: a load generator for a cell's public endpoint. Random incompressible blocks, a live
//! progress bar, and a table (or JSON) of throughput and latency percentiles. Errors are counted and
//! reported, never hidden.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::{Bytes, BytesMut};
use hoard_client::Client;
use hoard_types::{BlockHash, MAX_BLOCK_LEN};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, RngCore, SeedableRng};

use crate::cli::EndpointArg;
use crate::config::Size;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// put, get or mixed.
    #[arg(value_parser = ["put", "get", "mixed"])]
    pub mode: String,
    /// Bytes per block.
    #[arg(long, default_value = "4MiB")]
    pub size: Size,
    /// Operations to run.
    #[arg(long, default_value_t = 256)]
    pub count: u64,
    /// Operations in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Share of reads in `mixed` (0.0 to 1.0).
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    /// For `get` and `mixed`: read the hashes a `put --save-hashes` run wrote, instead of putting
    /// `count` blocks first (untimed).
    #[arg(long)]
    pub hashes: Option<PathBuf>,
    /// For `put`: write the stored hashes here, one per line.
    #[arg(long)]
    pub save_hashes: Option<PathBuf>,
    /// Read fragments straight from the volume servers, decoding from parity in the client when a
    /// data member is lost; every block is checked against its BLAKE3 hash.
    #[arg(long)]
    pub direct: bool,
    /// Put over gRPC, as clients in other languages do; by default this Rust client puts by the raw
    /// protocol on the frontend's port.
    #[arg(long)]
    pub grpc_puts: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub ep: EndpointArg,
}

/// Unique, incompressible blocks without generating 4 MiB of random bytes per block: slices of one random
/// pool, each stamped with a run nonce and its index so that no two blocks of any run are equal.
struct BlockSource {
    pool: Bytes,
    size: usize,
    nonce: u64,
}

impl BlockSource {
    fn new(size: usize) -> Self {
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let mut pool = vec![0u8; size * 2 + (8 << 20)];
        rng.fill_bytes(&mut pool);
        BlockSource {
            pool: Bytes::from(pool),
            size,
            nonce: rng.random(),
        }
    }

    fn block(&self, i: u64) -> Bytes {
        let span = self.pool.len() - self.size;
        let at = ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % span as u64) as usize;
        let mut b = BytesMut::from(&self.pool[at..at + self.size]);
        let stamp = [self.nonce.to_le_bytes(), i.to_le_bytes()].concat();
        let n = stamp.len().min(self.size);
        b[..n].copy_from_slice(&stamp[..n]);
        b.freeze()
    }
}

#[derive(Default)]
struct Tally {
    latencies: parking_lot::Mutex<Vec<f64>>,
    bytes: AtomicU64,
    errors: AtomicU64,
    first_error: parking_lot::Mutex<Option<String>>,
}

fn progress(count: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(count);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ops {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

enum Op {
    Put(u64),
    Get(BlockHash),
}

async fn run_ops(
    client: &Client,
    source: Arc<BlockSource>,
    ops: Vec<Op>,
    concurrency: usize,
    label: &str,
    direct: bool,
) -> (Tally, Duration, Vec<BlockHash>) {
    let total = ops.len() as u64;
    let ops = Arc::new(parking_lot::Mutex::new(ops.into_iter()));
    let tally = Arc::new(Tally::default());
    let stored = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let pb = progress(total, label);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, source, ops, tally, stored, pb) = (
            client.clone(),
            Arc::clone(&source),
            Arc::clone(&ops),
            Arc::clone(&tally),
            Arc::clone(&stored),
            pb.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let op = ops.lock().next();
                let Some(op) = op else { break };
                // The block is made before the clock starts: its cost is the client's, not the cell's.
                let (t0, res) = match op {
                    Op::Put(i) => {
                        let data = source.block(i);
                        let n = data.len() as u64;
                        let t0 = Instant::now();
                        let r = client.put(data).await.map(|p| {
                            stored.lock().push(p.hash);
                            n
                        });
                        (t0, r)
                    }
                    Op::Get(h) => {
                        let t0 = Instant::now();
                        // Both reads leave the block in the buffers it arrived in (the fragments'
                        // for a direct read, the messages' through the frontend), as a client writing
                        // it to a file with vectored I/O would.
                        let parts = if direct {
                            client.get_direct_parts(&h).await
                        } else {
                            client.get_parts(&h.to_hex(), 0, 0).await
                        };
                        let r = parts.map(|p| p.iter().map(|b| b.len() as u64).sum());
                        (t0, r)
                    }
                };
                let dt = t0.elapsed().as_secs_f64();
                match res {
                    Ok(n) => {
                        tally.bytes.fetch_add(n, Ordering::Relaxed);
                        tally.latencies.lock().push(dt);
                    }
                    Err(e) => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        tally
                            .first_error
                            .lock()
                            .get_or_insert_with(|| e.to_string());
                    }
                }
                pb.inc(1);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    pb.finish_and_clear();
    let tally = Arc::try_unwrap(tally).unwrap_or_default();
    let stored = std::mem::take(&mut *stored.lock());
    (tally, elapsed, stored)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(mode: &str, args: &BenchArgs, tally: Tally, elapsed: Duration) -> serde_json::Value {
    let mut lat = std::mem::take(&mut *tally.latencies.lock());
    lat.sort_by(|a, b| a.total_cmp(b));
    let secs = elapsed.as_secs_f64();
    let bytes = tally.bytes.load(Ordering::Relaxed);
    let ms = |p: f64| (percentile(&lat, p) * 1000.0 * 100.0).round() / 100.0;
    serde_json::json!({
        "mode": mode,
        "size": args.size.0,
        "concurrency": args.concurrency,
        "puts_by": if args.grpc_puts { "grpc" } else { "raw" },
        "ops": lat.len(),
        "errors": tally.errors.load(Ordering::Relaxed),
        "first_error": *tally.first_error.lock(),
        "bytes": bytes,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "ops_per_s": ((lat.len() as f64 / secs) * 10.0).round() / 10.0,
        "mb_per_s": ((bytes as f64 / secs / 1e6) * 10.0).round() / 10.0,
        "p50_ms": ms(0.50),
        "p90_ms": ms(0.90),
        "p99_ms": ms(0.99),
        "max_ms": ms(1.0),
    })
}

fn print_table(rows: &[serde_json::Value]) -> std::io::Result<()> {
    outln!(
        "{:<6} {:>7} {:>7} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "mode",
        "ops",
        "errors",
        "ops/s",
        "MB/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "seconds"
    )?;
    for r in rows {
        let f = |k: &str| match &r[k] {
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        outln!(
            "{:<6} {:>7} {:>7} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
            f("mode"),
            f("ops"),
            f("errors"),
            f("ops_per_s"),
            f("mb_per_s"),
            f("p50_ms"),
            f("p90_ms"),
            f("p99_ms"),
            f("max_ms"),
            f("seconds"),
        )?;
    }
    for r in rows {
        if let Some(e) = r["first_error"].as_str() {
            eprintln!("{}: first error: {e}", r["mode"].as_str().unwrap_or(""));
        }
    }
    Ok(())
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let size = args.size.0;
    if size == 0 || size > MAX_BLOCK_LEN {
        bail!("--size must be 1 B to 4 MiB, got {}", args.size);
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        bail!("--read-ratio must be between 0 and 1");
    }
    let client = Client::connect(&args.ep.endpoint)
        .await
        .map_err(|e| anyhow!("{e}"))?
        .with_raw_puts(!args.grpc_puts);
    let source = Arc::new(BlockSource::new(size as usize));
    let mut rows = Vec::new();

    // Blocks to read: from a file, or put first (reported as its own row).
    let mut readable: Vec<BlockHash> = Vec::new();
    if args.mode != "put" {
        if let Some(p) = &args.hashes {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                readable.push(
                    line.trim()
                        .parse()
                        .map_err(|e| anyhow!("{}: {e}", p.display()))?,
                );
            }
        } else {
            let n = if args.mode == "get" {
                args.count
            } else {
                args.count.div_ceil(2)
            };
            let ops = (0..n).map(Op::Put).collect();
            let (tally, elapsed, stored) = run_ops(
                &client,
                Arc::clone(&source),
                ops,
                args.concurrency,
                "put (setup)",
                false,
            )
            .await;
            let mut r = report("put", &args, tally, elapsed);
            r["mode"] = "put*".into();
            rows.push(r);
            readable = stored;
        }
        if readable.is_empty() {
            bail!("no blocks to read");
        }
    }

    let mut rng = rand::rngs::StdRng::from_os_rng();
    let offset = 1u64 << 32;
    let ops: Vec<Op> = match args.mode.as_str() {
        "put" => (0..args.count).map(|i| Op::Put(offset + i)).collect(),
        "get" => (0..args.count)
            .map(|i| Op::Get(readable[(i as usize) % readable.len()]))
            .collect(),
        _ => (0..args.count)
            .map(|i| {
                if rng.random_bool(args.read_ratio) {
                    Op::Get(readable[rng.random_range(0..readable.len())])
                } else {
                    Op::Put(offset + i)
                }
            })
            .collect(),
    };
    let (tally, elapsed, stored) = run_ops(
        &client,
        Arc::clone(&source),
        ops,
        args.concurrency,
        &args.mode,
        args.direct,
    )
    .await;
    let errors = tally.errors.load(Ordering::Relaxed);
    rows.push(report(&args.mode, &args, tally, elapsed));
    if let Some(p) = &args.save_hashes {
        let text: String = stored.iter().map(|h| format!("{h}\n")).collect();
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    if args.json {
        outln!("{}", rows.last().expect("one row"))?;
    } else {
        print_table(&rows)?;
    }
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
