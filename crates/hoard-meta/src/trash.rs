//! The trash inspector and the extent referee: no extent leaves a volume server's trash unless meta
//! proved nothing needs it, and an unlink nobody cleared stops every further unlink.
//!
//! - **Ledger.** Every heartbeat lists the trash of the server's healthy disks. Meta keeps one row
//!   per entry (table `config`, keys `trash/<disk>\0<name>`) and a summary (key `trash`).
//! - **Inspector** ([`Trash::inspect`], a worker every `trash_inspect_every`). An entry is cleared
//!   when meta can prove its extent holds nothing any row needs:
//!   - of a *retired* volume: a walk of the whole index, once every commit begun before it is
//!     written, finds no row in any state pointing into the volume. A row found is a violation: the
//!     inspection failed, and unlinks halt;
//!   - a *superseded* generation of a member: rows point into the volume, but the member's current
//!     generation serves them; cleared once a volume server reports that generation in service;
//!   - a generation *newer* than meta's that no rebuild or move is writing: abandoned, it never
//!     served;
//!   - anything else waits: the generation meta lists as current, a volume meta does not know, an
//!     entry whose extent the server could not tell.
//!
//!   A clearance is written (synced) before any heartbeat answer hands it out.
//! - **Referee** ([`referee`], in every heartbeat). An entry that vanishes from a healthy disk's
//!   trash after a clearance was unlinked as meant; one that vanishes without a clearance was
//!   unlinked by something else (a person, a bug): it is counted, logged and every unlink in the
//!   cell halts until an operator resumes them.
//! - **Unlink.** A volume server unlinks only entries meta's last answer cleared, once its own
//!   `trash_grace` has passed and unless the answer says unlinks are halted (`hoard_volume::trash`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hoard_proto::v1;
use hoard_types::state::VolumeState;
use hoard_types::{ExtentId, VolumeId, now_ms};

use crate::MetaError;
use crate::blocks::BlockIndex;
use crate::core::{Core, Tables};
use crate::engine::{Cf, KvEngine, WriteBatch};
use crate::rows::{TrashEntryRow, TrashRow};
use crate::schema::{self, ConfigKey, TRASH_ENTRY_PREFIX, decode, encode, trash_entry_key};

/// The most trash entries meta takes from one heartbeat.
pub const MAX_REPORTED: usize = 1 << 16;

/// A trashed extent as its volume server reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedTrash {
    pub disk_id: String,
    pub name: String,
    pub extent: Option<ExtentId>,
    pub trashed_unix_ms: u64,
    pub bytes: u64,
}

impl ReportedTrash {
    /// A reported entry, checked: its name is one directory name.
    pub fn parse(e: &v1::TrashEntry) -> Result<ReportedTrash, MetaError> {
        if e.name.is_empty() || e.name.len() > 255 || e.name.contains(['/', '\0']) {
            return Err(MetaError::Invalid(format!(
                "heartbeat: trash entry {:?} of disk {}: not a directory name",
                e.name, e.disk_id
            )));
        }
        Ok(ReportedTrash {
            disk_id: e.disk_id.clone(),
            name: e.name.clone(),
            extent: e.extent.map(Into::into),
            trashed_unix_ms: e.trashed_unix_ms,
            bytes: e.bytes.min(hoard_types::MAX_EXTENT_CAPACITY * 2),
        })
    }
}

/// The trash ledger in memory: the summary and every entry by (disk id, name).
#[derive(Default)]
pub(crate) struct Ledger {
    pub(crate) summary: TrashRow,
    pub(crate) entries: BTreeMap<(String, String), TrashEntryRow>,
}

impl Ledger {
    pub(crate) fn load(engine: &dyn KvEngine) -> Result<Ledger, MetaError> {
        let summary = match engine.get(Cf::Config, ConfigKey::Trash.bytes())? {
            Some(b) => decode(&b)?,
            None => TrashRow::default(),
        };
        let mut entries = BTreeMap::new();
        let mut err = None;
        engine.scan(Cf::Config, TRASH_ENTRY_PREFIX, &mut |k, v| {
            if !k.starts_with(TRASH_ENTRY_PREFIX) {
                return false;
            }
            match decode::<TrashEntryRow>(v) {
                Ok(r) => {
                    entries.insert((r.disk_id.clone(), r.name.clone()), r);
                }
                Err(e) => err = Some(e),
            }
            err.is_none()
        })?;
        err.map_or(Ok(Ledger { summary, entries }), Err)
    }

    /// Halts every unlink in the cell (the first reason stays until an operator resumes).
    fn halt(&mut self, b: &mut WriteBatch, why: String, now: u64) {
        tracing::error!("trash unlinks halted: {why}");
        if self.summary.halted.is_empty() {
            self.summary.halted = why;
            self.summary.halted_unix_ms = now;
        }
        schema::put_config(b, ConfigKey::Trash, &self.summary);
    }

    fn put(b: &mut WriteBatch, e: &TrashEntryRow) {
        b.put(Cf::Config, trash_entry_key(&e.disk_id, &e.name), encode(e));
    }
}

/// The referee's part of a heartbeat from `node`: records new trash entries of its healthy disks,
/// checks that every entry gone since was cleared, and answers the clearances of its entries and the
/// halt reason (empty: not halted). A disk whose trash was listed only in part is not checked.
pub(crate) fn referee(
    t: &mut Tables,
    b: &mut WriteBatch,
    node: &str,
    disks: &[crate::nodes::ReportedDisk],
    trash: &[ReportedTrash],
    truncated: &[String],
) -> (Vec<v1::TrashClearance>, String) {
    let now = now_ms();
    let mut clearances = Vec::new();
    for d in disks {
        let range = (d.disk_id.clone(), String::new())..;
        let known: Vec<(String, String)> = t
            .trash
            .entries
            .range(range)
            .take_while(|((disk, _), _)| *disk == d.disk_id)
            .map(|(k, _)| k.clone())
            .collect();
        if !d.health.is_ok() {
            // Its contents are gone in meta's eyes (its members are lost): nothing to referee.
            for k in known {
                t.trash.entries.remove(&k);
                b.delete(Cf::Config, trash_entry_key(&k.0, &k.1));
            }
            continue;
        }
        let listed: BTreeMap<&str, &ReportedTrash> = trash
            .iter()
            .filter(|e| e.disk_id == d.disk_id)
            .map(|e| (e.name.as_str(), e))
            .collect();
        if !truncated.contains(&d.disk_id) {
            for k in known.iter().filter(|k| !listed.contains_key(k.1.as_str())) {
                let Some(gone) = t.trash.entries.remove(k) else {
                    continue;
                };
                b.delete(Cf::Config, trash_entry_key(&k.0, &k.1));
                if gone.clearance != 0 {
                    t.trash.summary.unlinks += 1;
                    metrics::counter!("hoard_trash_unlinks_total").increment(1);
                } else {
                    t.trash.summary.unlinks_without_clearance += 1;
                    metrics::counter!("hoard_extent_unlinks_without_clearance_total").increment(1);
                    let why = format!(
                        "trash entry {} of disk {} on {node} vanished without a clearance",
                        gone.name, gone.disk_id
                    );
                    t.trash.halt(b, why, now);
                }
                schema::put_config(b, ConfigKey::Trash, &t.trash.summary);
            }
        }
        for (name, e) in listed {
            let key = (d.disk_id.clone(), name.to_string());
            match t.trash.entries.get(&key) {
                Some(row) => {
                    if row.clearance != 0 {
                        clearances.push(v1::TrashClearance {
                            disk_id: row.disk_id.clone(),
                            name: row.name.clone(),
                            clearance: row.clearance,
                        });
                    }
                }
                None => {
                    let id = e.extent.unwrap_or(ExtentId {
                        volume: 0,
                        member: 0,
                        generation: 0,
                    });
                    let row = TrashEntryRow {
                        disk_id: d.disk_id.clone(),
                        name: name.to_string(),
                        node_id: node.to_string(),
                        identified: e.extent.is_some(),
                        volume: id.volume,
                        member: id.member,
                        generation: id.generation,
                        trashed_unix_ms: e.trashed_unix_ms,
                        bytes: e.bytes,
                        clearance: 0,
                        cleared_unix_ms: 0,
                        waiting: "not inspected yet".into(),
                    };
                    Ledger::put(b, &row);
                    t.trash.entries.insert(key, row);
                }
            }
        }
    }
    (clearances, t.trash.summary.halted.clone())
}

/// What the inspector decided for one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Clear,
    Wait(String),
    /// The inspection failed: something still needs the extent.
    Violation(String),
}

/// The inspection of one uncleared entry. `walked`: the rows the walk found pointing into each
/// retired volume it looked for.
fn verdict(t: &Tables, e: &TrashEntryRow, walked: &BTreeMap<VolumeId, u64>) -> Verdict {
    if !e.identified {
        return Verdict::Wait("its server cannot tell which extent it holds".into());
    }
    let Some(v) = t.volumes.get(&e.volume) else {
        return Verdict::Wait(format!("volume {} is unknown to meta", e.volume));
    };
    if v.state == VolumeState::Retired {
        return match walked.get(&e.volume) {
            None => Verdict::Wait("retired since the last index walk".into()),
            Some(0) => Verdict::Clear,
            Some(n) => Verdict::Violation(format!(
                "{n} row(s) of the index still point into retired volume {}",
                e.volume
            )),
        };
    }
    let Some(m) = v.members.get(e.member as usize) else {
        return Verdict::Wait(format!("volume {} has no member {}", e.volume, e.member));
    };
    let id = ExtentId {
        volume: e.volume,
        member: e.member,
        generation: e.generation,
    };
    if e.generation < m.generation {
        let current = ExtentId {
            generation: m.generation,
            ..id
        };
        let served = t
            .in_service
            .values()
            .any(|xs| xs.iter().any(|x| x.id == current));
        if served {
            Verdict::Clear
        } else {
            Verdict::Wait(format!(
                "the member's current generation {} is not reported in service yet",
                m.generation
            ))
        }
    } else if e.generation > m.generation {
        if crate::nodes::in_flight(t, &id) {
            Verdict::Wait("a rebuild or move is still writing this generation".into())
        } else {
            Verdict::Clear
        }
    } else {
        Verdict::Wait("meta lists this generation as the member's current one".into())
    }
}

/// What one inspection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inspection {
    pub cleared: u64,
    pub waiting: u64,
    pub violations: u64,
    /// Rows the index walk visited (0: no walk was needed).
    pub rows_walked: u64,
}

/// The ledger as operators see it.
#[derive(Clone, Debug, Default)]
pub struct TrashStatus {
    pub summary: TrashRow,
    pub entries: u64,
    pub bytes: u64,
    pub cleared: u64,
    pub cleared_bytes: u64,
    /// The oldest uncleared entries (at most 100), with why each waits.
    pub waiting: Vec<TrashEntryRow>,
}

pub struct Trash {
    core: Arc<Core>,
    blocks: Arc<BlockIndex>,
}

impl Trash {
    pub(crate) fn new(core: Arc<Core>, blocks: Arc<BlockIndex>) -> Trash {
        Trash { core, blocks }
    }

    /// Inspects every uncleared entry: clears what is proved unneeded, halts unlinks on a violation.
    pub async fn inspect(&self) -> Result<Inspection, MetaError> {
        let retired: BTreeSet<VolumeId> = {
            let t = self.core.lock();
            t.trash
                .entries
                .values()
                .filter(|e| e.clearance == 0 && e.identified)
                .filter(|e| {
                    t.volumes
                        .get(&e.volume)
                        .is_some_and(|v| v.state == VolumeState::Retired)
                })
                .map(|e| e.volume)
                .collect()
        };
        let mut walked: BTreeMap<VolumeId, u64> = BTreeMap::new();
        let mut rows_walked = 0;
        if !retired.is_empty() {
            // Every commit begun before now is written: a row on its way cannot be missed.
            self.blocks.barrier().await?;
            walked = retired.iter().map(|&v| (v, 0)).collect();
            crate::compaction::walk_rows(self.core.engine.as_ref(), &[], |_, r| {
                rows_walked += 1;
                if let Some(n) = walked.get_mut(&r.volume) {
                    *n += 1;
                }
                true
            })?;
        }
        let now = now_ms();
        let mut out = Inspection {
            rows_walked,
            ..Default::default()
        };
        self.core.mutate(true, |t, b| {
            let keys: Vec<(String, String)> = t
                .trash
                .entries
                .iter()
                .filter(|(_, e)| e.clearance == 0)
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                let v = verdict(t, &t.trash.entries[&k], &walked);
                let mut e = t.trash.entries[&k].clone();
                match v {
                    Verdict::Clear => {
                        t.trash.summary.last_clearance += 1;
                        e.clearance = t.trash.summary.last_clearance;
                        e.cleared_unix_ms = now;
                        e.waiting.clear();
                        out.cleared += 1;
                        tracing::info!(
                            disk = %e.disk_id,
                            entry = %e.name,
                            clearance = e.clearance,
                            "trash entry cleared for unlinking"
                        );
                    }
                    Verdict::Wait(why) => {
                        out.waiting += 1;
                        if e.waiting == why {
                            continue;
                        }
                        e.waiting = why;
                    }
                    Verdict::Violation(why) => {
                        out.waiting += 1;
                        if e.waiting == why {
                            continue;
                        }
                        out.violations += 1;
                        t.trash.summary.violations += 1;
                        let reason = format!(
                            "inspection of trash entry {} of disk {}: {why}",
                            e.name, e.disk_id
                        );
                        t.trash.halt(b, reason, now);
                        e.waiting = why;
                    }
                }
                Ledger::put(b, &e);
                t.trash.entries.insert(k, e);
            }
            t.trash.summary.inspections += 1;
            t.trash.summary.last_inspection_unix_ms = now;
            schema::put_config(b, ConfigKey::Trash, &t.trash.summary);
        })?;
        metrics::counter!("hoard_trash_clearances_total").increment(out.cleared);
        metrics::counter!("hoard_trash_inspection_violations_total").increment(out.violations);
        Ok(out)
    }

    /// The ledger: counts, the halt and the oldest uncleared entries.
    pub fn status(&self) -> TrashStatus {
        let t = self.core.lock();
        let mut s = TrashStatus {
            summary: t.trash.summary.clone(),
            ..Default::default()
        };
        let mut waiting: Vec<&TrashEntryRow> = Vec::new();
        for e in t.trash.entries.values() {
            s.entries += 1;
            s.bytes += e.bytes;
            if e.clearance != 0 {
                s.cleared += 1;
                s.cleared_bytes += e.bytes;
            } else {
                waiting.push(e);
            }
        }
        waiting.sort_by_key(|e| (e.trashed_unix_ms, e.disk_id.clone(), e.name.clone()));
        s.waiting = waiting.into_iter().take(100).cloned().collect();
        s
    }

    /// An operator lifts the halt (after finding why an extent vanished or an inspection failed).
    pub fn resume(&self) -> Result<TrashStatus, MetaError> {
        self.core.mutate(true, |t, b| {
            if !t.trash.summary.halted.is_empty() {
                tracing::warn!(
                    reason = %t.trash.summary.halted,
                    "trash unlinks resumed by an operator"
                );
            }
            t.trash.summary.halted.clear();
            t.trash.summary.halted_unix_ms = 0;
            schema::put_config(b, ConfigKey::Trash, &t.trash.summary);
        })?;
        Ok(self.status())
    }

    /// The trash gauges.
    pub fn publish_metrics(&self) {
        let s = self.status();
        metrics::gauge!("hoard_trash_halted").set(if s.summary.halted.is_empty() {
            0.0
        } else {
            1.0
        });
        metrics::gauge!("hoard_trash_entries", "state" => "cleared").set(s.cleared as f64);
        metrics::gauge!("hoard_trash_entries", "state" => "waiting")
            .set((s.entries - s.cleared) as f64);
    }
}

#[cfg(test)]
mod tests;
