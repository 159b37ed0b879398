//! The wire, and only the wire: generated gRPC code for Hoard's services, conversions between wire
//! messages and domain types ([`convert`]), and the codec of the raw protocol ([`raw`]). Connections,
//! pools and listeners are `hoard-net`'s.
//!
//! Wire values are validated once, here, on receive: the rest of the code works with `hoard_types`.

pub mod convert;
#[doc(hidden)]
pub mod fuzzing;
pub mod raw;

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("hoard.v1");
}

/// The encoded file descriptor set of every Hoard service, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hoard_descriptor");

/// Largest gRPC message any Hoard role sends or accepts: a whole block plus headroom.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

use hoard_types::{BlockHash, TypeError};

/// Parses a hex hash from a request into a [`BlockHash`], or a gRPC `INVALID_ARGUMENT` naming it.
#[allow(clippy::result_large_err)]
pub fn parse_hash(s: &str) -> Result<BlockHash, tonic::Status> {
    s.parse()
        .map_err(|e: TypeError| tonic::Status::invalid_argument(e.to_string()))
}
