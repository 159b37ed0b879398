//! The repair lease: one repair daemon at a time plans, drives and commits rebuilds, moves and range
//! repairs, so that two daemons never run the same plan.
//!
//! Every call of a repair daemon that changes repair state (plan, commit, abort, range done, start,
//! commit and fail a move) names its holder, and meta takes it only from the lease's holder. A call
//! while the lease is free (or past its expiry) takes the lease for its caller; the holder's calls
//! renew it; anyone else's are refused with `FAILED_PRECONDITION` naming the holder, until the holder
//! has been silent for [`REPAIR_LEASE`]. The lease lives in memory: after meta restarts, the first
//! daemon to call holds it, and a daemon that finds it taken stands by (and stops the jobs it had).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long a holder's silence keeps the lease from others.
pub const REPAIR_LEASE: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("repair call without a holder: name the repair daemon holding the repair lease")]
    NoHolder,
    #[error(
        "the repair lease is held by {holder} (for {left_ms} ms more unless renewed); this daemon stands by"
    )]
    Held { holder: String, left_ms: u64 },
}

#[derive(Default)]
pub struct RepairLease {
    held: Mutex<Option<(String, Instant)>>,
}

/// What a lease request answers.
#[derive(Debug, PartialEq, Eq)]
pub struct Grant {
    pub lease_ms: u64,
}

impl RepairLease {
    /// Takes or renews the lease for `holder`, or says who holds it.
    pub fn take(&self, holder: &str) -> Result<Grant, LeaseError> {
        self.take_at(holder, Instant::now())
    }

    fn take_at(&self, holder: &str, now: Instant) -> Result<Grant, LeaseError> {
        if holder.is_empty() {
            return Err(LeaseError::NoHolder);
        }
        let mut held = self.held.lock();
        match &*held {
            Some((h, until)) if h != holder && *until > now => Err(LeaseError::Held {
                holder: h.clone(),
                left_ms: until.duration_since(now).as_millis() as u64,
            }),
            prev => {
                if prev.as_ref().is_none_or(|(h, _)| h != holder) {
                    tracing::info!(holder, "repair lease taken");
                    metrics::counter!("hoard_meta_repair_lease_changes_total").increment(1);
                }
                *held = Some((holder.to_string(), now + REPAIR_LEASE));
                Ok(Grant {
                    lease_ms: REPAIR_LEASE.as_millis() as u64,
                })
            }
        }
    }

    /// Gives the lease up, if `holder` has it (a daemon stopping cleanly).
    pub fn release(&self, holder: &str) {
        let mut held = self.held.lock();
        if held.as_ref().is_some_and(|(h, _)| h == holder) {
            tracing::info!(holder, "repair lease released");
            *held = None;
        }
    }

    /// The holder, while the lease runs.
    pub fn holder(&self) -> Option<String> {
        let held = self.held.lock();
        held.as_ref()
            .filter(|(_, until)| *until > Instant::now())
            .map(|(h, _)| h.clone())
    }
}

impl From<LeaseError> for tonic::Status {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::NoHolder => tonic::Status::invalid_argument(e.to_string()),
            LeaseError::Held { .. } => tonic::Status::failed_precondition(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_until_it_falls_silent_or_lets_go() {
        let l = RepairLease::default();
        let t0 = Instant::now();
        assert_eq!(l.take_at("", t0), Err(LeaseError::NoHolder));
        assert!(l.take_at("a", t0).is_ok(), "a free lease is taken");
        match l.take_at("b", t0 + Duration::from_secs(1)) {
            Err(LeaseError::Held { holder, left_ms }) => {
                assert_eq!(holder, "a");
                assert_eq!(left_ms, 9_000);
            }
            other => panic!("b took a's lease: {other:?}"),
        }
        // a renews; b is still refused past a's first expiry.
        assert!(l.take_at("a", t0 + Duration::from_secs(8)).is_ok());
        assert!(l.take_at("b", t0 + Duration::from_secs(12)).is_err());
        // a falls silent: b takes over once the renewed lease runs out, and a is refused.
        assert!(l.take_at("b", t0 + Duration::from_secs(18)).is_ok());
        assert!(matches!(
            l.take_at("a", t0 + Duration::from_secs(19)),
            Err(LeaseError::Held { holder, .. }) if holder == "b"
        ));
        // Only the holder can let go; then anyone may take it at once.
        l.release("a");
        assert!(l.take_at("a", t0 + Duration::from_secs(19)).is_err());
        l.release("b");
        assert!(l.take_at("a", t0 + Duration::from_secs(19)).is_ok());
    }
}
