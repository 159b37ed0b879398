//! Which disks of the cell can take new members now, and placing members on them: the placement rules
//! ([`crate::placement`], pure) applied to the cell's tables. Volume creation, repair and moves all
//! place through here.

use std::collections::HashMap;

use hoard_types::state::VolumeState;

use crate::core::{MetaConfig, Tables};
use crate::health;
use crate::placement::{self, Candidate};
use crate::rows::DiskRow;

/// A disk as placement sees it (for any disk meta knows, healthy or not).
pub(crate) fn candidate_of(t: &Tables, disk: &str) -> Option<Candidate> {
    let d = t.disks.get(disk)?;
    let n = t.nodes.get(&d.node_id)?;
    Some(Candidate {
        disk_id: disk.to_string(),
        node_id: d.node_id.clone(),
        zone: n.labels.get("zone").cloned().unwrap_or_default(),
        rack: n.labels.get("rack").cloned().unwrap_or_default(),
        free_bytes: d.free_bytes,
        members: 0,
    })
}

/// Bytes a disk holds or has promised: its used bytes, plus the room its members of open volumes may
/// still fill.
pub(crate) fn committed_bytes(t: &Tables, cfg: &MetaConfig, disk: &str) -> u64 {
    let Some(d) = t.disks.get(disk) else {
        return 0;
    };
    let open = t
        .volumes
        .values()
        .filter(|v| v.state.writable())
        .flat_map(|v| v.members.iter())
        .filter(|m| m.disk_id == disk)
        .count() as u64;
    d.used_bytes
        .saturating_add(open.saturating_mul(cfg.extent_capacity))
}

/// Disks that may take members, whatever their fill.
fn usable_disks<'a>(
    t: &'a Tables,
    cfg: &'a MetaConfig,
    now: u64,
) -> impl Iterator<Item = (&'a String, &'a DiskRow)> {
    t.disks
        .iter()
        .filter(move |(_, d)| health::disk_usable(t, cfg, d, now))
}

/// Whether the cell lacks room rather than disks: enough usable disks, too few below high water.
pub(crate) fn full_reason(t: &Tables, cfg: &MetaConfig, now: u64, width: usize) -> Option<String> {
    let healthy = usable_disks(t, cfg, now).count();
    let roomy = candidates(t, cfg, now).len();
    (healthy >= width && roomy < width).then(|| {
        format!(
            "the cell is full: {healthy} healthy disks, {roomy} below the high-water mark of {:.0}% with room for a {} extent; add capacity or delete data",
            cfg.high_water * 100.0,
            hoard_types::ByteSize(cfg.extent_capacity)
        )
    })
}

/// Usable disks with room for one more extent below the high-water mark.
pub(crate) fn candidates(t: &Tables, cfg: &MetaConfig, now: u64) -> Vec<Candidate> {
    let mut members: HashMap<&str, u32> = HashMap::new();
    for v in t
        .volumes
        .values()
        .filter(|v| v.state != VolumeState::Retired)
    {
        for m in &v.members {
            *members.entry(m.disk_id.as_str()).or_default() += 1;
        }
    }
    usable_disks(t, cfg, now)
        .filter(|(id, d)| {
            let after = committed_bytes(t, cfg, id).saturating_add(cfg.extent_capacity);
            d.free_bytes >= cfg.extent_capacity
                && (d.capacity_bytes == 0
                    || after as f64 <= cfg.high_water * d.capacity_bytes as f64)
        })
        .filter_map(|(id, d)| {
            let mut c = candidate_of(t, id)?;
            c.free_bytes = d.free_bytes;
            c.members = members.get(id.as_str()).copied().unwrap_or(0);
            Some(c)
        })
        .collect()
}

/// Places `count` members beside `existing` on candidate disks passing `keep`. Disks a frontend just
/// reported failing, slow disks, and disks of nodes that missed their last heartbeats, are avoided when possible,
/// and used when nothing else fits: the report and the silence are hints, the grace is the truth. Answers the candidates and the indexes of the chosen ones.
pub(crate) fn place_on(
    t: &Tables,
    cfg: &MetaConfig,
    now: u64,
    existing: &[Candidate],
    count: usize,
    per_node_cap: Option<usize>,
    keep: impl Fn(&Candidate) -> bool,
) -> Result<(Vec<Candidate>, Vec<usize>), placement::PlacementError> {
    let all: Vec<Candidate> = candidates(t, cfg, now)
        .into_iter()
        .filter(|c| keep(c))
        .collect();
    let trusted: Vec<Candidate> = all
        .iter()
        .filter(|c| {
            !t.suspect.contains(&c.disk_id)
                && !t.slow.contains_key(&c.disk_id)
                && !health::node_late(t, &c.node_id, now)
        })
        .cloned()
        .collect();
    match placement::place_more(existing, &trusted, count, per_node_cap) {
        Ok(p) => Ok((trusted, p)),
        Err(e) if trusted.len() == all.len() => Err(e),
        Err(_) => placement::place_more(existing, &all, count, per_node_cap).map(|p| (all, p)),
    }
}
