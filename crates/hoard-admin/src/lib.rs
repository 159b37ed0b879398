//! The admin HTTP surface every role serves: `/metrics` (Prometheus text), `/healthz`, `/readyz` and
//! `/status` (JSON). The roles say what "ready" and "status" mean through [`AdminSource`].

use std::future::Future;
use std::sync::Arc;

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
        .with_state(AppState { prometheus, source })
}

/// Serves the admin routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
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

async fn status(State(s): State<AppState>) -> Response {
    axum::Json(s.source.status().await).into_response()
}
