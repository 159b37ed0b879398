//! The block state machine: what each change of the block index does to one row, as pure functions
//! over the row as it stands (tested below without an engine). The committer ([`crate::blocks`])
//! applies them in group-committed, synced batches.
//!
//! ```text
//! (absent) --put--> LIVE{asserted=now}
//! LIVE --dedup hit / FindMissing / Touch--> LIVE{asserted=now, when older than the refresh}
//! LIVE --Delete(token), asserted < token - window - refresh - jump--> DELETED{deleted=now, location kept}
//! DELETED --Undelete / put of the same bytes, within the grace--> LIVE{asserted=now}
//! DELETED, past its grace: absent to every reader; compaction drops the row
//! any --compaction, CAS on the old location--> same state, new location
//! ```

use std::time::Duration;

use hoard_types::BlockLocation;
use hoard_types::state::BlockState;

use crate::blocks::location_of;
use crate::rows::BlockRow;

/// The timers of the delete contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeletePolicy {
    /// How long a client has to commit a reference after it was told a block is present (L).
    pub reference_window: Duration,
    /// How stale a stored assertion may be before a presence answer rewrites it (Δ).
    pub assert_refresh: Duration,
    /// How long a deleted block's bytes stay, for `Undelete` and for re-puts at no cost (R).
    pub delete_grace: Duration,
}

impl Default for DeletePolicy {
    fn default() -> Self {
        DeletePolicy {
            reference_window: Duration::from_secs(24 * 3600),
            assert_refresh: Duration::from_secs(3600),
            delete_grace: Duration::from_secs(7 * 86_400),
        }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl DeletePolicy {
    /// Whether a deleted row is still within its grace at `now`.
    pub fn within_grace(&self, row: &BlockRow, now: u64) -> bool {
        row.state == BlockState::Deleted
            && now < row.deleted_unix_ms.saturating_add(ms(self.delete_grace))
    }

    /// Whether a row is past its grace: gone for every reader, and dropped by compaction.
    pub fn expired(&self, row: &BlockRow, now: u64) -> bool {
        row.state == BlockState::Deleted && !self.within_grace(row, now)
    }

    /// The newest assertion a delete with `token` may still remove: older than
    /// `token - (window + refresh) * (1 + slew) - jump`. Meta's clock runs at most [`crate::clock::SLEW`]
    /// faster than real time and jumps at most [`crate::clock::AHEAD_MS`] at a restart, so an
    /// assertion older than that on its clock is older than window + refresh in real time.
    pub fn delete_cutoff(&self, token: u64) -> u64 {
        let spans = ms(self.reference_window) + ms(self.assert_refresh);
        let slewed = spans.saturating_add((spans as f64 * crate::clock::SLEW) as u64);
        token.saturating_sub(slewed.saturating_add(crate::clock::AHEAD_MS))
    }
}

/// One change of one row of the block index.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A put's new location. Stands unless the hash is live in a usable volume already.
    Insert(BlockRow),
    /// A presence check that counts as an assertion: a dedup hit (`revive`: also bring back a deleted
    /// block within its grace), `FindMissing` and `Touch` (live ones only).
    Assert {
        revive: bool,
    },
    /// A delete with a token from meta's clock taken before the deleter read its references.
    Delete {
        token: u64,
    },
    Undelete,
    /// Compaction moved the bytes: re-point the row if it still points at `from` (volume, offset).
    Repoint {
        from: (u64, u64),
        to: BlockLocation,
    },
    /// Compaction drops a row past its grace that still points at `from`.
    Drop {
        from: (u64, u64),
    },
}

/// What an op did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Inserted,
    /// The hash was live already (or deleted within its grace, and is live again); this location
    /// stands and the caller's bytes are garbage.
    Exists(BlockLocation),
    /// Present (live, or revived): a presence answer.
    Present(BlockLocation),
    /// Not present: absent, deleted, past its grace, or in a volume that is lost.
    Missing,
    Deleted,
    /// Asserted too recently to delete under this token.
    Kept,
    AlreadyDeleted,
    NotFound,
    Restored,
    NotDeleted,
    Moved,
    /// The row changed since compaction read it; nothing happened.
    Stale,
    Dropped,
    /// A put into a volume that takes no new rows (being compacted, retired or lost).
    Refused,
}

/// The row after an op: unchanged, replaced, or removed.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Keep,
    Put(BlockRow),
    Remove,
}

/// What `op` does to `cur` at `now`. `usable(volume)` says whether a volume can serve reads (not lost,
/// not retired, known): a live row elsewhere is replaced by a put that brings the bytes again.
pub fn apply(
    op: &Op,
    cur: Option<&BlockRow>,
    now: u64,
    policy: &DeletePolicy,
    usable: impl Fn(u64) -> bool,
) -> (Change, Outcome) {
    let refresh = ms(policy.assert_refresh);
    let present = |r: &BlockRow| r.state == BlockState::Live && usable(r.volume);
    // A presence answer records its assertion when the stored one is older than the refresh.
    let asserted = |r: &BlockRow| {
        if now.saturating_sub(r.asserted_unix_ms) >= refresh {
            Change::Put(BlockRow {
                asserted_unix_ms: now.max(r.asserted_unix_ms),
                ..r.clone()
            })
        } else {
            Change::Keep
        }
    };
    match op {
        // "Exists" answers the put "deduplicated": a presence answer like any other.
        Op::Insert(new) => match cur {
            Some(r) if present(r) => (asserted(r), Outcome::Exists(location_of(r))),
            Some(r) if policy.within_grace(r, now) && usable(r.volume) => (
                Change::Put(revived(r, now)),
                Outcome::Exists(location_of(r)),
            ),
            _ => (Change::Put(new.clone()), Outcome::Inserted),
        },
        Op::Assert { revive } => match cur {
            Some(r) if present(r) => (asserted(r), Outcome::Present(location_of(r))),
            Some(r) if *revive && policy.within_grace(r, now) && usable(r.volume) => (
                Change::Put(revived(r, now)),
                Outcome::Present(location_of(r)),
            ),
            _ => (Change::Keep, Outcome::Missing),
        },
        Op::Delete { token } => match cur {
            None => (Change::Keep, Outcome::NotFound),
            Some(r) if r.state == BlockState::Deleted => (Change::Keep, Outcome::AlreadyDeleted),
            Some(r) if r.asserted_unix_ms >= policy.delete_cutoff(*token) => {
                (Change::Keep, Outcome::Kept)
            }
            Some(r) => (
                Change::Put(BlockRow {
                    state: BlockState::Deleted,
                    deleted_unix_ms: now,
                    ..r.clone()
                }),
                Outcome::Deleted,
            ),
        },
        Op::Undelete => match cur {
            Some(r) if r.state == BlockState::Live => (Change::Keep, Outcome::NotDeleted),
            Some(r) if policy.within_grace(r, now) => {
                (Change::Put(revived(r, now)), Outcome::Restored)
            }
            _ => (Change::Keep, Outcome::NotFound),
        },
        Op::Repoint { from, to } => match cur {
            Some(r) if (r.volume, r.offset) == *from && !policy.expired(r, now) => (
                Change::Put(BlockRow {
                    volume: to.volume,
                    offset: to.offset,
                    frag_len: to.frag_len as u32,
                    block_len: to.block_len as u32,
                    crcs: to.crcs.clone(),
                    ..r.clone()
                }),
                Outcome::Moved,
            ),
            _ => (Change::Keep, Outcome::Stale),
        },
        Op::Drop { from } => match cur {
            Some(r) if (r.volume, r.offset) == *from && policy.expired(r, now) => {
                (Change::Remove, Outcome::Dropped)
            }
            _ => (Change::Keep, Outcome::Stale),
        },
    }
}

fn revived(r: &BlockRow, now: u64) -> BlockRow {
    BlockRow {
        state: BlockState::Live,
        asserted_unix_ms: now.max(r.asserted_unix_ms),
        deleted_unix_ms: 0,
        ..r.clone()
    }
}

/// A row's share of its volume's counters: (live blocks, live bytes, dead blocks, dead bytes).
pub fn contribution(r: &BlockRow) -> (i64, i64, i64, i64) {
    let len = i64::from(r.block_len);
    match r.state {
        BlockState::Live => (1, len, 0, 0),
        BlockState::Deleted => (0, 0, 1, len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;

    fn policy() -> DeletePolicy {
        DeletePolicy {
            reference_window: Duration::from_secs(24 * 3600),
            assert_refresh: Duration::from_secs(3600),
            delete_grace: Duration::from_secs(7 * 24 * 3600),
        }
    }

    fn row(volume: u64, asserted: u64) -> BlockRow {
        BlockRow {
            volume,
            offset: 4096,
            frag_len: 64,
            block_len: 300,
            crcs: vec![1, 2, 3],
            created_unix_ms: asserted,
            state: BlockState::Live,
            asserted_unix_ms: asserted,
            deleted_unix_ms: 0,
        }
    }

    fn run(op: Op, cur: Option<&BlockRow>, now: u64) -> (Change, Outcome) {
        apply(&op, cur, now, &policy(), |v| v != 99)
    }

    fn put_of(c: Change) -> BlockRow {
        match c {
            Change::Put(r) => r,
            other => panic!("expected a new row, got {other:?}"),
        }
    }

    #[test]
    fn a_delete_is_refused_for_a_block_asserted_within_the_window_before_its_token() {
        let t = 100 * H;
        let cutoff =
            t - 25 * H - (25.0 * H as f64 * crate::clock::SLEW) as u64 - crate::clock::AHEAD_MS;
        // Asserted at the cutoff: kept. Just before: deleted.
        let r = row(1, cutoff);
        assert_eq!(
            run(Op::Delete { token: t }, Some(&r), t + 1).1,
            Outcome::Kept
        );
        let r = row(1, cutoff - 1);
        let (c, o) = run(Op::Delete { token: t }, Some(&r), t + 5);
        assert_eq!(o, Outcome::Deleted);
        let d = put_of(c);
        assert_eq!((d.state, d.deleted_unix_ms), (BlockState::Deleted, t + 5));
        assert_eq!(
            (d.volume, d.offset),
            (r.volume, r.offset),
            "a delete keeps the location"
        );
        // However late a delete arrives, it is judged by its token, not by the time it arrives.
        let fresh = row(1, t - H);
        assert_eq!(
            run(Op::Delete { token: t }, Some(&fresh), t + 1000 * H).1,
            Outcome::Kept
        );
        assert_eq!(run(Op::Delete { token: t }, None, t).1, Outcome::NotFound);
        assert_eq!(
            run(Op::Delete { token: t }, Some(&d), t).1,
            Outcome::AlreadyDeleted
        );
    }

    #[test]
    fn assertions_refresh_only_when_stale_and_revive_only_on_puts() {
        let r = row(1, 10 * H);
        // Fresh enough: present, nothing written.
        assert_eq!(
            run(Op::Assert { revive: false }, Some(&r), 10 * H + 10).0,
            Change::Keep
        );
        // Stale: present, and the assertion moves up.
        let (c, o) = run(Op::Assert { revive: false }, Some(&r), 12 * H);
        assert!(matches!(o, Outcome::Present(_)));
        assert_eq!(put_of(c).asserted_unix_ms, 12 * H);
        let dead = BlockRow {
            state: BlockState::Deleted,
            deleted_unix_ms: 20 * H,
            ..r.clone()
        };
        // FindMissing lists a deleted block; a put of its bytes revives it within the grace.
        assert_eq!(
            run(Op::Assert { revive: false }, Some(&dead), 21 * H).1,
            Outcome::Missing
        );
        let (c, o) = run(Op::Assert { revive: true }, Some(&dead), 21 * H);
        assert!(matches!(o, Outcome::Present(_)));
        let live = put_of(c);
        assert_eq!(
            (live.state, live.asserted_unix_ms, live.deleted_unix_ms),
            (BlockState::Live, 21 * H, 0)
        );
        // Past the grace, nothing revives it.
        let late = 20 * H + 7 * 24 * H;
        assert_eq!(
            run(Op::Assert { revive: true }, Some(&dead), late).1,
            Outcome::Missing
        );
        assert_eq!(run(Op::Undelete, Some(&dead), late).1, Outcome::NotFound);
        assert_eq!(
            run(Op::Undelete, Some(&dead), late - 1).1,
            Outcome::Restored
        );
        assert_eq!(run(Op::Undelete, Some(&r), late).1, Outcome::NotDeleted);
    }

    #[test]
    fn a_put_heals_a_block_whose_volume_is_lost_and_keeps_a_usable_one() {
        let new = row(7, 50 * H);
        let good = row(1, H);
        // The location stands; the answer ("deduplicated") is an assertion.
        let (c, o) = run(Op::Insert(new.clone()), Some(&good), 50 * H);
        assert_eq!(o, Outcome::Exists(location_of(&good)));
        let kept = put_of(c);
        assert_eq!((kept.volume, kept.asserted_unix_ms), (1, 50 * H));
        // Volume 99 is lost: the row is not present, and the new location replaces it.
        let lost = row(99, H);
        assert_eq!(
            run(Op::Assert { revive: true }, Some(&lost), 50 * H).1,
            Outcome::Missing
        );
        assert_eq!(
            run(Op::Insert(new.clone()), Some(&lost), 50 * H),
            (Change::Put(new.clone()), Outcome::Inserted)
        );
        // A deleted block within its grace comes back at its old location; the new bytes are garbage.
        let dead = BlockRow {
            state: BlockState::Deleted,
            deleted_unix_ms: 49 * H,
            ..good.clone()
        };
        let (c, o) = run(Op::Insert(new.clone()), Some(&dead), 50 * H);
        assert_eq!(o, Outcome::Exists(location_of(&good)));
        assert_eq!(put_of(c).state, BlockState::Live);
    }

    #[test]
    fn compaction_moves_and_drops_only_rows_that_still_point_at_the_donor() {
        let r = row(1, H);
        let to = BlockLocation {
            volume: 2,
            offset: 0,
            frag_len: 64,
            block_len: 300,
            crcs: vec![4, 5, 6],
        };
        let (c, o) = run(
            Op::Repoint {
                from: (1, 4096),
                to: to.clone(),
            },
            Some(&r),
            2 * H,
        );
        assert_eq!(o, Outcome::Moved);
        let moved = put_of(c);
        assert_eq!(
            (moved.volume, moved.offset, moved.crcs.clone()),
            (2, 0, vec![4, 5, 6])
        );
        assert_eq!(moved.asserted_unix_ms, r.asserted_unix_ms);
        // Re-put elsewhere meanwhile: the CAS fails.
        assert_eq!(
            run(
                Op::Repoint {
                    from: (1, 4096),
                    to: to.clone()
                },
                Some(&moved),
                2 * H
            )
            .1,
            Outcome::Stale
        );
        let dead = BlockRow {
            state: BlockState::Deleted,
            deleted_unix_ms: H,
            ..r.clone()
        };
        // Within its grace a deleted block moves with the live ones; past it, it is dropped.
        assert_eq!(
            run(
                Op::Repoint {
                    from: (1, 4096),
                    to: to.clone()
                },
                Some(&dead),
                2 * H
            )
            .1,
            Outcome::Moved
        );
        let late = H + 7 * 24 * H;
        assert_eq!(
            run(
                Op::Repoint {
                    from: (1, 4096),
                    to
                },
                Some(&dead),
                late
            )
            .1,
            Outcome::Stale
        );
        assert_eq!(
            run(Op::Drop { from: (1, 4096) }, Some(&dead), late),
            (Change::Remove, Outcome::Dropped)
        );
        assert_eq!(
            run(Op::Drop { from: (1, 4096) }, Some(&r), late).1,
            Outcome::Stale
        );
        assert_eq!(
            run(Op::Drop { from: (1, 4096) }, Some(&dead), 2 * H).1,
            Outcome::Stale
        );
    }
}
