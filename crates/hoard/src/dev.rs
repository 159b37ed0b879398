//! `hoard dev`: a whole cell in one process on loopback: meta, N volume servers with D disk directories
//! each, and a frontend on the client endpoint. Started again on the same `--data`, it serves every block
//! it acknowledged before.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use hoard_frontend::FrontendConfig;
use hoard_meta::MetaConfig;
use hoard_types::Geometry;

use crate::config::Size;
use crate::roles::{self, ProcessAdmin, Stop, VolumeRoleConfig};

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Where the cell keeps its metadata and disk directories.
    #[arg(long, default_value = "hoard-dev-data")]
    pub data: PathBuf,
    /// Client endpoint (the frontend's gRPC address).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Admin HTTP address (metrics, health, status).
    #[arg(long, default_value = "127.0.0.1:7780")]
    pub admin: SocketAddr,
    /// Volume servers.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Disk directories per volume server.
    #[arg(long, default_value_t = 3)]
    pub disks_per_node: usize,
    /// Reed-Solomon geometry of new volumes, K+M.
    #[arg(long, default_value = "6+3")]
    pub ec: Geometry,
    /// Data bytes per member of a volume.
    #[arg(long, default_value = "256MiB")]
    pub extent_size: Size,
    /// A volume server silent for longer is down.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub heartbeat_grace: Duration,
    /// Write-lease duration.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// How long a deleted block's bytes stay for Undelete and re-puts.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub delete_grace: Duration,
    /// How long after a client was told a block is present a delete keeps it, whatever its token.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub reference_window: Duration,
    /// A sealed volume whose reclaimable share of its bytes reaches this is compacted.
    #[arg(long, default_value_t = 0.3)]
    pub compaction_threshold: f64,
    /// How long retired extents stay in the volume servers' trash.
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
    pub trash_grace: Duration,
}

pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    if args.nodes == 0 || args.disks_per_node == 0 {
        return Err(anyhow!("--nodes and --disks-per-node must be at least 1"));
    }
    let width = args.ec.width() as usize;
    if args.nodes * args.disks_per_node < width {
        return Err(anyhow!(
            "--ec {} needs {} disks, but {} nodes x {} disks make {}",
            args.ec,
            width,
            args.nodes,
            args.disks_per_node,
            args.nodes * args.disks_per_node
        ));
    }
    if args.reference_window.is_zero() || args.delete_grace.is_zero() || args.trash_grace.is_zero()
    {
        return Err(anyhow!(
            "--reference-window, --delete-grace and --trash-grace must be above 0"
        ));
    }
    if !(args.compaction_threshold > 0.0 && args.compaction_threshold <= 1.0) {
        return Err(anyhow!(
            "--compaction-threshold must be above 0 and at most 1"
        ));
    }
    // With too few nodes to keep at most m members per node, fall back to distinct disks only.
    let node_domain = args.nodes * (args.ec.m.max(1) as usize) >= width;
    if !node_domain {
        tracing::warn!(
            "{} nodes cannot hold a {} volume with at most {} members per node; placing on distinct disks only",
            args.nodes,
            args.ec,
            args.ec.m
        );
    }
    let prometheus = crate::telemetry::init_metrics();
    let stop = Stop::new();
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("valid");
    let meta_cfg = MetaConfig {
        geometry: args.ec,
        extent_capacity: args.extent_size.0,
        lease: args.lease,
        heartbeat_grace: args.heartbeat_grace,
        node_failure_domain: node_domain,
        delete: hoard_meta::index_ops::DeletePolicy {
            reference_window: args.reference_window,
            // Assertions refresh at most a 24th of the window late.
            assert_refresh: (args.reference_window / 24).max(Duration::from_millis(1)),
            delete_grace: args.delete_grace,
        },
        compaction_threshold: args.compaction_threshold,
        // A short trash grace (tests) is met by prompt inspections.
        trash_inspect_every: (args.trash_grace / 2)
            .clamp(Duration::from_secs(1), Duration::from_secs(30)),
        ..MetaConfig::default()
    };
    let (meta_role, meta) =
        roles::start_meta(loopback, &args.data.join("meta"), meta_cfg, &stop).await?;
    let meta_url = format!("http://{}", meta_role.addr);
    let mut tasks = vec![meta_role];
    let mut admin = ProcessAdmin {
        meta: Some(meta),
        ..Default::default()
    };
    for n in 1..=args.nodes {
        let node_dir = args.data.join(format!("node-{n}"));
        let cfg = VolumeRoleConfig {
            node_id: format!("node-{n}"),
            listen: loopback,
            advertise: None,
            meta_url: meta_url.clone(),
            disks: (1..=args.disks_per_node)
                .map(|d| node_dir.join(format!("disk-{d}")))
                .collect(),
            disk_capacity: None,
            labels: [("host".to_string(), format!("node-{n}"))].into(),
            heartbeat: Duration::from_secs(2),
            trash_grace: args.trash_grace,
            slow_disk: hoard_volume::slow::SLOW_DEFAULT,
        };
        let (role, store) = roles::start_volume(cfg, &stop).await?;
        tracing::info!(node = n, addr = %role.addr, "volume server up");
        admin.volumes.push(store);
        tasks.push(role);
    }
    let (fe_role, fe) =
        roles::start_frontend(args.listen, &meta_url, FrontendConfig::default(), &stop).await?;
    let endpoint = format!("http://{}", fe_role.addr);
    tasks.push(fe_role);
    admin.frontend = Some(fe);
    tasks.push(roles::start_repair(&meta_url, &stop)?);
    let tokens = args.data.join("admin-tokens");
    let admin_token = dev_admin_token(&tokens)?;
    let admin_cfg = roles::AdminRoleConfig {
        listen: args.admin,
        tokens,
        backup_dir: Some(args.data.join("backups")),
    };
    let admin_role = roles::start_admin(admin_cfg, admin, prometheus, &stop).await?;
    let admin_url = format!("http://{}", admin_role.addr);
    let env_file = args.data.join("hoard.env");
    write_env_file(
        &env_file,
        &[
            ("HOARD_ENDPOINT", &endpoint),
            ("HOARD_ADMIN", &admin_url),
            ("HOARD_ADMIN_TOKEN", &admin_token),
        ],
    )?;
    // A closed stdout must not stop the cell: these lines are a courtesy.
    let _ = outln!(
        "hoard dev: cell of {} nodes x {} disks, RS {}, data in {}",
        args.nodes,
        args.disks_per_node,
        args.ec,
        args.data.display()
    );
    let _ = outln!("hoard dev: admin on {admin_url}");
    let _ = outln!("hoard dev: status page {admin_url}/#token={admin_token}");
    let _ = outln!("hoard dev: client endpoint {endpoint}");
    let _ = outln!(
        "hoard dev: `. {}` points the CLI at this cell",
        env_file.display()
    );
    tasks.push(admin_role);

    roles::shutdown_signal().await;
    let _ = outln!("hoard dev: stopping");
    stop.trigger();
    let clean = roles::join_all(tasks, "hoard dev").await;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A new operator token named `dev` for this run, in the token file at `path` (made 0600 if missing;
/// the previous run's `dev` line is replaced, lines an operator added are kept).
fn dev_admin_token(path: &std::path::Path) -> anyhow::Result<String> {
    use hoard_admin::auth::{Access, new_token, token_line};
    let old = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(anyhow!("cannot read {}: {e}", path.display())),
    };
    let token = new_token("hoardadm");
    let mut text = String::from(
        "# Admin tokens (ACCESS NAME HASH); `hoard dev` renews the `dev` line at start.\n",
    );
    for line in old.lines() {
        let mut f = line.split_whitespace();
        if line.starts_with('#') || line.trim().is_empty() || f.nth(1) == Some("dev") {
            continue;
        }
        text.push_str(line);
        text.push('\n');
    }
    text.push_str(&token_line(Access::Operator, "dev", &token));
    text.push('\n');
    write_private(path, &text)?;
    Ok(token)
}

/// Writes `text` whole to `path`, readable by its owner only (it holds credentials), renamed into place.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
}

/// Writes `DATA/hoard.env`: shell assignments of what a client or operator needs to reach the cell, so
/// that `. DATA/hoard.env` points every `hoard` command at it. Written whole and renamed into place.
fn write_env_file(path: &std::path::Path, vars: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut text = String::from(
        "# Written by `hoard dev` at start: `. hoard.env` points the hoard CLI at this cell.\n",
    );
    for (name, value) in vars {
        text.push_str(&format!("export {name}={}\n", shell_quote(value)));
    }
    write_private(path, &text)
}

/// `value` as one word for a POSIX shell.
fn shell_quote(value: &str) -> String {
    if !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/:._-+=@,".contains(&b))
    {
        return value.to_string();
    }
    format!("'{}'", value.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_values_survive_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hoard.env");
        let odd = "it's a $path with spaces";
        write_env_file(
            &path,
            &[("HOARD_ENDPOINT", "http://127.0.0.1:7700"), ("ODD", odd)],
        )
        .unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                ". '{}' && printf '%s\\n%s' \"$HOARD_ENDPOINT\" \"$ODD\"",
                path.display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("http://127.0.0.1:7700\n{odd}")
        );
    }
}
