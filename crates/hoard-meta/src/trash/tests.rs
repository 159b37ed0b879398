use hoard_types::{BlockHash, BlockLocation, Geometry};

use super::*;
use crate::nodes::HeartbeatAnswer;
use crate::state::MetaState;
use crate::testutil::cell;

fn location(volume: VolumeId, n: u64) -> BlockLocation {
    let g = Geometry::DEFAULT;
    BlockLocation {
        volume,
        offset: n * 4096,
        frag_len: g.frag_len(1000),
        block_len: 1000,
        crcs: vec![n as u32; g.width() as usize],
    }
}

fn entry(name: &str, extent: ExtentId) -> v1::TrashEntry {
    v1::TrashEntry {
        disk_id: "d0-0".into(),
        name: name.into(),
        extent: Some(extent.into()),
        trashed_unix_ms: 1,
        bytes: 4096,
    }
}

/// A heartbeat of node n0 (one healthy disk, d0-0) listing `trash` and the extents `serving`.
fn beat(state: &MetaState, trash: Vec<v1::TrashEntry>, serving: &[ExtentId]) -> HeartbeatAnswer {
    state
        .heartbeat_wire(&v1::HeartbeatRequest {
            node_id: "n0".into(),
            address: "127.0.0.1:9000".into(),
            interval_ms: 1000,
            disks: vec![v1::DiskInfo {
                disk_id: "d0-0".into(),
                path: "/d0".into(),
                capacity_bytes: 1 << 30,
                free_bytes: 1 << 30,
                state: "ok".into(),
                ..Default::default()
            }],
            extents: serving
                .iter()
                .map(|&x| v1::ExtentInfo {
                    extent: Some(x.into()),
                    disk_id: "d0-0".into(),
                    ..Default::default()
                })
                .collect(),
            trash,
            ..Default::default()
        })
        .unwrap()
}

fn retire(state: &MetaState, volume: VolumeId) {
    state
        .trash()
        .core
        .mutate(true, |t, b| {
            let v = t.volumes.get_mut(&volume).unwrap();
            v.state = VolumeState::Retired;
            schema::put_volume(b, volume, v);
        })
        .unwrap();
}

fn member0(state: &MetaState, volume: VolumeId) -> ExtentId {
    ExtentId {
        volume,
        member: 0,
        generation: state.trash().core.lock().volumes[&volume].members[0].generation,
    }
}

#[tokio::test]
async fn the_inspector_refuses_to_clear_an_extent_that_still_holds_a_live_row() {
    let (state, _) = cell(3, 3);
    let (held, _) = state.volumes().acquire("t", &[]).await.unwrap();
    let (empty, _) = state.volumes().acquire("t", &[held.id]).await.unwrap();
    state
        .blocks()
        .commit(BlockHash::of(b"still here"), location(held.id, 0))
        .await
        .unwrap();
    // Both retired (the held one wrongly, as a bug elsewhere would), both in a disk's trash.
    retire(&state, held.id);
    retire(&state, empty.id);
    let trash = vec![
        entry("held", member0(&state, held.id)),
        entry("empty", member0(&state, empty.id)),
    ];
    let a = beat(&state, trash.clone(), &[]);
    assert!(
        a.clearances.is_empty() && a.trash_halted.is_empty(),
        "{a:?}"
    );
    let i = state.trash().inspect().await.unwrap();
    assert_eq!((i.cleared, i.violations), (1, 1), "{i:?}");
    let a = beat(&state, trash.clone(), &[]);
    let cleared: Vec<&str> = a.clearances.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        cleared,
        ["empty"],
        "only the extent no row points into is cleared"
    );
    assert!(
        a.trash_halted.contains("held") && a.trash_halted.contains("row"),
        "a failed inspection halts unlinks, naming the entry: {a:?}"
    );
    // Another round neither clears it nor counts the same violation again.
    let i = state.trash().inspect().await.unwrap();
    assert_eq!((i.cleared, i.violations, i.waiting), (0, 0, 1), "{i:?}");
    let s = state.trash().status();
    assert_eq!((s.summary.violations, s.entries, s.cleared), (1, 2, 1));
    assert!(s.waiting[0].waiting.contains("still point into"), "{s:?}");
}

#[tokio::test]
async fn an_extent_that_vanishes_without_a_clearance_halts_unlinks_until_resumed() {
    let (state, _) = cell(3, 3);
    let (a_vol, _) = state.volumes().acquire("t", &[]).await.unwrap();
    retire(&state, a_vol.id);
    let x = member0(&state, a_vol.id);
    let b_id = ExtentId { member: 1, ..x };
    beat(&state, vec![entry("a", x)], &[]);
    state.trash().inspect().await.unwrap();
    // "a" is cleared; "b" appears after the inspection.
    let ans = beat(&state, vec![entry("a", x), entry("b", b_id)], &[]);
    assert_eq!(ans.clearances.len(), 1);
    // The server unlinks "a" (cleared) and something else removes "b" (not cleared).
    let ans = beat(&state, vec![], &[]);
    assert!(ans.trash_halted.contains("b"), "{ans:?}");
    let s = state.trash().status();
    assert_eq!(
        (
            s.summary.unlinks,
            s.summary.unlinks_without_clearance,
            s.entries
        ),
        (1, 1, 0)
    );
    // The halt is durable: a meta restarted on the same tables still halts.
    let ledger = Ledger::load(state.engine().as_ref()).unwrap();
    assert!(ledger.summary.halted.contains("b"), "{:?}", ledger.summary);
    let s = state.trash().resume().unwrap();
    assert!(s.summary.halted.is_empty());
    assert!(beat(&state, vec![], &[]).trash_halted.is_empty());
}

#[tokio::test]
async fn a_superseded_generation_is_cleared_once_its_successor_serves() {
    let (state, _) = cell(3, 3);
    let (v, _) = state.volumes().acquire("t", &[]).await.unwrap();
    // Member 0 was rebuilt: generation 5 replaced 4.
    state
        .trash()
        .core
        .mutate(true, |t, b| {
            let row = t.volumes.get_mut(&v.id).unwrap();
            row.members[0].generation = 5;
            schema::put_volume(b, v.id, row);
        })
        .unwrap();
    let current = member0(&state, v.id);
    let old = ExtentId {
        generation: 4,
        ..current
    };
    let lingering = entry("current", current);
    let superseded = entry("old", old);
    beat(&state, vec![superseded.clone(), lingering.clone()], &[]);
    let i = state.trash().inspect().await.unwrap();
    assert_eq!(i.cleared, 0, "nothing serves the current generation yet");
    let a = beat(
        &state,
        vec![superseded.clone(), lingering.clone()],
        &[current],
    );
    assert!(a.clearances.is_empty());
    let i = state.trash().inspect().await.unwrap();
    assert_eq!((i.cleared, i.waiting), (1, 1), "{i:?}");
    let a = beat(&state, vec![superseded, lingering], &[current]);
    let cleared: Vec<&str> = a.clearances.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        cleared,
        ["old"],
        "the generation meta lists as current is never cleared"
    );
    assert_eq!(i.rows_walked, 0, "no retired volume: no index walk");
}

#[test]
fn a_trash_name_that_is_not_one_directory_is_refused() {
    for name in ["", "../x", "a/b", "a\0b"] {
        let e = v1::TrashEntry {
            name: name.into(),
            ..Default::default()
        };
        assert!(ReportedTrash::parse(&e).is_err(), "{name:?}");
    }
}
