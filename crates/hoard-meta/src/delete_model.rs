//! A model-based test of the delete contract, on every engine, with restarts: clients are told blocks
//! are present (puts, dedup checks, `FindMissing`) and commit references to them within the window;
//! collectors take a token, read the references, and delete what none names, as late as they like;
//! meta restarts and its host clock falls an hour behind and is put right again. Whatever the interleaving, a block that a
//! committed reference names is present.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use hoard_types::state::BlockState;
use hoard_types::{BlockHash, BlockLocation, Geometry};

use crate::index_ops::{DeletePolicy, Outcome};
use crate::state::{MetaConfig, MetaState};
use crate::testutil::cell_on;
use crate::{KvEngine, MemEngine, RocksEngine};

const WINDOW: u64 = 60_000;
const REFRESH: u64 = 5_000;
const GRACE: u64 = 300_000;

/// xorshift64*: the test's only source of choices, so that a failing seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A client that was told a block is present and will commit a reference to it by `due` (meta time).
struct Pending {
    hash: BlockHash,
    due: u64,
}

/// A collector between taking its token and deleting.
struct Collector {
    token: u64,
    /// What it will delete: every block it knows of that the references it read do not name.
    victims: Vec<BlockHash>,
}

enum Engine {
    Mem(Arc<MemEngine>),
    Rocks(tempfile::TempDir),
}

impl Engine {
    fn open(&self) -> Arc<dyn KvEngine> {
        match self {
            Engine::Mem(m) => Arc::clone(m) as Arc<dyn KvEngine>,
            Engine::Rocks(dir) => Arc::new(RocksEngine::open(&dir.path().join("db")).unwrap()),
        }
    }
}

fn config() -> MetaConfig {
    MetaConfig {
        extent_capacity: 1 << 20,
        delete: DeletePolicy {
            reference_window: Duration::from_millis(WINDOW),
            assert_refresh: Duration::from_millis(REFRESH),
            delete_grace: Duration::from_millis(GRACE),
        },
        ..Default::default()
    }
}

fn location(volume: u64, n: u64) -> BlockLocation {
    let g = Geometry::DEFAULT;
    BlockLocation {
        volume,
        offset: (n * 4096) % ((1 << 20) - 4096),
        frag_len: g.frag_len(600),
        block_len: 600,
        crcs: vec![n as u32; g.width() as usize],
    }
}

async fn present(state: &MetaState, h: &BlockHash) -> bool {
    state.blocks().rows(&[*h]).unwrap()[0]
        .as_ref()
        .is_some_and(|r| r.state == BlockState::Live)
}

async fn run(engine: Engine, seed: u64, steps: usize) -> BTreeMap<&'static str, u64> {
    let mut rng = Rng(seed | 1);
    // Real time, which clients keep their deadlines by, and the skew of meta's host clock (0, or an
    // hour behind after some restarts).
    let real = Arc::new(AtomicU64::new(1_000_000_000));
    let skew = Arc::new(AtomicI64::new(0));
    let source = {
        let (r, k) = (Arc::clone(&real), Arc::clone(&skew));
        // The monotonic clock is real time, restarted (from an arbitrary origin) with each process.
        Arc::new(move || {
            let now = r.load(Ordering::SeqCst);
            (now.saturating_add_signed(k.load(Ordering::SeqCst)), now)
        }) as crate::clock::TimeSource
    };
    let (mut state, _) = cell_on(engine.open(), config(), Arc::clone(&source), 3, 3);
    let (vol, _) = state.volumes().acquire("model", &[]).await.unwrap();
    let hashes: Vec<BlockHash> = (0..24u64)
        .map(|i| BlockHash::of(&i.to_le_bytes()))
        .collect();
    // The references clients committed: the truth a collector reads.
    let mut refs: BTreeSet<BlockHash> = BTreeSet::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut collectors: Vec<Collector> = Vec::new();
    let mut puts = 0u64;
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    for step in 0..steps {
        let now = real.load(Ordering::SeqCst);
        let h = hashes[rng.below(hashes.len() as u64) as usize];
        match rng.below(100) {
            // A put: the block is present once it answers (inserted, or deduplicated).
            0..=14 => {
                puts += 1;
                state
                    .blocks()
                    .commit(h, location(vol.id, puts))
                    .await
                    .unwrap();
                pending.push(Pending {
                    hash: h,
                    due: now + rng.below(WINDOW),
                });
                *counts.entry("put").or_default() += 1;
            }
            // A dedup check (reviving) or FindMissing: a reference follows only a presence answer.
            15..=34 => {
                let revive = rng.below(2) == 0;
                if state.blocks().assert(&[h], revive).await.unwrap()[0] {
                    pending.push(Pending {
                        hash: h,
                        due: now + rng.below(WINDOW),
                    });
                    *counts.entry("told present").or_default() += 1;
                }
            }
            // A client drops a reference: the block may become garbage.
            35..=44 => {
                refs.remove(&h);
            }
            // A collector takes its token, then reads the references.
            45..=54 => {
                let token = state.blocks().delete_token().unwrap();
                let victims = hashes
                    .iter()
                    .filter(|x| !refs.contains(x))
                    .copied()
                    .collect();
                collectors.push(Collector { token, victims });
            }
            // A collector deletes, however late.
            55..=64 if !collectors.is_empty() => {
                let c = collectors.remove(rng.below(collectors.len() as u64) as usize);
                let out = state.blocks().delete(&c.victims, c.token).await.unwrap();
                for o in out {
                    *counts
                        .entry(match o {
                            Outcome::Deleted => "deleted",
                            Outcome::Kept => "kept",
                            _ => "other",
                        })
                        .or_default() += 1;
                }
            }
            65..=69 => {
                let out = state.blocks().undelete(&[h]).await.unwrap();
                if out[0] == Outcome::Restored {
                    *counts.entry("restored").or_default() += 1;
                }
            }
            // Meta restarts; sometimes its wall clock comes back an hour behind.
            70..=72 => {
                state.shutdown();
                drop(state);
                if rng.below(3) == 0 {
                    let k = if skew.load(Ordering::SeqCst) == 0 {
                        -3_600_000
                    } else {
                        0
                    };
                    skew.store(k, Ordering::SeqCst);
                }
                state = cell_on(engine.open(), config(), Arc::clone(&source), 3, 3).0;
                *counts.entry("restart").or_default() += 1;
            }
            // Time passes: a little, a window, or past the grace.
            _ => {
                let by = match rng.below(10) {
                    0 => GRACE + rng.below(GRACE),
                    1..=3 => WINDOW / 2 + rng.below(WINDOW),
                    _ => rng.below(REFRESH * 2),
                };
                // Clients keep their deadlines: what falls due in the jump is committed before it.
                pending.retain(|p| {
                    let due = p.due <= now + by;
                    if due {
                        refs.insert(p.hash);
                    }
                    !due
                });
                real.fetch_add(by, Ordering::SeqCst);
            }
        }
        // Clients commit the references that are due (at the latest at their deadline).
        let now = real.load(Ordering::SeqCst);
        pending.retain(|p| {
            let commit = p.due <= now || rng.below(4) == 0;
            if commit {
                refs.insert(p.hash);
            }
            !commit
        });
        for r in &refs {
            assert!(
                present(&state, r).await,
                "seed {seed} step {step}: a committed reference names {r}, which is not present \
                 ({counts:?})"
            );
        }
    }
    state.shutdown();
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_committed_reference_ever_names_a_deleted_block_on_any_engine() {
    let mut total: BTreeMap<&'static str, u64> = BTreeMap::new();
    for seed in 1..=12u64 {
        for counts in [
            run(Engine::Mem(Arc::new(MemEngine::new())), seed * 7919, 600).await,
            run(
                Engine::Rocks(tempfile::tempdir().unwrap()),
                seed * 104_729,
                400,
            )
            .await,
        ] {
            for (k, v) in counts {
                *total.entry(k).or_default() += v;
            }
        }
    }
    // The runs exercised both sides of the guard, and restarts.
    for k in ["deleted", "kept", "restored", "restart", "told present"] {
        assert!(
            total.get(k).copied().unwrap_or(0) > 10,
            "too few {k}: {total:?}"
        );
    }
}
