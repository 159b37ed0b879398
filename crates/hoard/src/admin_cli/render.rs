//! Tables and one-line summaries of the API's answers, as text (printed by the commands, checked by
//! the tests below).

use std::fmt::Write as _;
use std::time::Duration;

use hoard_admin::api::*;

use crate::config::human_bytes;

/// Rows as an aligned table under `headers`, one line each.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(s.join("  ").trim_end());
        out.push('\n');
    };
    line(&headers.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in rows {
        line(r);
    }
    out
}

/// `items` as a table, a row each.
pub fn table_of<T>(headers: &[&str], items: &[T], row: impl Fn(&T) -> Vec<String>) -> String {
    table(headers, &items.iter().map(row).collect::<Vec<_>>())
}

pub fn fill_bar(used: u64, cap: u64) -> String {
    if cap == 0 {
        return "-".into();
    }
    let pct = used as f64 * 100.0 / cap as f64;
    let n = ((pct / 10.0).round() as usize).min(10);
    format!("[{}{}] {pct:4.1}%", "#".repeat(n), ".".repeat(10 - n))
}

/// A bytes-per-second throttle as shown to operators; 0 is no throttle.
pub fn throttle_text(rate: u64) -> String {
    if rate == 0 {
        "none".to_string()
    } else {
        format!("{}/s", human_bytes(rate))
    }
}

/// `k=v k=v` of a count by state.
pub fn counts(m: &std::collections::BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn age(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

pub fn disks(disks: &[DiskView]) -> String {
    table_of(
        &[
            "DISK", "NODE", "STATE", "MEMBERS", "USED", "FILL", "TRASH", "PATH",
        ],
        disks,
        |d| {
            vec![
                d.id.clone(),
                d.node.clone(),
                d.state.clone(),
                d.members.to_string(),
                human_bytes(d.used_bytes),
                fill_bar(d.used_bytes, d.capacity_bytes),
                human_bytes(d.trash_bytes),
                d.path.clone(),
            ]
        },
    )
}

pub fn nodes(nodes: &[NodeView], now_ms: u64) -> String {
    table_of(
        &["NODE", "STATE", "ADDRESS", "HEARTBEAT", "LABELS"],
        nodes,
        |n| {
            vec![
                n.id.clone(),
                n.state.clone(),
                n.address.clone(),
                format!(
                    "{:.1}s ago",
                    now_ms.saturating_sub(n.last_heartbeat_unix_ms) as f64 / 1000.0
                ),
                n.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        },
    )
}

pub fn volumes(vols: &[VolumeView]) -> String {
    table_of(
        &[
            "VOLUME",
            "STATE",
            "RS",
            "MEMBERS OK",
            "BLOCKS",
            "LIVE",
            "DEAD",
            "NOTE",
        ],
        vols,
        |v| {
            let ok = v.members.iter().filter(|m| m.state == "ok").count();
            vec![
                v.id.to_string(),
                v.state.clone(),
                v.geometry.clone(),
                format!("{ok}/{}", v.members.len()),
                v.blocks.to_string(),
                human_bytes(v.bytes),
                human_bytes(v.dead_bytes),
                if v.violations.is_empty() {
                    v.seal_reason.clone()
                } else {
                    format!("PLACEMENT: {}", v.violations.join("; "))
                },
            ]
        },
    )
}

pub fn cell(s: &CellStatus, now_ms: u64) -> String {
    format!(
        "cell {}  blocks {}  bytes {}  volumes {}\n\n{}\n{}\n{}",
        s.cluster_id,
        s.blocks,
        human_bytes(s.bytes),
        counts(&s.volumes_by_state),
        nodes(&s.nodes, now_ms),
        disks(&s.disks),
        repair(&s.repair)
    )
}

pub fn repair(r: &RepairStatus) -> String {
    let mut out = format!(
        "repair: {}  throttle {}  concurrency {}  degraded {}  lost {}  rate {}/s  rebuilt {} ({} volumes)\n",
        if r.paused { "PAUSED" } else { "running" },
        throttle_text(r.bytes_per_sec),
        r.concurrency,
        r.degraded_volumes,
        r.lost_volumes,
        human_bytes(r.rate_bytes_per_sec as u64),
        human_bytes(r.bytes_rebuilt_total),
        r.volumes_repaired_total,
    );
    if !r.queue.is_empty() {
        out += &table_of(
            &["VOLUME", "LOST", "STATE", "PROGRESS", "ETA", "DEGRADED FOR"],
            &r.queue,
            |t| {
                vec![
                    t.volume.to_string(),
                    t.priority.to_string(),
                    t.state.clone(),
                    format!(
                        "{} / {}",
                        human_bytes(t.done_bytes),
                        human_bytes(t.total_bytes)
                    ),
                    t.eta_seconds
                        .map(|e| format!("{e:.0}s"))
                        .unwrap_or_else(|| "-".into()),
                    format!("{}s", t.degraded_for_seconds),
                ]
            },
        );
    }
    out
}

pub fn scrub(v: &ScrubView) -> String {
    let mut out = format!(
        "scrub: {}  throttle {} per disk  interval {}  corrupt ranges found {}\n",
        if v.paused { "PAUSED" } else { "on" },
        throttle_text(v.bytes_per_sec),
        age(v.interval_secs),
        v.bad_ranges,
    );
    out += &table_of(
        &[
            "DISK",
            "NODE",
            "STATE",
            "PROGRESS",
            "BAD",
            "IDX DAMAGE",
            "LAST PASS",
        ],
        &v.disks,
        |d| {
            vec![
                d.disk.clone(),
                d.node.clone(),
                d.state.clone(),
                if d.bytes_total > 0 {
                    format!(
                        "{} / {}",
                        human_bytes(d.bytes_done),
                        human_bytes(d.bytes_total)
                    )
                } else {
                    "-".into()
                },
                d.bad_ranges.to_string(),
                d.index_damage.to_string(),
                d.pass_age_seconds
                    .map(age)
                    .unwrap_or_else(|| "never".into()),
            ]
        },
    );
    out
}

/// Moves as a table: planned ones (no state yet) or recorded ones.
pub fn moves(planned: &[PlannedMoveView], recorded: &[MoveView]) -> String {
    let planned = planned.iter().map(|p| MoveView {
        id: 0,
        volume: p.volume,
        member: p.member,
        from_disk: p.from_disk.clone(),
        to_disk: p.to_disk.clone(),
        bytes: p.bytes,
        state: "planned".into(),
        reason: "rebalance".into(),
        done_bytes: 0,
        error: String::new(),
    });
    let all: Vec<MoveView> = planned.chain(recorded.iter().cloned()).collect();
    table_of(
        &["VOLUME", "MEMBER", "FROM", "TO", "BYTES", "STATE", "WHY"],
        &all,
        |m| {
            vec![
                m.volume.to_string(),
                m.member.to_string(),
                m.from_disk.clone(),
                m.to_disk.clone(),
                human_bytes(m.bytes),
                m.state.clone(),
                m.reason.clone(),
            ]
        },
    )
}

pub fn rebalance(v: &RebalanceView) -> String {
    format!(
        "rebalance: {}{}  moves {}  {} / {} copied\n{}",
        v.state,
        if v.paused { " (PAUSED)" } else { "" },
        counts(&v.moves_by_state),
        human_bytes(v.bytes_done),
        human_bytes(v.bytes_total),
        moves(&[], &v.moves)
    )
}

pub fn plan(p: &RebalancePlan) -> String {
    format!(
        "{} move(s), {} to copy, to bring every disk within {} points of the mean fill\n{}",
        p.moves.len(),
        human_bytes(p.bytes),
        p.tolerance_pct,
        moves(&p.moves, &[])
    )
}

pub fn workers(ws: &[WorkerView], now_ms: u64) -> String {
    table_of(
        &["WORKER", "STATE", "PROGRESS", "THROTTLE", "UP", "NOTE"],
        ws,
        |w| {
            let progress = match &w.progress {
                Some(p) if p.total > 0 => format!(
                    "{:.1}% ({} / {} {})",
                    p.done as f64 * 100.0 / p.total as f64,
                    p.done,
                    p.total,
                    p.unit
                ),
                Some(p) => format!("{} {}", p.done, p.unit),
                None => "-".into(),
            };
            let mut note = w.detail.clone();
            if let Some(e) = &w.last_error {
                let _ = write!(
                    note,
                    "{}last error ({} in a row): {e}",
                    if note.is_empty() { "" } else { "; " },
                    w.errors
                );
            }
            vec![
                w.name.clone(),
                if w.paused && w.phase != "paused" {
                    format!("{} (pausing)", w.phase)
                } else {
                    w.phase.clone()
                },
                progress,
                w.throttle_bytes_per_sec
                    .map(throttle_text)
                    .unwrap_or_else(|| "-".into()),
                age(now_ms.saturating_sub(w.started_unix_ms) / 1000),
                note,
            ]
        },
    )
}

pub fn compaction(c: &CompactionView) -> String {
    let state = if c.paused {
        "paused"
    } else if c.donor != 0 {
        "running"
    } else {
        "idle"
    };
    let mut out = format!(
        "compaction {state}: threshold {:.0}%, {} per second, {} at once\n",
        c.threshold * 100.0,
        if c.bytes_per_sec == 0 {
            "unthrottled".to_string()
        } else {
            human_bytes(c.bytes_per_sec)
        },
        c.concurrency
    );
    if c.donor != 0 {
        out += &format!(
            "emptying volume {}: {} of {} moved{}\n",
            c.donor,
            human_bytes(c.donor_moved_bytes),
            human_bytes(c.donor_total_bytes),
            c.eta_seconds
                .map(|s| format!(
                    ", eta {}",
                    humantime::format_duration(std::time::Duration::from_secs(s))
                ))
                .unwrap_or_default()
        );
    }
    out += &format!(
        "dead bytes in the cell {}; so far {} volumes compacted, {} blocks ({}) moved, {} dead blocks \
         ({}) reclaimed, {} stale copies\n",
        human_bytes(c.dead_bytes),
        c.volumes_compacted_total,
        c.moved_blocks_total,
        human_bytes(c.moved_bytes_total),
        c.dropped_blocks_total,
        human_bytes(c.reclaimed_bytes_total),
        c.stale_moves_total
    );
    if !c.candidates.is_empty() {
        out += &table_of(
            &["CANDIDATE", "LIVE", "IN GRACE", "RECLAIMABLE"],
            &c.candidates,
            |v| {
                vec![
                    v.volume.to_string(),
                    human_bytes(v.live_bytes),
                    human_bytes(v.grace_bytes),
                    human_bytes(v.expired_bytes),
                ]
            },
        );
    }
    out
}

pub fn trash(t: &TrashView) -> String {
    let mut out = if t.halted.is_empty() {
        String::from("trash unlinks: running\n")
    } else {
        format!(
            "trash unlinks: HALTED: {}\n  (find out why, then: hoard admin trash resume)\n",
            t.halted
        )
    };
    out += &format!(
        "{} entries ({}), {} cleared ({}); so far {} clearances, {} unlinks, {} unlinks without a \
         clearance, {} failed inspections, {} inspections\n",
        t.entries,
        human_bytes(t.bytes),
        t.cleared,
        human_bytes(t.cleared_bytes),
        t.clearances_total,
        t.unlinks_total,
        t.unlinks_without_clearance_total,
        t.violations_total,
        t.inspections_total
    );
    if !t.waiting.is_empty() {
        out += &table_of(
            &["NODE", "DISK", "ENTRY", "EXTENT", "BYTES", "WAITING FOR"],
            &t.waiting,
            |e| {
                vec![
                    e.node_id.clone(),
                    e.disk_id.clone(),
                    e.name.clone(),
                    if e.extent.is_empty() {
                        "?".into()
                    } else {
                        e.extent.clone()
                    },
                    human_bytes(e.bytes),
                    e.waiting.clone(),
                ]
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that line `n` of table `t` holds every part.
    fn row_has(t: &str, n: usize, parts: &[&str]) {
        let row = t.lines().nth(n).unwrap_or_default();
        for p in parts {
            assert!(row.contains(p), "{p:?} not in row {n} of\n{t}");
        }
    }

    fn disk(id: &str, used: u64, cap: u64) -> DiskView {
        DiskView {
            id: id.into(),
            node: "vol-1".into(),
            path: "/data/d".into(),
            state: "ok".into(),
            capacity_bytes: cap,
            used_bytes: used,
            free_bytes: cap - used,
            trash_bytes: 0,
            members: 4,
            slow: false,
            sync_ms: 0,
        }
    }

    #[test]
    fn tables_align_columns_to_the_widest_cell() {
        let t = table(
            &["A", "LONG HEADER"],
            &[
                vec!["wide value".into(), "x".into()],
                vec!["y".into(), "z".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "A           LONG HEADER");
        assert_eq!(lines[1], "wide value  x");
        assert_eq!(lines[2], "y           z");
    }

    #[test]
    fn disks_show_fill_as_a_bar_and_percentage() {
        let t = disks(&[disk("d-1", 25 << 20, 100 << 20), disk("d-2", 0, 0)]);
        assert!(t.contains("[###.......] 25.0%"), "{t}");
        // A disk that reported no capacity yet has no bar rather than a division by zero.
        let last = t.lines().last().unwrap();
        assert!(last.starts_with("d-2") && last.contains(" - "), "{t}");
    }

    #[test]
    fn volumes_count_ok_members_and_name_placement_violations() {
        let m = |i: u32, state: &str| MemberView {
            index: i,
            disk: format!("d{i}"),
            node: format!("n{i}"),
            generation: 1,
            state: state.into(),
        };
        let v = VolumeView {
            id: 7,
            state: "degraded".into(),
            geometry: "2+1".into(),
            blocks: 3,
            bytes: 4096,
            dead_blocks: 2,
            dead_bytes: 3 << 20,
            capacity: 1 << 30,
            lease_holder: String::new(),
            seal_reason: "full".into(),
            violations: vec!["members 0 and 1 share node n0".into()],
            members: vec![m(0, "ok"), m(1, "lost"), m(2, "ok")],
        };
        row_has(
            &volumes(&[v]),
            1,
            &["2/3", "3.0 MiB", "PLACEMENT: members 0 and 1 share node n0"],
        );
    }

    #[test]
    fn throttles_read_none_for_zero() {
        assert_eq!(throttle_text(0), "none");
        assert_eq!(throttle_text(50 << 20), "50.0 MiB/s");
    }

    #[test]
    fn workers_show_progress_throttle_and_errors() {
        let w = WorkerView {
            name: "scrub/d-1".into(),
            phase: "busy".into(),
            paused: true,
            progress: Some(ProgressView {
                done: 25,
                total: 100,
                unit: "bytes".into(),
            }),
            detail: String::new(),
            throttle_bytes_per_sec: Some(0),
            errors: 2,
            last_error: Some("disk read failed".into()),
            started_unix_ms: 1_000,
        };
        let t = workers(&[w], 61_000);
        assert!(t.lines().nth(1).unwrap().starts_with("scrub/d-1"), "{t}");
        row_has(
            &t,
            1,
            &[
                "busy (pausing)",
                "25.0% (25 / 100 bytes)",
                "none",
                "1m",
                "last error (2 in a row): disk read failed",
            ],
        );
    }

    #[test]
    fn repair_lists_the_queue_only_when_there_is_one() {
        let mut r = RepairStatus {
            paused: true,
            bytes_per_sec: 0,
            concurrency: 4,
            degraded_volumes: 1,
            lost_volumes: 0,
            bytes_rebuilt_total: 0,
            volumes_repaired_total: 0,
            ranges_repaired_total: 0,
            ranges: vec![],
            rate_bytes_per_sec: 0.0,
            queue: vec![],
        };
        assert_eq!(repair(&r).lines().count(), 1);
        assert!(repair(&r).starts_with("repair: PAUSED  throttle none"));
        r.queue.push(RepairTaskView {
            volume: 9,
            priority: 1,
            lost_members: vec![2],
            state: "running".into(),
            done_bytes: 1 << 20,
            total_bytes: 4 << 20,
            eta_seconds: Some(3.4),
            degraded_for_seconds: 12,
            targets: None,
        });
        let t = repair(&r);
        assert!(t.lines().nth(2).unwrap().starts_with("9 "), "{t}");
        row_has(&t, 2, &["1.0 MiB / 4.0 MiB", "3s", "12s"]);
    }
}
