//! Chaos with a durability oracle: a seeded, bounded run of random faults on a real cell (meta, two
//! frontends, nine volume servers with two disks each, RS 6+3, the repair daemon) under put, get and
//! `FindMissing` load from three clients that know both frontends. Faults: SIGKILL and SIGSTOP of
//! volume servers, SIGKILL of a frontend, of meta and of the repair daemon (each started again on its
//! port), a disk wiped under its running server, bits flipped in a live extent. At most one process
//! fault at a time and one disk fault until it is repaired, so that no volume loses more than `m`
//! members. At the end every acknowledged block is read back byte-exact, and client-visible errors
//! are counted per fault kind: none is allowed but while meta is down (and the few seconds its
//! clients take to find it again).
//!
//! `HOARD_CHAOS_SEED` (default 1) and `HOARD_CHAOS_SECS` (default 60) choose the run;
//! `scripts/chaos.sh SEED MINUTES` runs it longer.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hoard_testkit::{Client, Cluster, ClusterOpts, block};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hoard"))
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    MetaRestart,
    VolumeKill,
    VolumeStop,
    FrontendKill,
    RepairKill,
    DiskWipe,
    BitFlip,
    /// An error while no fault was in the air.
    None,
}

const KINDS: [Kind; 7] = [
    Kind::MetaRestart,
    Kind::VolumeKill,
    Kind::VolumeStop,
    Kind::FrontendKill,
    Kind::RepairKill,
    Kind::DiskWipe,
    Kind::BitFlip,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::MetaRestart => "meta restart",
            Kind::VolumeKill => "volume server kill",
            Kind::VolumeStop => "volume server stop",
            Kind::FrontendKill => "frontend kill",
            Kind::RepairKill => "repair daemon kill",
            Kind::DiskWipe => "disk wipe",
            Kind::BitFlip => "bit flip",
            Kind::None => "no fault",
        }
    }

    /// How long after a fault is healed its clients may still feel it: meta's clients (frontends,
    /// volume servers) find it again at their next try.
    fn settle(self) -> Duration {
        match self {
            Kind::MetaRestart => Duration::from_secs(10),
            _ => Duration::from_secs(2),
        }
    }
}

/// A fault from when it was done until it was healed.
struct Window {
    kind: Kind,
    what: String,
    from: Instant,
    to: Option<Instant>,
}

/// A call that failed, from its start to its end.
struct Failure {
    op: &'static str,
    start: Instant,
    end: Instant,
    error: String,
}

/// What one client saw: what it stored and what went wrong.
#[derive(Default)]
struct Seen {
    acked: Vec<(String, u64, usize)>,
    failures: Vec<Failure>,
    /// Broken promises: wrong bytes, an acknowledged block reported missing.
    broken: Vec<String>,
    calls: u64,
}

async fn timed<T, E: std::fmt::Display>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(30), f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 30 s".into()),
    }
}

/// One client: puts blocks of mixed sizes, reads back one it stored, and now and then asks which of
/// a handful of its blocks are missing (none may be).
async fn load(client: Client, seed: u64, worker: u64, stop: Arc<AtomicBool>) -> Seen {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003) + worker);
    let mut seen = Seen::default();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let len = if rng.random_ratio(1, 25) {
            4 << 20
        } else {
            // 1 KiB .. 1 MiB, evenly over the powers of two.
            (1024.0 * 2f64.powf(rng.random_range(0.0..10.0))) as usize
        };
        let bseed = (seed << 40) | (worker << 32) | i;
        let data = block(bseed, len);
        let start = Instant::now();
        seen.calls += 1;
        match timed(client.put(data)).await {
            Ok(p) => seen.acked.push((p.hash.to_string(), bseed, len)),
            Err(error) => seen.failures.push(Failure {
                op: "put",
                start,
                end: Instant::now(),
                error,
            }),
        }
        if seen.acked.is_empty() {
            continue;
        }
        let (h, bseed, len) = seen.acked[rng.random_range(0..seen.acked.len())].clone();
        let start = Instant::now();
        seen.calls += 1;
        match timed(client.get(&h.parse().unwrap())).await {
            Ok(got) if got == block(bseed, len) => {}
            Ok(_) => seen.broken.push(format!("get {h}: wrong bytes")),
            Err(error) => seen.failures.push(Failure {
                op: "get",
                start,
                end: Instant::now(),
                error,
            }),
        }
        if i.is_multiple_of(8) {
            let ask: Vec<String> = seen
                .acked
                .choose_multiple(&mut rng, 64)
                .map(|(h, _, _)| h.clone())
                .collect();
            let start = Instant::now();
            seen.calls += 1;
            match timed(client.find_missing(&ask)).await {
                Ok(missing) if missing.is_empty() => {}
                Ok(missing) => seen
                    .broken
                    .push(format!("acknowledged blocks reported missing: {missing:?}")),
                Err(error) => seen.failures.push(Failure {
                    op: "find-missing",
                    start,
                    end: Instant::now(),
                    error,
                }),
            }
        }
    }
    seen
}

async fn admin(cluster: &Cluster, path: &str) -> Option<Value> {
    cluster.admin_get(path).await.ok()
}

/// Whether repair has nothing left to do.
async fn whole(cluster: &Cluster) -> bool {
    admin(cluster, "/api/v1/repair")
        .await
        .is_some_and(|r| r["degraded_volumes"] == 0)
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    out.sort();
    out
}

/// Every regular file under `dir`, at any depth.
fn regular_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in files(dir) {
        if p.is_dir() {
            out.extend(regular_files(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

/// Removes everything in a disk's directory under its running server.
fn wipe(dir: &Path) {
    for p in files(dir) {
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}

/// Inverts `n` bytes of a file at `at`.
fn flip(path: &Path, at: u64, n: usize) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut b = vec![0u8; n];
    let got = f.read_at(&mut b, at)?;
    for x in &mut b[..got] {
        *x = !*x;
    }
    f.write_all_at(&b[..got], at)
}

/// The chaos scheduler's state: which disk fault waits for repair, which servers lost a disk.
struct Chaos {
    rng: StdRng,
    windows: Vec<Window>,
    /// The disk fault not yet repaired: its window and, for a wipe, the disk's id.
    disk_fault: Option<(usize, Option<String>)>,
    wiped_servers: Vec<usize>,
}

impl Chaos {
    fn open(&mut self, kind: Kind, what: String) -> usize {
        eprintln!("chaos: {} ({what})", kind.name());
        self.windows.push(Window {
            kind,
            what,
            from: Instant::now(),
            to: None,
        });
        self.windows.len() - 1
    }

    fn close(&mut self, w: usize) {
        self.windows[w].to = Some(Instant::now());
    }

    async fn hold(&mut self, secs: std::ops::Range<f64>) {
        let d = Duration::from_secs_f64(self.rng.random_range(secs));
        tokio::time::sleep(d).await;
    }

    /// Closes the outstanding disk fault once repair has put it right.
    async fn check_disk_fault(&mut self, cluster: &Cluster) {
        let Some((w, ref wiped)) = self.disk_fault else {
            return;
        };
        let mut healed = whole(cluster).await;
        if let (true, Some(id)) = (healed, wiped) {
            let disks = admin(cluster, "/api/v1/disks").await.unwrap_or_default();
            healed = disks
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d["id"] == id.as_str() && d["members"].as_u64() == Some(0));
        }
        if healed {
            self.close(w);
            self.disk_fault = None;
        }
    }

    /// Does one fault of `kind` and heals it (a disk fault is healed by repair, later).
    async fn fault(&mut self, cluster: &mut Cluster, kind: Kind) -> anyhow::Result<()> {
        let servers = cluster.volumes.len();
        match kind {
            Kind::VolumeKill | Kind::VolumeStop => {
                let i = self.rng.random_range(0..servers);
                let Some(p) = cluster.volumes[i].as_ref() else {
                    return Ok(());
                };
                let port = p.addr("volume").to_string();
                let w = self.open(kind, format!("vol-{i}"));
                if kind == Kind::VolumeKill {
                    cluster.kill_volume(i);
                    self.hold(2.0..6.0).await;
                    cluster.start_volume_on(i, &port)?;
                } else {
                    p.stop();
                    self.hold(2.0..8.0).await;
                    cluster.volumes[i].as_ref().expect("running").cont();
                }
                self.close(w);
            }
            Kind::FrontendKill => {
                let second = self.rng.random_bool(0.5);
                let p = cluster.frontend_slot(second).as_ref().expect("running");
                let port = p.addr("frontend").to_string();
                let w = self.open(kind, p.name.clone());
                cluster.kill_frontend_of(second);
                self.hold(1.0..4.0).await;
                cluster.restart_frontend_on(second, &port)?;
                self.close(w);
            }
            Kind::MetaRestart => {
                let w = self.open(kind, "meta".into());
                cluster.kill_meta();
                self.hold(1.0..4.0).await;
                cluster.restart_meta_same_port()?;
                self.close(w);
            }
            Kind::RepairKill => {
                let w = self.open(kind, "repair".into());
                cluster.kill_repair();
                self.hold(1.0..5.0).await;
                cluster.start_repair()?;
                self.close(w);
            }
            Kind::DiskWipe | Kind::BitFlip => {
                if self.disk_fault.is_some() {
                    return Ok(());
                }
                let disks = admin(cluster, "/api/v1/disks").await.unwrap_or_default();
                let mut candidates: Vec<(usize, String, PathBuf)> = disks
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|d| d["state"] == "ok" && d["members"].as_u64().unwrap_or(0) > 0)
                    .filter_map(|d| {
                        let node = d["node"].as_str()?;
                        let i: usize = node.strip_prefix("vol-")?.parse().ok()?;
                        let path = PathBuf::from(d["path"].as_str()?);
                        Some((i, d["id"].as_str()?.to_string(), path))
                    })
                    .filter(|(i, _, _)| cluster.volumes[*i].is_some())
                    .filter(|(i, _, _)| kind == Kind::BitFlip || !self.wiped_servers.contains(i))
                    .collect();
                candidates.sort();
                let Some((i, id, path)) = candidates.choose(&mut self.rng).cloned() else {
                    return Ok(());
                };
                if kind == Kind::DiskWipe {
                    let w = self.open(kind, format!("{id} of vol-{i}"));
                    wipe(&path);
                    self.wiped_servers.push(i);
                    self.disk_fault = Some((w, Some(id)));
                } else {
                    let extents = regular_files(&path.join("extents"));
                    let Some(ext) = extents.choose(&mut self.rng).cloned() else {
                        return Ok(());
                    };
                    let len = std::fs::metadata(&ext).map(|m| m.len()).unwrap_or(0);
                    if len == 0 {
                        return Ok(());
                    }
                    let at = self.rng.random_range(0..len);
                    let w = self.open(kind, format!("16 bytes at {at} of {}", ext.display()));
                    flip(&ext, at, 16)?;
                    // A scrub pass finds it (as a read of that fragment would).
                    let _ = cluster.admin_post("/api/v1/scrub/start", Value::Null).await;
                    self.disk_fault = Some((w, None));
                }
            }
            Kind::None => {}
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_loses_no_acknowledged_block_and_costs_clients_errors_only_while_meta_is_down() {
    let seed = env_u64("HOARD_CHAOS_SEED", 1);
    let secs = env_u64("HOARD_CHAOS_SECS", 60);
    let mut cluster = Cluster::start(
        bin(),
        ClusterOpts {
            volume_servers: 9,
            disks_per_server: 2,
            heartbeat_grace: "20s".into(),
            ..ClusterOpts::default()
        },
    )
    .expect("cluster starts");
    cluster.start_second_frontend().unwrap();
    let endpoints = cluster.endpoints();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..3 {
        let client = Client::connect(&endpoints).await.unwrap();
        workers.push(tokio::spawn(load(client, seed, w, Arc::clone(&stop))));
    }

    let mut chaos = Chaos {
        rng: StdRng::seed_from_u64(seed),
        windows: Vec::new(),
        disk_fault: None,
        wiped_servers: Vec::new(),
    };
    // Every kind once, in an order of the seed's choosing, then at random.
    let mut first = KINDS.to_vec();
    first.shuffle(&mut chaos.rng);
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    while began.elapsed() < Duration::from_secs(secs) {
        let kind = first
            .pop()
            .unwrap_or_else(|| *KINDS.choose(&mut chaos.rng).unwrap());
        if let Err(e) = chaos.fault(&mut cluster, kind).await {
            panic!("{} failed: {e:#}\n{}", kind.name(), cluster.logs());
        }
        chaos.hold(1.0..3.0).await;
        chaos.check_disk_fault(&cluster).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for w in workers {
        seen.push(w.await.unwrap());
    }
    let load_secs = began.elapsed().as_secs_f64();

    // Heal: repair brings every volume back to full redundancy.
    let heal_until = Instant::now() + Duration::from_secs(180);
    loop {
        chaos.check_disk_fault(&cluster).await;
        if chaos.disk_fault.is_none() && whole(&cluster).await {
            break;
        }
        if Instant::now() > heal_until {
            let vols = admin(&cluster, "/api/v1/volumes").await;
            panic!(
                "volumes not whole 180 s after the faults\nvolumes: {vols:#?}\n{}",
                cluster.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let dead = cluster.dead();
    assert!(
        dead.is_empty(),
        "processes died: {dead:?}\n{}",
        cluster.logs()
    );

    // The oracle: every acknowledged block, byte-exact, and none reported missing.
    let client = Client::connect(&cluster.endpoints()).await.unwrap();
    let acked: Vec<_> = seen.iter().flat_map(|s| s.acked.iter().cloned()).collect();
    let mut broken: Vec<String> = seen.iter().flat_map(|s| s.broken.clone()).collect();
    let mut bytes = 0u64;
    for (h, bseed, len) in &acked {
        bytes += *len as u64;
        match timed(client.get(&h.parse().unwrap())).await {
            Ok(got) if got == block(*bseed, *len) => {}
            Ok(_) => broken.push(format!("{h}: wrong bytes after the run")),
            Err(e) => broken.push(format!("{h}: lost after the run: {e}")),
        }
    }
    let hashes: Vec<String> = acked.iter().map(|(h, _, _)| h.clone()).collect();
    for chunk in hashes.chunks(500) {
        let missing = client.find_missing(chunk).await.unwrap();
        if !missing.is_empty() {
            broken.push(format!("reported missing after the run: {missing:?}"));
        }
    }

    // Each failed call is put down to the fault it overlapped (meta first: it explains the most).
    let mut order: Vec<&Window> = chaos.windows.iter().collect();
    order.sort_by_key(|w| w.kind);
    let mut table: BTreeMap<Kind, (usize, [u64; 3])> = BTreeMap::new();
    for w in &chaos.windows {
        table.entry(w.kind).or_default().0 += 1;
    }
    let mut unexplained = Vec::new();
    let mut meta_tail = Duration::ZERO;
    for f in seen.iter().flat_map(|s| &s.failures) {
        let w = order.iter().find(|w| {
            let to = w.to.unwrap_or_else(Instant::now) + w.kind.settle();
            f.start <= to && f.end >= w.from
        });
        let kind = w.map_or(Kind::None, |w| w.kind);
        let col = match f.op {
            "put" => 0,
            "get" => 1,
            _ => 2,
        };
        table.entry(kind).or_default().1[col] += 1;
        match w {
            Some(w) if w.kind == Kind::MetaRestart => {
                meta_tail = meta_tail.max(f.end.saturating_duration_since(w.to.unwrap_or(w.from)));
            }
            _ => unexplained.push(format!(
                "{} failed during {} ({}): {}",
                f.op,
                kind.name(),
                w.map_or("", |w| w.what.as_str()),
                f.error
            )),
        }
    }
    let calls: u64 = seen.iter().map(|s| s.calls).sum();
    eprintln!(
        "chaos seed {seed}: {load_secs:.0} s of load, {} faults, {calls} calls, {} blocks acknowledged ({:.0} MB); {} read back byte-exact",
        chaos.windows.len(),
        acked.len(),
        bytes as f64 / 1e6,
        acked.len() - broken.len().min(acked.len())
    );
    eprintln!(
        "chaos {:<20} {:>6} {:>6} {:>6} {:>13}",
        "fault", "times", "put", "get", "find-missing"
    );
    for (kind, (times, errs)) in &table {
        eprintln!(
            "chaos {:<20} {:>6} {:>6} {:>6} {:>13}",
            kind.name(),
            times,
            errs[0],
            errs[1],
            errs[2]
        );
    }
    let meta_down: f64 = chaos
        .windows
        .iter()
        .filter(|w| w.kind == Kind::MetaRestart)
        .filter_map(|w| Some(w.to?.duration_since(w.from).as_secs_f64()))
        .sum();
    eprintln!(
        "chaos meta was down {meta_down:.1} s in all; its errors ended within {:.1} s of its restart",
        meta_tail.as_secs_f64()
    );

    assert!(broken.is_empty(), "broken promises: {broken:#?}");
    assert!(
        unexplained.is_empty(),
        "client-visible errors outside a meta restart: {unexplained:#?}\n{}",
        cluster.logs()
    );
    assert!(
        acked.len() > 100,
        "only {} blocks acknowledged in {load_secs:.0} s",
        acked.len()
    );
}
