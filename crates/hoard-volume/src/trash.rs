//! A disk's trash: an extent taken out of service (a superseded generation, a member of a retired
//! volume) is renamed into `<disk>/trash/` and waits there. The volume server never decides alone
//! to unlink one: every heartbeat lists the trash to meta, whose trash inspector clears an entry once
//! it proved that nothing needs it, and whose referee halts every unlink in the cell when an entry
//! vanishes without a clearance. The sweep unlinks an entry only when meta's last answer cleared it,
//! its trash grace has passed and unlinks are not halted, and logs each unlink with its clearance.
//!
//! Entries are named `v<volume>-m<member>-g<generation>-<ms trashed>`; an entry of an older build
//! (`<volume>-<ms>`) is told by the `member.toml` inside it.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hoard_types::{ExtentId, now_ms};

use crate::disk::{Disk, TRASH_DIR};
use crate::extent::MemberFile;
use crate::format::read_checked_toml;
use crate::store::VolumeStore;

/// The most entries one heartbeat lists per disk (the oldest first).
pub const LIST_LIMIT: usize = 4096;

/// One entry of a disk's trash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrashEntry {
    pub disk_id: String,
    pub name: String,
    /// `None`: neither its name nor its `member.toml` tells which extent it was.
    pub extent: Option<ExtentId>,
    pub trashed_unix_ms: u64,
    pub bytes: u64,
    pub path: PathBuf,
}

/// Meta's word on this server's trash, from its last heartbeat answer. Memory only: until meta
/// first answers, nothing is cleared.
#[derive(Clone, Debug, Default)]
pub struct Word {
    /// Clearance ids by (disk id, entry name).
    pub cleared: HashMap<(String, String), u64>,
    /// Non-empty: unlinks are halted cell-wide, and why.
    pub halted: String,
}

/// The name of the trash entry of `id`, trashed at `at` (Unix ms).
pub fn entry_name(id: ExtentId, at: u64) -> String {
    format!("v{}-m{}-g{}-{at}", id.volume, id.member, id.generation)
}

/// What an entry's name says: the extent (new names only) and when it was trashed.
pub fn parse_name(name: &str) -> (Option<ExtentId>, Option<u64>) {
    let parts: Vec<&str> = name.split('-').collect();
    let at = parts.last().and_then(|t| t.parse::<u64>().ok());
    let id = match parts.as_slice() {
        [v, m, g, _] => (|| {
            Some(ExtentId {
                volume: v.strip_prefix('v')?.parse().ok()?,
                member: m.strip_prefix('m')?.parse().ok()?,
                generation: g.strip_prefix('g')?.parse().ok()?,
            })
        })(),
        _ => None,
    };
    (id, at)
}

/// The extent an entry of an older build held, from its `member.toml`.
fn identify(dir: &Path) -> Option<ExtentId> {
    let mf: MemberFile = read_checked_toml(&dir.join("member.toml")).ok()?;
    Some(ExtentId {
        volume: mf.volume,
        member: mf.member,
        generation: mf.generation,
    })
}

/// Every entry of `disk`'s trash, oldest first.
pub fn list(disk: &Disk) -> Vec<TrashEntry> {
    let Ok(entries) = fs::read_dir(disk.path.join(TRASH_DIR)) else {
        return Vec::new();
    };
    let mut out: Vec<TrashEntry> = entries
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let (id, at) = parse_name(&name);
            TrashEntry {
                disk_id: disk.id.clone(),
                extent: id.or_else(|| identify(&path)),
                trashed_unix_ms: at.unwrap_or(0),
                bytes: crate::store::dir_bytes(&path),
                name,
                path,
            }
        })
        .collect();
    out.sort_by(|a, b| (a.trashed_unix_ms, &a.name).cmp(&(b.trashed_unix_ms, &b.name)));
    out
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub unlinked: usize,
    /// Cleared and past their grace, kept because unlinks are halted.
    pub held: usize,
    /// Not cleared by meta (yet), or within their grace.
    pub waiting: usize,
}

/// Unlinks the trash entries meta cleared whose grace has passed, unless unlinks are halted.
pub fn sweep(store: &VolumeStore, grace: Duration) -> Swept {
    let word = store.trash_word.lock().clone();
    let cutoff = now_ms().saturating_sub(grace.as_millis() as u64);
    let mut s = Swept::default();
    for d in store.disks() {
        if d.failure().is_some() {
            continue;
        }
        for e in list(d) {
            let clearance = word.cleared.get(&(e.disk_id.clone(), e.name.clone()));
            match clearance {
                Some(_) if e.trashed_unix_ms >= cutoff => s.waiting += 1,
                Some(_) if !word.halted.is_empty() => s.held += 1,
                Some(&c) => match fs::remove_dir_all(&e.path) {
                    Ok(()) => {
                        tracing::info!(
                            disk = %e.disk_id,
                            entry = %e.name,
                            clearance = c,
                            bytes = e.bytes,
                            "trashed extent unlinked under meta's clearance"
                        );
                        s.unlinked += 1;
                    }
                    Err(err) => {
                        tracing::warn!(disk = %e.disk_id, entry = %e.name, "cannot unlink: {err}")
                    }
                },
                None => s.waiting += 1,
            }
        }
    }
    if s.held > 0 {
        tracing::warn!(
            held = s.held,
            "trash unlinks are halted by meta: {}",
            word.halted
        );
    }
    s
}

/// The trash sweep of a volume server as a worker (`trash/<node>`): every minute (or every grace,
/// when shorter), the entries meta cleared whose grace has passed are unlinked.
pub struct TrashSweep {
    pub store: Arc<VolumeStore>,
    pub grace: Duration,
    pub unlinked: usize,
    pub last: Swept,
}

impl hoard_runtime::Worker for TrashSweep {
    fn name(&self) -> String {
        format!("trash/{}", self.store.node_id)
    }

    fn status(&self) -> hoard_runtime::WorkerStatus {
        let halted = self.store.trash_word.lock().halted.clone();
        hoard_runtime::WorkerStatus {
            progress: None,
            detail: format!(
                "{} unlinked; {} waiting for a clearance or the grace ({} s){}",
                self.unlinked,
                self.last.waiting,
                self.grace.as_secs(),
                if halted.is_empty() {
                    String::new()
                } else {
                    format!("; HALTED: {halted}")
                }
            ),
        }
    }

    async fn work(
        &mut self,
        _: &hoard_runtime::CancellationToken,
    ) -> Result<hoard_runtime::WorkerState, hoard_runtime::WorkerError> {
        let (store, grace) = (Arc::clone(&self.store), self.grace);
        self.last = tokio::task::spawn_blocking(move || sweep(&store, grace))
            .await
            .map_err(hoard_runtime::WorkerError::transient)?;
        self.unlinked += self.last.unlinked;
        Ok(hoard_runtime::WorkerState::Throttled(
            Duration::from_secs(60).min(self.grace.max(Duration::from_millis(500))),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_extent_and_the_time() {
        let id = ExtentId {
            volume: 12,
            member: 3,
            generation: 7,
        };
        let n = entry_name(id, 1_700_000_000_123);
        assert_eq!(n, "v12-m3-g7-1700000000123");
        assert_eq!(parse_name(&n), (Some(id), Some(1_700_000_000_123)));
        // An older build's name tells the time only.
        assert_eq!(
            parse_name("12-1700000000123"),
            (None, Some(1_700_000_000_123))
        );
        assert_eq!(parse_name("junk"), (None, None));
    }

    #[test]
    fn the_sweep_unlinks_only_what_meta_cleared_past_the_grace_and_never_while_halted() {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::open(&crate::store::VolumeStoreConfig {
            node_id: "n1".into(),
            disks: vec![dir.path().join("d0")],
            disk_capacity: Some(1 << 30),
        })
        .unwrap();
        let disk = Arc::clone(&store.disks()[0]);
        let id = |member| ExtentId {
            volume: 7,
            member,
            generation: 1,
        };
        let old = now_ms() - 60_000;
        let names = [
            entry_name(id(0), old),      // cleared, past the grace
            entry_name(id(1), old),      // not cleared
            entry_name(id(2), now_ms()), // cleared, within the grace
        ];
        for n in &names {
            let d = disk.path.join(TRASH_DIR).join(n);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("0.dat"), b"fragments").unwrap();
        }
        let cleared = |halted: &str| Word {
            cleared: [
                (disk.id.clone(), names[0].clone()),
                (disk.id.clone(), names[2].clone()),
            ]
            .into_iter()
            .zip([1, 2])
            .collect(),
            halted: halted.into(),
        };
        let grace = Duration::from_secs(10);
        // Before meta's first answer nothing is cleared.
        assert_eq!(sweep(&store, grace).unlinked, 0);
        *store.trash_word.lock() = cleared("an extent vanished");
        let s = sweep(&store, grace);
        assert_eq!(
            (s.unlinked, s.held, s.waiting),
            (0, 1, 2),
            "halted: nothing unlinked"
        );
        *store.trash_word.lock() = cleared("");
        let s = sweep(&store, grace);
        assert_eq!((s.unlinked, s.waiting), (1, 2));
        let left: Vec<String> = list(&disk).into_iter().map(|e| e.name).collect();
        assert_eq!(left, names[1..].to_vec());
        assert_eq!(list(&disk)[0].extent, Some(id(1)));
    }
}
