//! The states and kinds of the cell's things, as enums. They travel as strings (on the wire and in
//! stored rows, unchanged from before, so old rows and old peers read the same) and are parsed where
//! rows and messages are decoded: logic matches on these, never on strings. Each parse error names the
//! value it could not read and what it may be.
//!
//! Stored states and derived ones are different types: a member is stored `ok` or `lost`
//! ([`MemberState`]); what a reader sees also depends on whether its node is heard from
//! ([`MemberHealth`], which adds `down`).

use std::fmt;
use std::str::FromStr;

/// A value that is not one of an enum's names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}: expected one of {expected}")]
pub struct StateError {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// Defines a fieldless enum whose variants travel as the given strings.
macro_rules! named_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal, { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name it travels as.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = StateError;

            fn from_str(s: &str) -> Result<Self, StateError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(StateError {
                        what: $what,
                        value: s.to_string(),
                        expected: concat!($("`", $text, "` "),+),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

named_enum!(
    /// A volume's life. The volume table is the repair queue: `degraded` and `lost` volumes are in it.
    VolumeState, "volume state", {
        /// Members being created; takes nothing yet.
        Creating => "creating",
        /// Takes appends from its lease holder.
        Open => "open",
        /// Read-only, whole.
        Sealed => "sealed",
        /// Read-only, at most `m` members lost: queued for repair.
        Degraded => "degraded",
        /// More than `m` members lost.
        Lost => "lost",
        /// Out of service for good; its extents go to the trash.
        Retired => "retired",
    }
);

impl VolumeState {
    /// Whether the volume's extents serve reads.
    pub fn in_service(self) -> bool {
        !matches!(self, VolumeState::Retired | VolumeState::Creating)
    }

    /// Whether the volume is being created or may take appends.
    pub fn writable(self) -> bool {
        matches!(self, VolumeState::Open | VolumeState::Creating)
    }
}

named_enum!(
    /// A member as meta stores it.
    MemberState, "member state", {
        Ok => "ok",
        /// Its disk failed or its node was silent past the grace period: it is rebuilt elsewhere.
        Lost => "lost",
    }
);

named_enum!(
    /// A member as readers see it: its stored state, and whether its node is heard from now.
    MemberHealth, "member health", {
        Ok => "ok",
        /// Stored ok, but its node is not heard from: read parity instead.
        Down => "down",
        Lost => "lost",
    }
);

impl MemberHealth {
    /// What a member stored in `state` is when its node is (or is not) heard from.
    pub fn of(state: MemberState, node_up: bool) -> MemberHealth {
        match (state, node_up) {
            (MemberState::Lost, _) => MemberHealth::Lost,
            (MemberState::Ok, true) => MemberHealth::Ok,
            (MemberState::Ok, false) => MemberHealth::Down,
        }
    }

    pub fn is_ok(self) -> bool {
        self == MemberHealth::Ok
    }
}

named_enum!(
    /// Whether a volume server is heard from.
    NodeHealth, "node state", {
        Up => "up",
        Down => "down",
    }
);

named_enum!(
    /// A member move's life.
    MoveState, "move state", {
        Pending => "pending",
        Running => "running",
        Done => "done",
        Failed => "failed",
        /// Cancelled before it started, or made moot (the volume changed under it).
        Dropped => "dropped",
    }
);

impl MoveState {
    /// Pending or running: the move still holds its member and its target.
    pub fn is_active(self) -> bool {
        matches!(self, MoveState::Pending | MoveState::Running)
    }
}

named_enum!(
    /// Why a member moves.
    MoveReason, "move reason", {
        Rebalance => "rebalance",
        Drain => "drain",
    }
);

named_enum!(
    /// The rebalance job.
    RebalanceState, "rebalance state", {
        Idle => "idle",
        Running => "running",
        Done => "done",
        Cancelled => "cancelled",
    }
);

named_enum!(
    /// What an operator asks of the rebalance job.
    RebalanceAction, "rebalance action", {
        Pause => "pause",
        Resume => "resume",
        Cancel => "cancel",
    }
);

named_enum!(
    /// What a drain or undrain names.
    DrainTarget, "drain target", {
        Disk => "disk",
        Node => "node",
    }
);

named_enum!(
    /// A problem a frontend reports with a volume.
    ProblemKind, "problem kind", {
        /// The volume has no room for the block: it is sealed, nothing is wrong.
        Full => "full",
        WriteFailed => "write_failed",
        /// The member's server did not answer in time (or refused the connection): every disk of its
        /// node is a placement suspect until the node heartbeats again.
        Unreachable => "unreachable",
        ReadFailed => "read_failed",
        /// A fragment failed its crc: queued for range repair, the member stays.
        Corrupt => "corrupt",
    }
);

named_enum!(
    /// A disk's scrub.
    ScrubPhase, "scrub state", {
        Idle => "idle",
        Running => "running",
        Paused => "paused",
    }
);

named_enum!(
    /// Where a volume stands in the repair queue, for operators.
    RepairState, "repair state", {
        Queued => "queued",
        Running => "running",
        /// More than `m` members lost: nothing can be rebuilt.
        Unrecoverable => "unrecoverable",
    }
);

named_enum!(
    /// A block index row's state.
    BlockState, "block state", {
        Live => "live",
        Deleted => "deleted",
    }
);

/// A disk's health as a volume server reports it: `ok`, or `failed: <why>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DiskHealth {
    Ok,
    Failed(String),
}

impl DiskHealth {
    pub fn is_ok(&self) -> bool {
        *self == DiskHealth::Ok
    }
}

impl FromStr for DiskHealth {
    type Err = StateError;

    fn from_str(s: &str) -> Result<Self, StateError> {
        match s {
            "ok" => Ok(DiskHealth::Ok),
            _ => match reason_after(s, "failed") {
                Some(why) => Ok(DiskHealth::Failed(why)),
                None => Err(StateError {
                    what: "disk state",
                    value: s.to_string(),
                    expected: "`ok` `failed: <why>`",
                }),
            },
        }
    }
}

impl fmt::Display for DiskHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskHealth::Ok => f.write_str("ok"),
            DiskHealth::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// How a range repair ended: `repaired`, `not_needed: <why>` (no live block there, the fragment checks
/// out), or `failed: <why>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeOutcome {
    Repaired,
    NotNeeded(String),
    Failed(String),
}

/// `rest` after a `name` and an optional `: <why>`, as the why.
fn reason_after(s: &str, name: &str) -> Option<String> {
    let rest = s.strip_prefix(name)?;
    if rest.is_empty() {
        return Some(String::new());
    }
    rest.strip_prefix(':').map(|why| why.trim().to_string())
}

fn with_reason(f: &mut fmt::Formatter<'_>, name: &str, why: &str) -> fmt::Result {
    if why.is_empty() {
        f.write_str(name)
    } else {
        write!(f, "{name}: {why}")
    }
}

impl FromStr for RangeOutcome {
    type Err = StateError;

    fn from_str(s: &str) -> Result<Self, StateError> {
        if s == "repaired" {
            return Ok(RangeOutcome::Repaired);
        }
        if let Some(why) = reason_after(s, "not_needed") {
            return Ok(RangeOutcome::NotNeeded(why));
        }
        if let Some(why) = reason_after(s, "failed") {
            return Ok(RangeOutcome::Failed(why));
        }
        Err(StateError {
            what: "range outcome",
            value: s.to_string(),
            expected: "`repaired` `not_needed: <why>` `failed: <why>`",
        })
    }
}

impl fmt::Display for RangeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RangeOutcome::Repaired => f.write_str("repaired"),
            RangeOutcome::NotNeeded(why) => with_reason(f, "not_needed", why),
            RangeOutcome::Failed(why) => with_reason(f, "failed", why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name round-trips, and these are the strings old rows and peers hold.
    fn round_trip<T: FromStr<Err = StateError> + fmt::Display + PartialEq + fmt::Debug + Copy>(
        all: &[T],
        names: &[&str],
    ) {
        assert_eq!(all.len(), names.len());
        for (v, n) in all.iter().zip(names) {
            assert_eq!(v.to_string(), *n);
            assert_eq!(n.parse::<T>().unwrap(), *v);
        }
        let e = "no such".parse::<T>().unwrap_err();
        assert!(e.to_string().contains("\"no such\""), "{e}");
        assert!(e.to_string().contains(names[0]), "{e}");
    }

    #[test]
    fn every_state_round_trips_through_the_strings_old_rows_hold() {
        round_trip(
            VolumeState::ALL,
            &["creating", "open", "sealed", "degraded", "lost", "retired"],
        );
        round_trip(MemberState::ALL, &["ok", "lost"]);
        round_trip(MemberHealth::ALL, &["ok", "down", "lost"]);
        round_trip(NodeHealth::ALL, &["up", "down"]);
        round_trip(
            MoveState::ALL,
            &["pending", "running", "done", "failed", "dropped"],
        );
        round_trip(MoveReason::ALL, &["rebalance", "drain"]);
        round_trip(
            RebalanceState::ALL,
            &["idle", "running", "done", "cancelled"],
        );
        round_trip(RebalanceAction::ALL, &["pause", "resume", "cancel"]);
        round_trip(DrainTarget::ALL, &["disk", "node"]);
        round_trip(
            ProblemKind::ALL,
            &[
                "full",
                "write_failed",
                "unreachable",
                "read_failed",
                "corrupt",
            ],
        );
        round_trip(ScrubPhase::ALL, &["idle", "running", "paused"]);
        round_trip(RepairState::ALL, &["queued", "running", "unrecoverable"]);
        round_trip(BlockState::ALL, &["live", "deleted"]);
    }

    #[test]
    fn states_with_reasons_keep_them() {
        assert_eq!("ok".parse::<DiskHealth>().unwrap(), DiskHealth::Ok);
        let f: DiskHealth = "failed: extent: read .dat: EIO".parse().unwrap();
        assert_eq!(f, DiskHealth::Failed("extent: read .dat: EIO".into()));
        assert_eq!(f.to_string(), "failed: extent: read .dat: EIO");
        assert!("broken".parse::<DiskHealth>().is_err());
        // The strings repair daemons send, with their reasons.
        for o in [
            "repaired",
            "not_needed",
            "not_needed: no live block there",
            "failed: no sources",
        ] {
            assert_eq!(o.parse::<RangeOutcome>().unwrap().to_string(), o);
        }
        assert!("maybe".parse::<RangeOutcome>().is_err());
        assert!("not_neededs".parse::<RangeOutcome>().is_err());
    }

    #[test]
    fn derived_member_health_separates_down_from_lost() {
        assert_eq!(MemberHealth::of(MemberState::Ok, true), MemberHealth::Ok);
        assert_eq!(MemberHealth::of(MemberState::Ok, false), MemberHealth::Down);
        assert_eq!(
            MemberHealth::of(MemberState::Lost, true),
            MemberHealth::Lost
        );
        assert!(MoveState::Running.is_active() && !MoveState::Done.is_active());
    }
}
