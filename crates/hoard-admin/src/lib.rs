//! The admin HTTP surface every role serves: `/metrics` (Prometheus text), `/healthz`, `/readyz` and
//! `/status` (JSON). The roles say what "ready" and "status" mean through [`AdminSource`].

pub use axum;

pub mod catalogue;

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
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// A minimal HTTP/1.1 JSON client: one request per connection.
pub async fn http_json(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("admin address {base:?} must start with http://"))?;
    let host = rest.trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("cannot reach the admin API at {base}: {e}"))?;
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    let io = |e: std::io::Error| format!("admin API at {base}: {e}");
    stream.write_all(req.as_bytes()).await.map_err(io)?;
    let mut resp = Vec::new();
    stream.read_to_end(&mut resp).await.map_err(io)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP answer from {base}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed HTTP status from {base}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    if status == 404 {
        return Err(format!(
            "{base}{path}: not found (is this the admin address of the process running meta?)"
        ));
    }
    if status >= 400 {
        return Err(format!("{base}{path}: HTTP {status}: {}", body.trim()));
    }
    serde_json::from_str(&body).map_err(|e| format!("{base}{path}: answer is not JSON: {e}"))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
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
