//! Placement: which disks take the members of a new volume. Pure; no I/O.
//!
//! Members go to distinct disks, spread over as many zones, then racks, then nodes as exist, and no
//! failure domain holds more than `m` members when `per_node_cap` asks for it. Among equally spread
//! choices, disks with more free space win.

use std::collections::HashMap;

/// A disk that may take a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub disk_id: String,
    pub node_id: String,
    pub zone: String,
    pub rack: String,
    pub free_bytes: u64,
    /// Members of any volume the disk holds already: among equals, the emptiest disk wins, so that
    /// volumes created together do not pile onto the same disks.
    pub members: u32,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "not enough healthy disks for a {width}-member volume: need {width} distinct disks, {healthy} healthy disk(s) exist"
    )]
    TooFewDisks { width: usize, healthy: usize },
    #[error(
        "not enough healthy nodes for a {width}-member volume with at most {cap} member(s) per node: need {need} node(s) with free disks, {nodes} exist ({healthy} healthy disk(s))"
    )]
    TooFewNodes {
        width: usize,
        cap: usize,
        need: usize,
        nodes: usize,
        healthy: usize,
    },
}

/// Chooses `width` candidates. With `per_node_cap`, no node gets more than that many members.
/// Returns indices into `cands`, in member order.
pub fn place(
    cands: &[Candidate],
    width: usize,
    per_node_cap: Option<usize>,
) -> Result<Vec<usize>, PlacementError> {
    place_more(&[], cands, width, per_node_cap)
}

/// Chooses `width` more candidates for a volume whose other members sit on `existing`, spreading the
/// whole volume by the same rules (repair targets, moves).
pub fn place_more(
    existing: &[Candidate],
    cands: &[Candidate],
    width: usize,
    per_node_cap: Option<usize>,
) -> Result<Vec<usize>, PlacementError> {
    if cands.len() < width {
        return Err(PlacementError::TooFewDisks {
            width,
            healthy: cands.len(),
        });
    }
    let mut zone_n: HashMap<&str, usize> = HashMap::new();
    let mut rack_n: HashMap<(&str, &str), usize> = HashMap::new();
    let mut node_n: HashMap<&str, usize> = HashMap::new();
    for c in existing {
        *zone_n.entry(c.zone.as_str()).or_default() += 1;
        *rack_n
            .entry((c.zone.as_str(), c.rack.as_str()))
            .or_default() += 1;
        *node_n.entry(c.node_id.as_str()).or_default() += 1;
    }
    let mut chosen: Vec<usize> = Vec::with_capacity(width);
    let mut taken = vec![false; cands.len()];
    while chosen.len() < width {
        let best = cands
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                !taken[*i]
                    && per_node_cap.is_none_or(|cap| {
                        node_n.get(c.node_id.as_str()).copied().unwrap_or(0) < cap
                    })
            })
            .min_by_key(|(_, c)| {
                (
                    zone_n.get(c.zone.as_str()).copied().unwrap_or(0),
                    rack_n
                        .get(&(c.zone.as_str(), c.rack.as_str()))
                        .copied()
                        .unwrap_or(0),
                    node_n.get(c.node_id.as_str()).copied().unwrap_or(0),
                    c.members,
                    std::cmp::Reverse(c.free_bytes),
                )
            })
            .map(|(i, _)| i);
        let Some(i) = best else {
            let mut nodes: Vec<&str> = cands.iter().map(|c| c.node_id.as_str()).collect();
            nodes.sort_unstable();
            nodes.dedup();
            let cap = per_node_cap.unwrap_or(width);
            let total = width + existing.len();
            return Err(PlacementError::TooFewNodes {
                width: total,
                cap,
                need: total.div_ceil(cap),
                nodes: nodes.len(),
                healthy: cands.len(),
            });
        };
        taken[i] = true;
        let c = &cands[i];
        *zone_n.entry(c.zone.as_str()).or_default() += 1;
        *rack_n
            .entry((c.zone.as_str(), c.rack.as_str()))
            .or_default() += 1;
        *node_n.entry(c.node_id.as_str()).or_default() += 1;
        chosen.push(i);
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(nodes: usize, disks: usize) -> Vec<Candidate> {
        let mut v = Vec::new();
        for n in 0..nodes {
            for d in 0..disks {
                v.push(Candidate {
                    disk_id: format!("d{n}-{d}"),
                    node_id: format!("n{n}"),
                    zone: String::new(),
                    rack: String::new(),
                    free_bytes: 1000 + d as u64,
                    members: 0,
                });
            }
        }
        v
    }

    fn per_node(cands: &[Candidate], chosen: &[usize]) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for &i in chosen {
            *m.entry(cands[i].node_id.clone()).or_default() += 1;
        }
        m
    }

    #[test]
    fn spreads_evenly_over_nodes() {
        let c = cell(4, 3);
        let p = place(&c, 9, Some(3)).unwrap();
        assert_eq!(p.len(), 9);
        let counts = per_node(&c, &p);
        assert_eq!(counts.len(), 4);
        assert!(counts.values().all(|&n| (2..=3).contains(&n)));
        let mut disks: Vec<_> = p.iter().map(|&i| &c[i].disk_id).collect();
        disks.sort();
        disks.dedup();
        assert_eq!(disks.len(), 9);
    }

    #[test]
    fn too_few_disks_names_the_numbers() {
        let c = cell(2, 2);
        let e = place(&c, 9, Some(3)).unwrap_err();
        assert_eq!(
            e,
            PlacementError::TooFewDisks {
                width: 9,
                healthy: 4
            }
        );
        assert!(e.to_string().contains("need 9"));
    }

    #[test]
    fn node_cap_is_enforced() {
        let c = cell(2, 6);
        let e = place(&c, 9, Some(3)).unwrap_err();
        assert!(matches!(
            e,
            PlacementError::TooFewNodes {
                need: 3,
                nodes: 2,
                ..
            }
        ));
        // Without the cap, one node may hold many members.
        assert_eq!(place(&c, 9, None).unwrap().len(), 9);
    }

    #[test]
    fn more_members_respect_the_existing_ones() {
        let c = cell(4, 3);
        let existing: Vec<Candidate> = vec![c[0].clone(), c[1].clone(), c[3].clone()];
        let rest: Vec<Candidate> = c
            .iter()
            .filter(|x| !existing.contains(x))
            .cloned()
            .collect();
        // Node n0 already holds 2 members: with a cap of 3 it takes at most 1 more.
        let p = place_more(&existing, &rest, 6, Some(3)).unwrap();
        let mut all = existing.clone();
        all.extend(p.iter().map(|&i| rest[i].clone()));
        let mut per = HashMap::new();
        for x in &all {
            *per.entry(x.node_id.clone()).or_insert(0) += 1;
        }
        assert!(per.values().all(|&n| n <= 3), "{per:?}");
    }

    #[test]
    fn spreads_volumes_over_disks() {
        let mut c = cell(6, 3);
        let first = place(&c, 9, Some(3)).unwrap();
        for &i in &first {
            c[i].members += 1;
        }
        let second = place(&c, 9, Some(3)).unwrap();
        assert!(
            first.iter().all(|i| !second.contains(i)),
            "{first:?} {second:?}"
        );
    }

    #[test]
    fn prefers_free_space_among_equals() {
        let mut c = cell(3, 2);
        c[1].free_bytes = 10_000;
        let p = place(&c, 3, Some(1)).unwrap();
        assert!(p.contains(&1));
    }
}
