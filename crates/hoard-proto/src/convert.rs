//! Conversions between wire messages and domain types. What arrives is validated here, once, on its way
//! into a domain type; what leaves is built here, so that no other code spells a wire message by hand.

use hoard_types::state::{MemberHealth, StateError};
use hoard_types::{BlockHash, BlockLocation, ExtentId, TypeError};

use crate::v1;

/// A wire message that does not make a domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

impl WireError {
    fn invalid(field: &'static str, e: impl std::fmt::Display) -> WireError {
        WireError::Invalid {
            field,
            problem: e.to_string(),
        }
    }
}

impl From<WireError> for tonic::Status {
    fn from(e: WireError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

impl From<ExtentId> for v1::ExtentRef {
    fn from(e: ExtentId) -> Self {
        v1::ExtentRef {
            volume: e.volume,
            member: e.member,
            generation: e.generation,
        }
    }
}

impl From<v1::ExtentRef> for ExtentId {
    fn from(r: v1::ExtentRef) -> Self {
        ExtentId {
            volume: r.volume,
            member: r.member,
            generation: r.generation,
        }
    }
}

/// The wire reference to an extent.
pub fn extent_ref(e: ExtentId) -> v1::ExtentRef {
    e.into()
}

/// The extent a request names.
pub fn extent_id(r: Option<&v1::ExtentRef>) -> Result<ExtentId, WireError> {
    r.copied()
        .map(ExtentId::from)
        .ok_or(WireError::Missing("extent"))
}

/// A member's health as a message states it.
pub fn member_health(s: &str) -> Result<MemberHealth, WireError> {
    s.parse()
        .map_err(|e: StateError| WireError::invalid("member state", e))
}

impl v1::BlockLocation {
    pub fn from_domain(hash: &BlockHash, loc: &BlockLocation, created_unix_ms: u64) -> Self {
        v1::BlockLocation {
            hash: bytes::Bytes::copy_from_slice(hash.as_bytes()),
            volume: loc.volume,
            offset: loc.offset,
            frag_len: loc.frag_len as u32,
            block_len: loc.block_len as u32,
            crcs: loc.crcs.clone(),
            created_unix_ms,
        }
    }

    pub fn to_domain(&self) -> Result<(BlockHash, BlockLocation), TypeError> {
        let hash = BlockHash::from_slice(&self.hash)?;
        Ok((
            hash,
            BlockLocation {
                volume: self.volume,
                offset: self.offset,
                frag_len: self.frag_len as u64,
                block_len: self.block_len as u64,
                crcs: self.crcs.clone(),
            },
        ))
    }
}
