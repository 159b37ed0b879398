//! Placement: which disks take the members of a volume. Pure; no I/O.
//!
//! Members go to distinct disks, spread over as many zones, then racks, then nodes as exist. With a
//! domain cap `m`, no node holds more than `m` members of a volume, and neither does a rack or a zone
//! whenever the cell has enough racks (or zones) for that to be possible: losing any one failure domain
//! then loses at most `m` members, which the code survives. Among equally spread choices the disk with the
//! fewest members, then the most free space, wins.
//!
//! A greedy pass finds a placement in one sweep in almost every cell; when it cannot (uneven cells where
//! an early choice blocks a later one), a bounded depth-first search tries the alternatives.

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

/// The caps of a placement: at most this many members per node, rack and zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub node: Option<usize>,
    pub rack: Option<usize>,
    pub zone: Option<usize>,
}

type RackKey<'a> = (&'a str, &'a str);

/// The caps for a volume of `width` members over these disks: `m` per node always (when given), and per
/// rack and per zone where there are enough of them to honour it.
pub fn caps(disks: &[&Candidate], width: usize, m: Option<usize>) -> Caps {
    let Some(m) = m.filter(|m| *m > 0) else {
        return Caps {
            node: None,
            rack: None,
            zone: None,
        };
    };
    let need = width.div_ceil(m);
    let mut racks: Vec<RackKey> = disks
        .iter()
        .map(|c| (c.zone.as_str(), c.rack.as_str()))
        .collect();
    racks.sort_unstable();
    racks.dedup();
    let mut zones: Vec<&str> = disks.iter().map(|c| c.zone.as_str()).collect();
    zones.sort_unstable();
    zones.dedup();
    Caps {
        node: Some(m),
        rack: (racks.len() >= need).then_some(m),
        zone: (zones.len() >= need).then_some(m),
    }
}

#[derive(Default, Clone)]
struct Counts<'a> {
    zone: HashMap<&'a str, usize>,
    rack: HashMap<RackKey<'a>, usize>,
    node: HashMap<&'a str, usize>,
}

impl<'a> Counts<'a> {
    fn add(&mut self, c: &'a Candidate, d: isize) {
        let bump = |n: &mut usize| *n = (*n as isize + d) as usize;
        bump(self.zone.entry(c.zone.as_str()).or_default());
        bump(
            self.rack
                .entry((c.zone.as_str(), c.rack.as_str()))
                .or_default(),
        );
        bump(self.node.entry(c.node_id.as_str()).or_default());
    }

    fn fits(&self, c: &Candidate, caps: &Caps) -> bool {
        let under = |cap: Option<usize>, n: usize| cap.is_none_or(|cap| n < cap);
        under(
            caps.node,
            self.node.get(c.node_id.as_str()).copied().unwrap_or(0),
        ) && under(
            caps.rack,
            self.rack
                .get(&(c.zone.as_str(), c.rack.as_str()))
                .copied()
                .unwrap_or(0),
        ) && under(
            caps.zone,
            self.zone.get(c.zone.as_str()).copied().unwrap_or(0),
        )
    }

    fn key(&self, c: &Candidate) -> (usize, usize, usize, u32, std::cmp::Reverse<u64>) {
        (
            self.zone.get(c.zone.as_str()).copied().unwrap_or(0),
            self.rack
                .get(&(c.zone.as_str(), c.rack.as_str()))
                .copied()
                .unwrap_or(0),
            self.node.get(c.node_id.as_str()).copied().unwrap_or(0),
            c.members,
            std::cmp::Reverse(c.free_bytes),
        )
    }
}

/// Chooses `width` candidates. With `m`, no failure domain gets more than `m` members (see [`caps`]).
/// Returns indices into `cands`, in member order.
pub fn place(
    cands: &[Candidate],
    width: usize,
    m: Option<usize>,
) -> Result<Vec<usize>, PlacementError> {
    place_more(&[], cands, width, m)
}

/// Chooses `count` more candidates for a volume whose other members sit on `existing`, spreading the
/// whole volume by the same rules (new volumes, repair targets, moves).
pub fn place_more(
    existing: &[Candidate],
    cands: &[Candidate],
    count: usize,
    m: Option<usize>,
) -> Result<Vec<usize>, PlacementError> {
    if cands.len() < count {
        return Err(PlacementError::TooFewDisks {
            width: count,
            healthy: cands.len(),
        });
    }
    let width = count + existing.len();
    let all: Vec<&Candidate> = existing.iter().chain(cands).collect();
    let caps = caps(&all, width, m);
    let mut base = Counts::default();
    for c in existing {
        base.add(c, 1);
    }
    let too_few_nodes = || {
        let mut nodes: Vec<&str> = cands.iter().map(|c| c.node_id.as_str()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let cap = caps.node.unwrap_or(width);
        PlacementError::TooFewNodes {
            width,
            cap,
            need: width.div_ceil(cap),
            nodes: nodes.len(),
            healthy: cands.len(),
        }
    };
    // Greedy: the least-loaded zone, rack and node first.
    let mut counts = base.clone();
    let mut chosen: Vec<usize> = Vec::with_capacity(count);
    let mut taken = vec![false; cands.len()];
    while chosen.len() < count {
        let best = cands
            .iter()
            .enumerate()
            .filter(|(i, c)| !taken[*i] && counts.fits(c, &caps))
            .min_by_key(|(_, c)| counts.key(c))
            .map(|(i, _)| i);
        let Some(i) = best else { break };
        taken[i] = true;
        counts.add(&cands[i], 1);
        chosen.push(i);
    }
    if chosen.len() == count {
        return Ok(chosen);
    }
    // Depth-first search over the alternatives, best-first at each step, with a budget.
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by_key(|&i| (cands[i].members, std::cmp::Reverse(cands[i].free_bytes)));
    let mut budget = 200_000usize;
    let mut path = Vec::with_capacity(count);
    let mut counts = base;
    if search(
        cands,
        &order,
        0,
        count,
        &caps,
        &mut counts,
        &mut path,
        &mut budget,
    ) {
        return Ok(path);
    }
    Err(too_few_nodes())
}

#[allow(clippy::too_many_arguments)]
fn search<'a>(
    cands: &'a [Candidate],
    order: &[usize],
    from: usize,
    count: usize,
    caps: &Caps,
    counts: &mut Counts<'a>,
    path: &mut Vec<usize>,
    budget: &mut usize,
) -> bool {
    if path.len() == count {
        return true;
    }
    // Not enough candidates left to finish.
    if order.len() - from < count - path.len() {
        return false;
    }
    for pos in from..order.len() {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        let i = order[pos];
        let c = &cands[i];
        if !counts.fits(c, caps) {
            continue;
        }
        counts.add(c, 1);
        path.push(i);
        if search(cands, order, pos + 1, count, caps, counts, path, budget) {
            return true;
        }
        path.pop();
        counts.add(c, -1);
    }
    false
}

/// Where a volume's members break the rules: the domains holding more than `m` of them, for the levels
/// at which `all` (every disk of the cell) makes the cap possible.
pub fn violations(members: &[Candidate], all: &[Candidate], m: usize) -> Vec<String> {
    let refs: Vec<&Candidate> = all.iter().collect();
    let caps = caps(&refs, members.len(), Some(m));
    let mut counts = Counts::default();
    for c in members {
        counts.add(c, 1);
    }
    let mut out = Vec::new();
    let mut nodes: Vec<(&&str, &usize)> = counts.node.iter().collect();
    nodes.sort();
    for (n, k) in nodes {
        if caps.node.is_some_and(|cap| *k > cap) {
            out.push(format!("node {n} holds {k} members (more than m = {m})"));
        }
    }
    let mut racks: Vec<(&RackKey, &usize)> = counts.rack.iter().collect();
    racks.sort();
    for ((z, r), k) in racks {
        if caps.rack.is_some_and(|cap| *k > cap) {
            out.push(format!(
                "rack {z}/{r} holds {k} members (more than m = {m})"
            ));
        }
    }
    let mut zones: Vec<(&&str, &usize)> = counts.zone.iter().collect();
    zones.sort();
    for (z, k) in zones {
        if caps.zone.is_some_and(|cap| *k > cap) {
            out.push(format!("zone {z} holds {k} members (more than m = {m})"));
        }
    }
    let mut disks: Vec<&str> = members.iter().map(|c| c.disk_id.as_str()).collect();
    disks.sort_unstable();
    let before = disks.len();
    disks.dedup();
    if disks.len() < before {
        out.push("two members share a disk".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

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
        assert!(violations(&all, &c, 3).is_empty());
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

    #[test]
    fn racks_are_capped_when_there_are_enough() {
        // Three racks of two nodes of two disks: 6+3 fits with at most 3 per rack.
        let mut c = Vec::new();
        for r in 0..3 {
            for n in 0..2 {
                for d in 0..2 {
                    c.push(Candidate {
                        disk_id: format!("r{r}n{n}d{d}"),
                        node_id: format!("r{r}n{n}"),
                        zone: "z".into(),
                        rack: format!("r{r}"),
                        free_bytes: 100,
                        members: 0,
                    });
                }
            }
        }
        let p = place(&c, 9, Some(3)).unwrap();
        let members: Vec<Candidate> = p.iter().map(|&i| c[i].clone()).collect();
        assert!(
            violations(&members, &c, 3).is_empty(),
            "{:?}",
            violations(&members, &c, 3)
        );
        // Four members on one rack is a violation.
        let bad: Vec<Candidate> = c
            .iter()
            .filter(|x| x.rack == "r0")
            .cloned()
            .chain(c.iter().filter(|x| x.rack == "r1").take(5).cloned())
            .collect();
        assert!(
            violations(&bad, &c, 3)
                .iter()
                .any(|v| v.contains("rack z/r0 holds 4"))
        );
    }

    /// Every `width`-subset of the disks, checked against the caps: whether a valid placement exists.
    fn exists(cands: &[Candidate], width: usize, m: usize) -> bool {
        let refs: Vec<&Candidate> = cands.iter().collect();
        let caps = caps(&refs, width, Some(m));
        fn go<'a>(
            c: &'a [Candidate],
            from: usize,
            left: usize,
            caps: &Caps,
            counts: &mut Counts<'a>,
        ) -> bool {
            if left == 0 {
                return true;
            }
            for i in from..c.len() {
                if c.len() - i < left {
                    return false;
                }
                if counts.fits(&c[i], caps) {
                    let mut next = counts.clone();
                    next.add(&c[i], 1);
                    if go(c, i + 1, left - 1, caps, &mut next) {
                        return true;
                    }
                }
            }
            false
        }
        go(cands, 0, width, &caps, &mut Counts::default())
    }

    #[test]
    fn property_no_domain_exceeds_m_whenever_a_valid_placement_exists() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let mut checked = 0;
        for _ in 0..400 {
            let zones = rng.random_range(1..=3);
            let mut c = Vec::new();
            for z in 0..zones {
                for r in 0..rng.random_range(1..=3) {
                    for n in 0..rng.random_range(1..=2) {
                        for d in 0..rng.random_range(1..=3) {
                            c.push(Candidate {
                                disk_id: format!("z{z}r{r}n{n}d{d}"),
                                node_id: format!("z{z}r{r}n{n}"),
                                zone: format!("z{z}"),
                                rack: format!("r{r}"),
                                free_bytes: rng.random_range(1..1000),
                                members: rng.random_range(0..3),
                            });
                        }
                    }
                }
            }
            if c.len() > 16 {
                c.truncate(16);
            }
            let m = rng.random_range(1..=3);
            let width = (m + rng.random_range(1..=6)).min(c.len());
            if width <= m {
                continue;
            }
            let possible = exists(&c, width, m);
            match place(&c, width, Some(m)) {
                Ok(p) => {
                    let members: Vec<Candidate> = p.iter().map(|&i| c[i].clone()).collect();
                    let v = violations(&members, &c, m);
                    assert!(v.is_empty(), "placement breaks the rules: {v:?}");
                    checked += 1;
                }
                Err(e) => assert!(
                    !possible,
                    "a valid placement exists but none was found: {e}; width {width} m {m} {c:?}"
                ),
            }
        }
        assert!(checked > 100, "too few placeable shapes: {checked}");
    }
}
