//! Hoard's networking, under the clients and the roles: tuned gRPC endpoints and servers, lazily
//! connected clients of volume servers, pooled raw connections and whole-block reads over them
//! ([`pool`]), and the listener that shares a port between gRPC and the raw protocol and bounds what
//! connections may hold ([`listen`]). The wire itself (messages, the raw codec) is `hoard-proto`'s.

pub mod latency;
pub mod listen;
pub mod pool;

pub use latency::Latencies;
pub use pool::{BlockRead, Pool, Source};

use std::time::Duration;

use tonic::transport::{Endpoint, Server};

/// HTTP/2 frames of up to 1 MiB: a fragment crosses in a few frames rather than dozens of 16 KiB ones,
/// which saves wakeups and read calls on both ends.
const MAX_FRAME: u32 = 1 << 20;

/// A client endpoint tuned for moving megabytes: large HTTP/2 windows and frames, no Nagle.
pub fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .max_frame_size(MAX_FRAME)
        .http2_adaptive_window(false)
        .keep_alive_while_idle(true)
        .http2_keep_alive_interval(Duration::from_secs(20)))
}

/// Lazily connected clients of volume servers, one channel per address, shared by every caller.
#[derive(Default)]
pub struct VolumeClients {
    clients: std::sync::Mutex<
        std::collections::HashMap<
            String,
            hoard_proto::v1::volume_client::VolumeClient<tonic::transport::Channel>,
        >,
    >,
}

impl VolumeClients {
    pub fn get(
        &self,
        address: &str,
    ) -> Result<hoard_proto::v1::volume_client::VolumeClient<tonic::transport::Channel>, String>
    {
        if address.is_empty() {
            return Err("volume server address unknown".into());
        }
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(address) {
            return Ok(c.clone());
        }
        let ep = endpoint(&format!("http://{address}"))
            .map_err(|e| format!("bad volume server address {address:?}: {e}"))?;
        let c = hoard_proto::v1::volume_client::VolumeClient::new(ep.connect_lazy())
            .max_decoding_message_size(hoard_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(hoard_proto::MAX_MESSAGE_BYTES);
        clients.insert(address.to_string(), c.clone());
        Ok(c)
    }
}

/// How long any one gRPC request may take on a server before it is answered `CANCELLED`. The slowest
/// legitimate calls (a rebuild step, a volume creation, a backup) finish well inside it.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(120);

/// Concurrent streams one gRPC connection may open on a server; more wait on the client's side.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// A gRPC server builder tuned the same way, and bounded: a deadline on every request, a cap on
/// concurrent streams per connection, HTTP/2 keepalive that drops peers that stop answering pings, and
/// a cap on streams a peer may reset (the "rapid reset" pattern). Connections that never send the
/// HTTP/2 preface are dropped by the listener ([`listen`]) before they reach tonic.
pub fn server() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .max_frame_size(MAX_FRAME)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_max_local_error_reset_streams(Some(256))
        .http2_max_header_list_size(Some(64 << 10))
        .timeout(REQUEST_DEADLINE)
}
