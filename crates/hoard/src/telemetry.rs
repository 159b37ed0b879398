//! Logs and metrics for the process. Only the binary installs global subscribers and recorders.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Recent warnings and errors of this process, newest last, for the status page.
pub use hoard_admin::api::EventView as RecentEvent;

const RECENT: usize = 200;

fn recent() -> &'static Mutex<VecDeque<RecentEvent>> {
    static R: OnceLock<Mutex<VecDeque<RecentEvent>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(VecDeque::with_capacity(RECENT)))
}

/// The recent warnings and errors, newest first.
pub fn recent_events() -> Vec<RecentEvent> {
    let r = recent().lock().unwrap_or_else(|p| p.into_inner());
    r.iter().rev().cloned().collect()
}

struct Recorder;

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for Recorder {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut f = Fields(String::new());
        event.record(&mut f);
        let e = RecentEvent {
            unix_ms: hoard_types::now_ms(),
            level: level.to_string(),
            target: event.metadata().target().to_string(),
            message: f.0,
        };
        let mut r = recent().lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= RECENT {
            r.pop_front();
        }
        r.push_back(e);
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `default_level` for Hoard, warn for the rest), and
/// keeps the recent warnings and errors for the status page.
pub fn init_logs(format: &str, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,hoard={default_level},hoard_meta={default_level},hoard_volume={default_level},hoard_frontend={default_level},hoard_repair={default_level}"
        ))
    });
    let registry = tracing_subscriber::registry()
        .with(Recorder.with_filter(tracing_subscriber::filter::LevelFilter::WARN));
    if format == "json" {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .init();
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .init();
    }
}

/// Installs the Prometheus recorder and describes the build. `None` if one is installed already.
pub fn init_metrics() -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0, 300.0, 900.0, 3600.0,
        ])
        .ok()?
        .install_recorder()
        .ok()?;
    hoard_admin::catalogue::register_all();
    metrics::gauge!("hoard_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Some(handle)
}
