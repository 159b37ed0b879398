//! Logs and metrics for the process. Only the binary installs global subscribers and recorders.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Logs to stderr, filtered by `RUST_LOG` (default: `default_level` for Hoard, warn for the rest).
pub fn init_logs(format: &str, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,hoard={default_level},hoard_meta={default_level},hoard_volume={default_level},hoard_frontend={default_level}"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Installs the Prometheus recorder and describes the build. `None` if one is installed already.
pub fn init_metrics() -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .ok()?
        .install_recorder()
        .ok()?;
    metrics::gauge!("hoard_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Some(handle)
}
