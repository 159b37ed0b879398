//! The frontend: the public `BlockStore` gRPC service. Stateless apart from its write leases: hashes,
//! dedups, encodes, fans fragments out to the members of an open volume, commits in meta, answers; and
//! reads back the data fragments covering a range, decoding from parity when members are down or corrupt.

pub mod compactor;
mod get;
mod put;
pub mod raw;
pub mod service;
mod watcher;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hoard_erasure::Codec;
use hoard_proto::v1::{meta_client::MetaClient, volume_client::VolumeClient};
use hoard_types::state::ProblemKind;
use hoard_types::{BlockHash, Geometry};
use parking_lot::Mutex;
use tonic::transport::Channel;

pub use service::BlockStoreService;

#[derive(Clone, Debug)]
pub struct FrontendConfig {
    /// This frontend's name as a lease holder; unique per process.
    pub holder: String,
    /// How many volumes to keep open for writes.
    pub open_volumes: usize,
    /// How long one fragment read may take before parity is read instead.
    pub fragment_timeout: Duration,
    /// How long one fragment append (or fence) may take at most before the put moves to another
    /// volume; within it, the deadline is learned from recent appends (`hoard_net::latency`).
    pub append_timeout: Duration,
    /// Volumes a put tries before giving up.
    pub put_attempts: usize,
    /// Append fragments by the raw protocol (`hoard_proto::raw`) rather than gRPC: the same checks and
    /// durability, two user-space copies of every fragment fewer.
    pub raw_appends: bool,
    /// Share of stored blocks the read-back watcher reads again (0 turns it off).
    pub watch_share: f64,
    /// When the watcher reads a block again, counted from the put and then from each check.
    pub watch_delays: Vec<Duration>,
    /// Blocks the watcher keeps track of at most (memory bound).
    pub watch_capacity: usize,
    /// Bytes of blocks that puts (raw and gRPC) may hold in memory at once while they arrive; a put
    /// waits for room before its block is read.
    pub put_memory: usize,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig {
            holder: hoard_types::random_id("frontend"),
            open_volumes: 4,
            fragment_timeout: Duration::from_secs(5),
            append_timeout: Duration::from_secs(30),
            put_attempts: 4,
            raw_appends: true,
            watch_share: 0.01,
            watch_delays: vec![
                Duration::from_secs(60),
                Duration::from_secs(3600),
                Duration::from_secs(86_400),
                Duration::from_secs(7 * 86_400),
            ],
            watch_capacity: 100_000,
            put_memory: 256 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("{0}")]
    Invalid(String),
    #[error("block {0} not found")]
    NotFound(BlockHash),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("block {hash}: data lost: {detail}")]
    DataLoss { hash: BlockHash, detail: String },
    #[error("internal error: {0}")]
    Internal(String),
    /// An error answered by meta, passed on with its code.
    #[error("metadata tier: {}", .0.message())]
    Meta(tonic::Status),
}

impl FrontendError {
    /// The one mapping from frontend errors to gRPC statuses.
    pub fn to_status(&self) -> tonic::Status {
        use tonic::{Code, Status};
        let msg = self.to_string();
        match self {
            FrontendError::Invalid(_) => Status::invalid_argument(msg),
            FrontendError::NotFound(_) => Status::not_found(msg),
            FrontendError::OutOfRange(_) => Status::out_of_range(msg),
            FrontendError::Unavailable(_) => Status::unavailable(msg),
            FrontendError::Exhausted(_) => Status::resource_exhausted(msg),
            FrontendError::DataLoss { .. } => Status::data_loss(msg),
            FrontendError::Internal(_) => Status::internal(msg),
            FrontendError::Meta(s) => match s.code() {
                // Meta's own transport failures mean the cell cannot answer now.
                Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
                    Status::unavailable(msg)
                }
                code => Status::new(code, msg),
            },
        }
    }
}

impl From<FrontendError> for tonic::Status {
    fn from(e: FrontendError) -> Self {
        e.to_status()
    }
}

pub use hoard_net::endpoint;

/// Volume-server clients, mapping a missing address to `UNAVAILABLE`.
#[derive(Default)]
pub struct VolumeClients(hoard_net::VolumeClients);

impl VolumeClients {
    pub fn get(&self, address: &str) -> Result<VolumeClient<Channel>, FrontendError> {
        self.0.get(address).map_err(FrontendError::Unavailable)
    }
}

/// The frontend's shared state.
pub struct Frontend {
    cfg: FrontendConfig,
    meta: MetaClient<Channel>,
    volumes: VolumeClients,
    /// Connections for raw reads of whole blocks' data fragments and for raw appends.
    raw: hoard_net::Pool,
    /// Recent whole-block reads, for when to hedge one.
    read_latencies: hoard_net::Latencies,
    /// Recent fragment appends, for how long the next may take.
    append_latencies: hoard_net::Latencies,
    codecs: Mutex<HashMap<Geometry, Arc<Codec>>>,
    writer: writer::Writer,
    watcher: watcher::Watcher,
    /// Room for blocks of puts on their way in, raw and gRPC alike.
    put_memory: hoard_net::listen::Budget,
}

impl Frontend {
    /// A frontend talking to meta at `meta_url` (e.g. `http://127.0.0.1:7701`). Connects lazily.
    pub fn new(cfg: FrontendConfig, meta_url: &str) -> Result<Arc<Frontend>, FrontendError> {
        let ep = endpoint(meta_url)
            .map_err(|e| FrontendError::Invalid(format!("bad meta address {meta_url:?}: {e}")))?
            .timeout(Duration::from_secs(30));
        let meta = MetaClient::new(ep.connect_lazy())
            .max_decoding_message_size(hoard_proto::MAX_MESSAGE_BYTES);
        let put_memory = cfg.put_memory;
        let fe = Arc::new(Frontend {
            writer: writer::Writer::new(&cfg),
            cfg,
            meta,
            volumes: VolumeClients::default(),
            raw: Default::default(),
            read_latencies: Default::default(),
            append_latencies: Default::default(),
            codecs: Mutex::new(HashMap::new()),
            watcher: Default::default(),
            put_memory: hoard_net::listen::Budget::new(
                put_memory,
                "hoard_frontend_raw_waits_total",
                "put_memory",
            ),
        });
        writer::spawn_lease_keeper(Arc::downgrade(&fe));
        watcher::spawn(Arc::downgrade(&fe), &fe.cfg.holder);
        Ok(fe)
    }

    pub fn config(&self) -> &FrontendConfig {
        &self.cfg
    }

    /// Room for a block of `bytes` on its way in, held until the permit is dropped.
    pub(crate) async fn put_room(&self, bytes: usize) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.put_memory.room(bytes).await
    }

    fn codec(&self, g: Geometry) -> Result<Arc<Codec>, FrontendError> {
        let mut codecs = self.codecs.lock();
        if let Some(c) = codecs.get(&g) {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(Codec::new(g).map_err(|e| FrontendError::Internal(e.to_string()))?);
        codecs.insert(g, Arc::clone(&c));
        Ok(c)
    }

    pub(crate) fn meta(&self) -> MetaClient<Channel> {
        self.meta.clone()
    }

    /// Whether a put could succeed now: meta answers, and a volume is open for writes (acquiring one
    /// if needed). Used by readiness checks.
    pub async fn ready(self: &Arc<Self>) -> Result<(), FrontendError> {
        let mut req = tonic::Request::new(hoard_proto::v1::LookupRequest::default());
        req.set_timeout(Duration::from_secs(2));
        self.meta().lookup(req).await.map_err(FrontendError::Meta)?;
        self.writer.ensure_one(self).await
    }

    /// Gives up every write lease, so that other frontends can take the volumes over at once.
    pub async fn release_leases(&self) {
        self.writer.release_all(self).await
    }

    async fn report(&self, volume: u64, member: Option<u32>, kind: ProblemKind, detail: String) {
        let req = hoard_proto::v1::ReportVolumeRequest {
            volume,
            member,
            kind: kind.to_string(),
            detail,
            ..Default::default()
        };
        if let Err(e) = self.meta().report_volume(req).await {
            tracing::warn!(
                volume,
                "could not report volume problem to meta: {}",
                e.message()
            );
        }
    }
}
