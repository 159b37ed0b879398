//! Starting and stopping the roles: meta, volume and frontend, each a gRPC server with health and
//! reflection, plus the admin HTTP surface of the process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use futures::future::BoxFuture;
use hoard_admin::AdminSource;
use hoard_frontend::{BlockStoreService, Frontend, FrontendConfig};
use hoard_meta::{MetaConfig, MetaService, MetaState, RocksEngine};
use hoard_proto::MAX_MESSAGE_BYTES;
use hoard_proto::v1::block_store_server::BlockStoreServer;
use hoard_proto::v1::meta_client::MetaClient;
use hoard_proto::v1::meta_server::MetaServer;
use hoard_proto::v1::volume_server::VolumeServer;
use hoard_volume::heartbeat::{self, HeartbeatConfig};
use hoard_volume::{VolumeService, VolumeStore, VolumeStoreConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Tells every role of the process to stop.
#[derive(Clone)]
pub struct Stop {
    tx: Arc<watch::Sender<bool>>,
}

impl Stop {
    pub fn new() -> Self {
        Stop {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Completes once `trigger` was called.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.subscribe();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    }
}

/// A running role.
pub struct Role {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub task: JoinHandle<anyhow::Result<()>>,
}

async fn bind(role: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow!("{role}: cannot listen on {addr}: {e}"))
}

/// Health (all serving) and reflection services for a role, in both reflection versions
/// (`grpc.reflection.v1`, and `v1alpha`, which many clients and tools still speak): the routes every
/// role serves beside its own.
async fn health_and_reflection()
-> anyhow::Result<(tonic_health::server::HealthReporter, tonic::service::Routes)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(hoard_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = builder()
        .build_v1()
        .context("building gRPC reflection v1")?;
    let reflection_v1alpha = builder()
        .build_v1alpha()
        .context("building gRPC reflection v1alpha")?;
    let routes = tonic::service::Routes::new(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok((reporter, routes))
}

/// Keeps a service's `grpc.health.v1` status in step with its readiness, checked every two seconds.
fn follow_readiness<S, F, Fut>(reporter: tonic_health::server::HealthReporter, stop: Stop, check: F)
where
    S: tonic::server::NamedService,
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let mut stopped = stop.subscribe();
    tokio::spawn(async move {
        loop {
            match check().await {
                Ok(()) => reporter.set_serving::<S>().await,
                Err(why) => {
                    tracing::debug!("not ready: {why}");
                    reporter.set_not_serving::<S>().await
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stopped.changed() => return,
            }
        }
    });
}

pub async fn start_meta(
    listen: SocketAddr,
    data_dir: &Path,
    cfg: MetaConfig,
    stop: &Stop,
) -> anyhow::Result<(Role, Arc<MetaState>)> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        anyhow!(
            "meta: cannot create data directory {}: {e}",
            data_dir.display()
        )
    })?;
    let engine = RocksEngine::open(data_dir).map_err(|e| anyhow!("meta: {e}"))?;
    let ops = Arc::new(hoard_meta::volume_ops::GrpcVolumeOps::default());
    let state = MetaState::open(Arc::new(engine), cfg, ops).map_err(|e| anyhow!("meta: {e}"))?;
    hoard_meta::state::spawn_monitor(&state, Duration::from_secs(1));
    let listener = bind("meta", listen).await?;
    let addr = listener.local_addr()?;
    let (reporter, common) = health_and_reflection().await?;
    reporter.set_serving::<MetaServer<MetaService>>().await;
    let svc = MetaServer::new(MetaService::new(Arc::clone(&state)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let shutdown = stop.wait();
    let st = Arc::clone(&state);
    let task = tokio::spawn(async move {
        hoard_net::server()
            .add_routes(common)
            .add_service(svc)
            .serve_with_incoming_shutdown(hoard_net::listen::grpc_only(listener), shutdown)
            .await
            .context("meta server")?;
        st.shutdown();
        Ok(())
    });
    Ok((
        Role {
            name: "meta",
            addr,
            task,
        },
        state,
    ))
}

pub struct VolumeRoleConfig {
    pub node_id: String,
    pub listen: SocketAddr,
    pub advertise: Option<SocketAddr>,
    pub meta_url: String,
    pub disks: Vec<PathBuf>,
    pub disk_capacity: Option<u64>,
    pub labels: HashMap<String, String>,
    pub heartbeat: Duration,
    /// How long superseded extents stay in trash.
    pub trash_grace: Duration,
    /// A disk whose synced writes take longer is slow ([`hoard_volume::slow`]).
    pub slow_disk: Duration,
}

pub async fn start_volume(
    cfg: VolumeRoleConfig,
    stop: &Stop,
) -> anyhow::Result<(Role, Arc<VolumeStore>)> {
    let store_cfg = VolumeStoreConfig {
        node_id: cfg.node_id.clone(),
        disks: cfg.disks.clone(),
        disk_capacity: cfg.disk_capacity,
    };
    let store = tokio::task::spawn_blocking(move || VolumeStore::open(&store_cfg))
        .await?
        .map_err(|e| anyhow!("volume {}: {e}", cfg.node_id))?;
    let store = Arc::new(store);
    let listener = bind("volume", cfg.listen).await?;
    let addr = listener.local_addr()?;
    let advertise = cfg.advertise.unwrap_or(addr);
    let ep = hoard_frontend::endpoint(&cfg.meta_url)
        .map_err(|e| anyhow!("volume: bad meta URL {:?}: {e}", cfg.meta_url))?
        .timeout(Duration::from_secs(10));
    let mut meta = MetaClient::new(ep.connect_lazy());
    hoard_volume::slow::spawn_probes(Arc::clone(&store), cfg.slow_disk, stop.subscribe());
    let scrubber = hoard_volume::scrub::Scrubber::new(Arc::clone(&store), meta.clone());
    scrubber.spawn(stop.subscribe());
    let hb = HeartbeatConfig {
        advertise: advertise.to_string(),
        labels: cfg.labels.clone(),
        interval: cfg.heartbeat,
        scrubber: Some(scrubber),
    };
    // Announce ourselves before serving, so that meta can place volumes here at once; a meta that is not
    // up yet hears from us at the next beat.
    if let Err(e) = heartbeat::beat(&mut meta, &store, &hb).await {
        tracing::warn!(node = %cfg.node_id, "meta not reachable yet: {}", e.message());
    }
    tokio::spawn(heartbeat::run(
        meta,
        Arc::clone(&store),
        hb,
        stop.subscribe(),
    ));
    {
        let sweep = hoard_volume::trash::TrashSweep {
            store: Arc::clone(&store),
            grace: cfg.trash_grace,
            unlinked: 0,
            last: Default::default(),
        };
        let handle = hoard_runtime::Registry::global()
            .spawn(sweep)
            .map_err(|e| anyhow!("volume: trash sweep: {e}"))?;
        let stopped = stop.wait();
        tokio::spawn(async move {
            stopped.await;
            handle.cancel();
        });
    }
    let (reporter, common) = health_and_reflection().await?;
    {
        let store = Arc::clone(&store);
        follow_readiness::<VolumeServer<VolumeService>, _, _>(reporter, stop.clone(), move || {
            let store = Arc::clone(&store);
            async move { store.ready() }
        });
    }
    let svc = VolumeServer::new(VolumeService::new(Arc::clone(&store)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let shutdown = stop.wait();
    let raw_store = Arc::clone(&store);
    let task = tokio::spawn(async move {
        hoard_net::server()
            .add_routes(common)
            .add_service(svc)
            .serve_with_incoming_shutdown(
                hoard_volume::raw::incoming(listener, raw_store),
                shutdown,
            )
            .await
            .context("volume server")?;
        Ok(())
    });
    Ok((
        Role {
            name: "volume",
            addr,
            task,
        },
        store,
    ))
}

pub async fn start_frontend(
    listen: SocketAddr,
    meta_url: &str,
    cfg: FrontendConfig,
    stop: &Stop,
) -> anyhow::Result<(Role, Arc<Frontend>)> {
    let fe = Frontend::new(cfg, meta_url).map_err(|e| anyhow!("frontend: {e}"))?;
    let listener = bind("frontend", listen).await?;
    let addr = listener.local_addr()?;
    let (reporter, common) = health_and_reflection().await?;
    {
        let fe = Arc::clone(&fe);
        follow_readiness::<BlockStoreServer<BlockStoreService>, _, _>(
            reporter,
            stop.clone(),
            move || {
                let fe = Arc::clone(&fe);
                async move { fe.ready().await.map_err(|e| e.to_string()) }
            },
        );
    }
    // A client's message carries at most one whole block: nothing larger is read off a connection.
    let svc = BlockStoreServer::new(BlockStoreService::new(Arc::clone(&fe)))
        .max_decoding_message_size(hoard_types::MAX_BLOCK_LEN as usize + (64 << 10))
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let shutdown = stop.wait();
    let f = Arc::clone(&fe);
    let (incoming, raw_puts) = hoard_frontend::raw::incoming(listener, Arc::clone(&fe));
    let task = tokio::spawn(async move {
        hoard_net::server()
            .add_routes(common)
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .context("frontend server")?;
        raw_puts.drain().await;
        // Hand our open volumes back, so that the next frontend can continue them at once.
        f.release_leases().await;
        Ok(())
    });
    Ok((
        Role {
            name: "frontend",
            addr,
            task,
        },
        fe,
    ))
}

/// Starts the repair daemon.
pub fn start_repair(meta_url: &str, stop: &Stop) -> anyhow::Result<Role> {
    let daemon = hoard_repair::RepairDaemon::new(hoard_repair::RepairConfig::default(), meta_url)
        .map_err(|e| anyhow!("repair: {e}"))?;
    // The compactor moves blocks with a frontend's read and write paths of its own (its own leases
    // on open volumes), beside the repair daemon.
    let fe = Frontend::new(
        FrontendConfig {
            holder: hoard_types::random_id("compactor"),
            // Few destinations, filled: the blocks of successive donors go into the same volumes.
            open_volumes: 2,
            ..FrontendConfig::default()
        },
        meta_url,
    )
    .map_err(|e| anyhow!("compactor: {e}"))?;
    let compactor = hoard_runtime::Registry::global()
        .spawn(hoard_frontend::compactor::Compactor::new(Arc::clone(&fe)))
        .map_err(|e| anyhow!("compactor: {e}"))?;
    let rx = stop.subscribe();
    let task = tokio::spawn(async move {
        daemon.run(rx).await;
        compactor.cancel();
        compactor.finished().await;
        fe.release_leases().await;
        Ok(())
    });
    Ok(Role {
        name: "repair",
        addr: "0.0.0.0:0".parse().expect("valid"),
        task,
    })
}

/// The admin surface of one process: whatever roles it runs.
#[derive(Default, Clone)]
pub struct ProcessAdmin {
    pub meta: Option<Arc<MetaState>>,
    pub frontend: Option<Arc<Frontend>>,
    pub volumes: Vec<Arc<VolumeStore>>,
}

impl AdminSource for ProcessAdmin {
    fn ready(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if let Some(fe) = &self.frontend {
                fe.ready().await.map_err(|e| format!("frontend: {e}"))?;
            }
            for v in &self.volumes {
                v.ready()
                    .map_err(|e| format!("volume {}: {e}", v.node_id))?;
            }
            Ok(())
        })
    }

    fn routes(&self) -> Vec<hoard_admin::openapi::Route> {
        let mut routes = hoard_admin::openapi::COMMON.to_vec();
        if self.meta.is_some() {
            routes.extend_from_slice(hoard_admin::openapi::META);
        }
        routes
    }

    fn status(&self) -> BoxFuture<'_, serde_json::Value> {
        Box::pin(async move {
            let mut out = serde_json::Map::new();
            out.insert("version".into(), env!("CARGO_PKG_VERSION").into());
            if let Some(meta) = &self.meta {
                out.insert(
                    "cell".into(),
                    serde_json::to_value(crate::views::cell(meta)).unwrap_or_default(),
                );
            }
            if !self.volumes.is_empty() {
                let v: Vec<serde_json::Value> = self
                    .volumes
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "node": s.node_id,
                            "disks": s.disk_reports().iter().map(|d| serde_json::json!({
                                "id": d.disk_id, "path": d.path, "state": d.health.to_string(),
                                "used_bytes": d.used_bytes, "capacity_bytes": d.capacity_bytes,
                                "free_bytes": d.free_bytes, "extents": d.extents,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                out.insert("volume_servers".into(), v.into());
            }
            if let Some(fe) = &self.frontend {
                out.insert(
                    "frontend".into(),
                    serde_json::json!({ "holder": fe.config().holder }),
                );
            }
            out.into()
        })
    }
}

/// How the admin HTTP surface is reached and what it may do.
pub struct AdminRoleConfig {
    pub listen: SocketAddr,
    /// The token file every request but the probes and `/metrics` is checked against.
    pub tokens: std::path::PathBuf,
    /// Where backups of the metadata tier go (the process running meta); none refuses backups.
    pub backup_dir: Option<std::path::PathBuf>,
}

/// Serves the admin HTTP surface until `stop`.
pub async fn start_admin(
    cfg: AdminRoleConfig,
    admin: ProcessAdmin,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    stop: &Stop,
) -> anyhow::Result<Role> {
    let tokens = hoard_admin::auth::AdminTokens::load(&cfg.tokens).map_err(|e| anyhow!(e))?;
    let listener = bind("admin", cfg.listen).await?;
    let addr = listener.local_addr()?;
    let meta = admin.meta.clone();
    let mut router = hoard_admin::router(prometheus, Arc::new(admin));
    if let Some(meta) = meta {
        router = router.merge(crate::admin_api::routes(meta, cfg.backup_dir));
    }
    let router = router.layer(hoard_admin::axum::middleware::from_fn_with_state(
        Arc::new(tokens),
        hoard_admin::auth::require,
    ));
    let shutdown = stop.wait();
    let task = tokio::spawn(async move {
        hoard_admin::serve(listener, router, shutdown)
            .await
            .context("admin server")
    });
    Ok(Role {
        name: "admin",
        addr,
        task,
    })
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Waits up to 10 s for each role to stop; reports those that failed. True when all stopped cleanly.
pub async fn join_all(tasks: Vec<Role>, who: &str) -> bool {
    let mut clean = true;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(10), t.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                eprintln!("{who}: {} stopped with an error: {e:#}", t.name);
                clean = false;
            }
            Ok(Err(e)) => {
                eprintln!("{who}: {} panicked: {e}", t.name);
                clean = false;
            }
            Err(_) => {
                eprintln!("{who}: {} did not stop within 10s", t.name);
                clean = false;
            }
        }
    }
    clean
}
