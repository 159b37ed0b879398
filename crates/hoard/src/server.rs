//! `hoard server --config FILE`: the roles a config file names, in one process.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use hoard_frontend::FrontendConfig;
use hoard_meta::MetaConfig;

use crate::config::{Config, FailureDomain};
use crate::roles::{self, ProcessAdmin, Stop, VolumeRoleConfig};

pub async fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(path).map_err(|e| anyhow!(e))?;
    let prometheus = crate::telemetry::init_metrics();
    let stop = Stop::new();
    let mut tasks = Vec::new();
    let mut admin = ProcessAdmin::default();
    // Meta first, so that volume servers and frontends of the same process find it.
    if let Some(m) = &cfg.meta {
        let mc = MetaConfig {
            geometry: m.ec,
            extent_capacity: m.extent_size.0,
            lease: m.lease,
            heartbeat_grace: m.heartbeat_grace,
            node_failure_domain: m.failure_domain == FailureDomain::Node,
            high_water: m.high_water,
            delete: hoard_meta::index_ops::DeletePolicy {
                reference_window: m.reference_window,
                assert_refresh: m.assert_refresh,
                delete_grace: m.delete_grace,
            },
            compaction_threshold: m.compaction_threshold,
            trash_inspect_every: m.trash_inspect_every,
        };
        let (role, state) = roles::start_meta(m.listen, &m.data_dir, mc, &stop).await?;
        let _ = outln!("hoard meta listening on {}", role.addr);
        admin.meta = Some(state);
        tasks.push(role);
    }
    if let Some(v) = &cfg.volume {
        let vc = VolumeRoleConfig {
            node_id: cfg.node.id.clone().unwrap_or_default(),
            listen: v.listen,
            advertise: v.advertise,
            meta_url: v.meta.clone(),
            disks: v.disks.clone(),
            disk_capacity: v.disk_capacity.map(|s| s.0),
            labels: v.labels.clone(),
            heartbeat: v.heartbeat.unwrap_or(Duration::from_secs(5)),
            trash_grace: v.trash_grace.unwrap_or(Duration::from_secs(86_400)),
            slow_disk: v.slow_disk.unwrap_or(hoard_volume::slow::SLOW_DEFAULT),
        };
        let (role, store) = roles::start_volume(vc, &stop).await?;
        let _ = outln!("hoard volume listening on {}", role.addr);
        admin.volumes.push(store);
        tasks.push(role);
    }
    if let Some(f) = &cfg.frontend {
        let fc = FrontendConfig {
            open_volumes: f.open_volumes,
            watch_share: f.watch_share,
            watch_delays: f.watch_delays.clone(),
            raw_appends: f.raw_appends,
            ..Default::default()
        };
        let (role, fe) = roles::start_frontend(f.listen, &f.meta, fc, &stop).await?;
        let _ = outln!("hoard frontend listening on {}", role.addr);
        admin.frontend = Some(fe);
        tasks.push(role);
    }
    if let Some(r) = &cfg.repair {
        let role = roles::start_repair(&r.meta, &stop)?;
        let _ = outln!("hoard repair running");
        tasks.push(role);
    }
    if let Some(a) = &cfg.admin {
        let cfg = roles::AdminRoleConfig {
            listen: a.listen,
            tokens: a.tokens.clone(),
            backup_dir: a.backup_dir.clone(),
        };
        let role = roles::start_admin(cfg, admin, prometheus, &stop).await?;
        let _ = outln!("hoard admin listening on {}", role.addr);
        tasks.push(role);
    }

    roles::shutdown_signal().await;
    stop.trigger();
    let clean = roles::join_all(tasks, "hoard").await;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
