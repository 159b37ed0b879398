//! The admin HTTP surface every role serves: `/metrics` (Prometheus text), `/healthz`, `/readyz` and
//! `/status` (JSON). The roles say what "ready" and "status" mean through [`AdminSource`].

pub use axum;

pub mod api;
pub mod auth;
pub mod catalogue;
mod client;
pub mod extract;
pub mod openapi;
mod workers;

pub use client::{AdminClient, CallError, http_json};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;

/// What a role tells the admin surface.
pub trait AdminSource: Send + Sync + 'static {
    /// `Ok` when the role can do its job now; otherwise why not.
    fn ready(&self) -> BoxFuture<'_, Result<(), String>>;
    /// A JSON description of the role's state.
    fn status(&self) -> BoxFuture<'_, serde_json::Value>;
    /// The API routes the process serves, for `/api/v1/openapi.json`: those of every role unless the
    /// role adds its own.
    fn routes(&self) -> Vec<openapi::Route> {
        openapi::COMMON.to_vec()
    }
}

#[derive(Clone)]
struct AppState {
    prometheus: Option<PrometheusHandle>,
    source: Arc<dyn AdminSource>,
}

/// The admin routes, for embedding or serving.
pub fn router(prometheus: Option<PrometheusHandle>, source: Arc<dyn AdminSource>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/api/v1/openapi.json", get(description))
        .route("/api/v1/workers", get(workers::list))
        .route(
            "/api/v1/workers/{action}",
            axum::routing::post(workers::control),
        )
        .with_state(AppState { prometheus, source })
}

/// Admin connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 256;
/// How long a request's head may take to arrive.
const HEADER_READ: Duration = Duration::from_secs(10);
/// How long a whole request (its body and the answer) may take.
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);
/// The largest request body the admin API reads.
const MAX_BODY: usize = 64 << 10;
/// The largest request head.
const MAX_HEAD: usize = 64 << 10;

/// Serves the admin routes on `listener` until `shutdown` completes. Bounded like the gRPC ports: at
/// most [`MAX_CONNECTIONS`] connections, a deadline for each request's head and for the whole request,
/// and caps on head and body sizes, so that slow or idle clients cannot hold the admin port.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router
        .layer(axum::middleware::from_fn(with_deadline))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("admin accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics::counter!("hoard_listener_refused_total", "why" => "admin_connections")
                .increment(1);
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(router.clone());
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ)
                .max_buf_size(MAX_HEAD)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(6), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// Answers 503 for a request that takes longer than [`REQUEST_DEADLINE`] (a body that does not come).
async fn with_deadline(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_DEADLINE, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the request took longer than {} s\n",
                REQUEST_DEADLINE.as_secs()
            ),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    match &s.prometheus {
        Some(p) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            p.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}

async fn readyz(State(s): State<AppState>) -> Response {
    match s.source.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn description(State(s): State<AppState>) -> Response {
    axum::Json(openapi::document(&s.source.routes())).into_response()
}

async fn status(State(s): State<AppState>) -> Response {
    axum::Json(s.source.status().await).into_response()
}
