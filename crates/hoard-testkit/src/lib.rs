//! A multi-process cluster harness for tests: real `hoard` processes on 127.0.0.1 with port 0, each
//! role its own process, killed with SIGKILL and restarted on the same data.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use rand::{RngCore, SeedableRng};

pub use hoard_client::Client;

/// One running `hoard` process.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub addrs: Vec<(String, SocketAddr)>,
    pub log: PathBuf,
    /// What the process printed on stdout until it was listening.
    pub startup: Vec<String>,
}

impl Proc {
    /// Starts `bin args...`, waits for `expect` "<role> listening on ADDR" lines on stdout, and keeps
    /// draining stdout. stderr goes to `log`.
    pub fn start(
        bin: &Path,
        name: &str,
        args: &[&str],
        log: &Path,
        expect: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        let stderr = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("log {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut addrs = Vec::new();
        let mut startup = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while addrs.len() < expect.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some((role, addr)) = parse_listening(&line) {
                        addrs.push((role, addr));
                    }
                    startup.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    let tail = std::fs::read_to_string(log).unwrap_or_default();
                    bail!(
                        "{name} did not report listening ({status:?}); log:\n{}",
                        tail.lines()
                            .rev()
                            .take(30)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect::<Vec<_>>()
                            .join("\n")
                    );
                }
            }
        }
        // Keep draining so that the child never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Ok(Proc {
            name: name.to_string(),
            child,
            addrs,
            log: log.to_path_buf(),
            startup,
        })
    }

    /// The admin token `hoard dev` printed at start (its status page line, `.../#token=TOKEN`).
    pub fn admin_token(&self) -> String {
        self.startup
            .iter()
            .find_map(|l| l.split_once("#token=").map(|(_, t)| t.trim().to_string()))
            .unwrap_or_else(|| panic!("{} printed no admin token: {:?}", self.name, self.startup))
    }

    pub fn addr(&self, role: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("{} has no {role} address", self.name))
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGSTOP: the process keeps its sockets (connections are accepted) but answers nothing.
    pub fn stop(&self) {
        // SAFETY: a signal to our own child, which has not been reaped (we hold it).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
    }

    /// SIGCONT after [`Proc::stop`].
    pub fn cont(&self) {
        // SAFETY: as in `stop`.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        // SAFETY: sending a signal to our own child process by pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("{} did not exit within 30s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Parses "hoard ROLE listening on ADDR" and "hoard dev: client endpoint http://ADDR".
fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    if let Some(rest) = line.strip_prefix("hoard dev: client endpoint http://") {
        return Some(("endpoint".into(), rest.trim().parse().ok()?));
    }
    if let Some(rest) = line.strip_prefix("hoard dev: admin on http://") {
        return Some(("admin".into(), rest.trim().parse().ok()?));
    }
    if line.trim() == "hoard repair running" {
        return Some(("repair".into(), "0.0.0.0:0".parse().ok()?));
    }
    let rest = line.strip_prefix("hoard ")?;
    let (role, addr) = rest.split_once(" listening on ")?;
    Some((role.to_string(), addr.trim().parse().ok()?))
}

/// Starts `hoard dev` on loopback ports with its data in `data` and its log in `log`, extents of
/// `extent_size`; waits until it serves.
pub fn start_dev(bin: &Path, data: &Path, log: &Path, extent_size: &str) -> anyhow::Result<Proc> {
    Proc::start(
        bin,
        "dev",
        &[
            "dev",
            "--data",
            data.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--extent-size",
            extent_size,
        ],
        log,
        &["admin", "endpoint"],
        &[],
    )
}

/// The variables `hoard dev` wrote into `DATA/hoard.env` (endpoint, admin address, tokens).
pub fn dev_env(data: &Path) -> Vec<(String, String)> {
    let path = data.join("hoard.env");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .map(|v| v.replace("'\\''", "'"))
                .unwrap_or_else(|| v.to_string());
            (k.to_string(), v)
        })
        .collect()
}

/// One variable of [`dev_env`].
pub fn dev_var(data: &Path, name: &str) -> String {
    dev_env(data)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{name} is not in {}/hoard.env", data.display()))
}

/// Shape and settings of a test cell.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub volume_servers: usize,
    pub disks_per_server: usize,
    pub ec: String,
    pub extent_size: String,
    pub lease: String,
    pub heartbeat_grace: String,
    pub failure_domain: String,
    /// Volumes the frontend keeps open at once.
    pub open_volumes: usize,
    /// Run the repair daemon as its own process.
    pub repair: bool,
    /// Extra lines for the frontend's `[frontend]` section.
    pub frontend_extra: String,
    /// Extra lines for meta's `[meta]` section.
    pub meta_extra: String,
    /// Extra lines for each volume server's `[volume]` section.
    pub volume_extra: String,
    /// Capacity each disk reports (e.g. "256MiB"), instead of its filesystem's size.
    pub disk_capacity: Option<String>,
    /// Volume servers started with the cell (the others can be started later); all when `None`.
    pub start_volumes: Option<usize>,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            volume_servers: 4,
            disks_per_server: 3,
            ec: "6+3".into(),
            extent_size: "8MiB".into(),
            lease: "3s".into(),
            heartbeat_grace: "15m".into(),
            failure_domain: "node".into(),
            open_volumes: 4,
            repair: true,
            frontend_extra: String::new(),
            meta_extra: String::new(),
            volume_extra: String::new(),
            disk_capacity: None,
            start_volumes: None,
        }
    }
}

/// A cell of separate processes: one meta, one frontend, N volume servers.
pub struct Cluster {
    pub bin: PathBuf,
    pub opts: ClusterOpts,
    pub dir: tempfile::TempDir,
    pub meta: Option<Proc>,
    pub frontend: Option<Proc>,
    /// A second frontend, when a test starts one.
    pub second_frontend: Option<Proc>,
    /// A second repair daemon, when a test starts one (they share meta's repair lease).
    pub second_repair: Option<Proc>,
    pub volumes: Vec<Option<Proc>>,
    pub repair: Option<Proc>,
    /// An operator token of every process's admin API (`admin-tokens` in the cell's directory).
    pub admin_token: String,
    meta_url: String,
}

impl Cluster {
    pub fn start(bin: &Path, opts: ClusterOpts) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("hoard-test-").tempdir()?;
        let mut c = Cluster {
            bin: bin.to_path_buf(),
            volumes: (0..opts.volume_servers).map(|_| None).collect(),
            opts,
            dir,
            meta: None,
            frontend: None,
            second_frontend: None,
            second_repair: None,
            repair: None,
            admin_token: hoard_admin::auth::new_token("hoardadm"),
            meta_url: String::new(),
        };
        std::fs::write(
            c.admin_tokens_file(),
            hoard_admin::auth::token_line(
                hoard_admin::auth::Access::Operator,
                "testkit",
                &c.admin_token,
            ) + "\n",
        )?;
        c.start_meta()?;
        for i in 0..c.opts.start_volumes.unwrap_or(c.volumes.len()) {
            c.start_volume(i)?;
        }
        c.start_frontend()?;
        if c.opts.repair {
            c.start_repair()?;
        }
        Ok(c)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The token file every process's `[admin]` section names.
    pub fn admin_tokens_file(&self) -> PathBuf {
        self.path().join("admin-tokens")
    }

    /// An `[admin]` section on a loopback port of its own, with the cell's token file.
    fn admin_section(&self) -> String {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntokens = \"{}\"\n",
            self.admin_tokens_file().display()
        )
    }

    fn write_config(&self, name: &str, body: &str) -> anyhow::Result<PathBuf> {
        let p = self.path().join(format!("{name}.toml"));
        std::fs::write(&p, body)?;
        Ok(p)
    }

    fn spawn(&self, name: &str, config: &Path, roles: &[&str]) -> anyhow::Result<Proc> {
        let log = self.path().join(format!("{name}.log"));
        Proc::start(
            &self.bin,
            name,
            &["server", "--config", config.to_str().expect("utf-8 path")],
            &log,
            roles,
            &[("RUST_LOG", "info"), ("HOARD_FAULT_INJECTION", "1")],
        )
    }

    pub fn start_meta(&mut self) -> anyhow::Result<()> {
        self.start_meta_on("127.0.0.1:0")
    }

    /// Restarts meta (killed before) on the port it had, so that the other roles find it again.
    pub fn restart_meta_same_port(&mut self) -> anyhow::Result<()> {
        let addr = self.meta_url.trim_start_matches("http://").to_string();
        if let Some(mut p) = self.meta.take() {
            p.kill();
        }
        self.start_meta_on(&addr)
    }

    pub fn kill_meta(&mut self) {
        if let Some(mut p) = self.meta.take() {
            p.kill();
        }
    }

    fn start_meta_on(&mut self, listen: &str) -> anyhow::Result<()> {
        let o = &self.opts;
        let cfg = format!(
            "[meta]\nlisten = \"{listen}\"\ndata_dir = \"{}\"\nec = \"{}\"\nextent_size = \"{}\"\nlease = \"{}\"\nheartbeat_grace = \"{}\"\nfailure_domain = \"{}\"\n{}\n{}backup_dir = \"{}\"\n",
            self.path().join("meta").display(),
            o.ec,
            o.extent_size,
            o.lease,
            o.heartbeat_grace,
            o.failure_domain,
            o.meta_extra,
            self.admin_section(),
            self.path().join("backups").display()
        );
        let p = self.write_config("meta", &cfg)?;
        let proc = self.spawn("meta", &p, &["meta", "admin"])?;
        self.meta_url = format!("http://{}", proc.addr("meta"));
        self.meta = Some(proc);
        Ok(())
    }

    pub fn disk_dirs(&self, server: usize) -> Vec<PathBuf> {
        (0..self.opts.disks_per_server)
            .map(|d| {
                self.path()
                    .join(format!("vol-{server}"))
                    .join(format!("disk-{d}"))
            })
            .collect()
    }

    pub fn start_volume(&mut self, i: usize) -> anyhow::Result<()> {
        self.start_volume_on(i, "127.0.0.1:0")
    }

    /// Starts volume server `i` listening on `listen` (e.g. the port it had before it was killed).
    pub fn start_volume_on(&mut self, i: usize, listen: &str) -> anyhow::Result<()> {
        let disks: Vec<String> = self
            .disk_dirs(i)
            .iter()
            .map(|d| format!("\"{}\"", d.display()))
            .collect();
        let capacity = self
            .opts
            .disk_capacity
            .as_ref()
            .map(|c| format!("disk_capacity = \"{c}\"\n"))
            .unwrap_or_default();
        let cfg = format!(
            "[node]\nid = \"vol-{i}\"\n[volume]\nlisten = \"{listen}\"\nmeta = \"{}\"\ndisks = [{}]\nheartbeat = \"500ms\"\nlabels = {{ host = \"vol-{i}\" }}\n{capacity}{}\n{}",
            self.meta_url,
            disks.join(", "),
            self.opts.volume_extra,
            self.admin_section()
        );
        let p = self.write_config(&format!("vol-{i}"), &cfg)?;
        self.volumes[i] = Some(self.spawn(&format!("vol-{i}"), &p, &["volume", "admin"])?);
        Ok(())
    }

    fn spawn_frontend(&self, name: &str, listen: &str) -> anyhow::Result<Proc> {
        let cfg = format!(
            "[frontend]\nlisten = \"{listen}\"\nmeta = \"{}\"\nopen_volumes = {}\n{}\n{}",
            self.meta_url,
            self.opts.open_volumes,
            self.opts.frontend_extra,
            self.admin_section()
        );
        let p = self.write_config(name, &cfg)?;
        self.spawn(name, &p, &["frontend", "admin"])
    }

    pub fn start_frontend(&mut self) -> anyhow::Result<()> {
        self.frontend = Some(self.spawn_frontend("frontend", "127.0.0.1:0")?);
        Ok(())
    }

    /// Starts the first (`second == false`) or second frontend again on `listen`, the port it had,
    /// so that clients that know it find it again.
    pub fn restart_frontend_on(&mut self, second: bool, listen: &str) -> anyhow::Result<()> {
        self.kill_frontend_of(second);
        let name = if second { "frontend-2" } else { "frontend" };
        let p = self.spawn_frontend(name, listen)?;
        *self.frontend_slot(second) = Some(p);
        Ok(())
    }

    /// The first (`second == false`) or second frontend.
    pub fn frontend_slot(&mut self, second: bool) -> &mut Option<Proc> {
        if second {
            &mut self.second_frontend
        } else {
            &mut self.frontend
        }
    }

    /// SIGKILL the first or second frontend.
    pub fn kill_frontend_of(&mut self, second: bool) {
        if let Some(mut p) = self.frontend_slot(second).take() {
            p.kill();
        }
    }

    /// Starts a second frontend beside the first (both hold write leases of their own volumes).
    pub fn start_second_frontend(&mut self) -> anyhow::Result<()> {
        self.second_frontend = Some(self.spawn_frontend("frontend-2", "127.0.0.1:0")?);
        Ok(())
    }

    /// Every running frontend's endpoint, as one comma list.
    pub fn endpoints(&self) -> String {
        [&self.frontend, &self.second_frontend]
            .iter()
            .filter_map(|p| p.as_ref())
            .map(|p| format!("http://{}", p.addr("frontend")))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn start_repair(&mut self) -> anyhow::Result<()> {
        self.repair = Some(self.spawn_repair("repair")?);
        Ok(())
    }

    /// Starts a second repair daemon (`repair-2`, its log `repair-2.log`).
    pub fn start_second_repair(&mut self) -> anyhow::Result<()> {
        self.second_repair = Some(self.spawn_repair("repair-2")?);
        Ok(())
    }

    fn spawn_repair(&self, name: &str) -> anyhow::Result<Proc> {
        let cfg = format!("[repair]\nmeta = \"{}\"\n", self.meta_url);
        let p = self.write_config(name, &cfg)?;
        self.spawn(name, &p, &["repair"])
    }

    pub fn kill_repair(&mut self) {
        if let Some(mut p) = self.repair.take() {
            p.kill();
        }
    }

    /// Meta's gRPC URL.
    pub fn meta_url(&self) -> &str {
        &self.meta_url
    }

    /// The names of the cell's processes that have exited.
    pub fn dead(&mut self) -> Vec<String> {
        let mut dead = Vec::new();
        let all = self
            .meta
            .iter_mut()
            .chain(self.frontend.iter_mut())
            .chain(self.second_frontend.iter_mut())
            .chain(self.repair.iter_mut())
            .chain(self.second_repair.iter_mut())
            .chain(self.volumes.iter_mut().flatten());
        for p in all {
            if !p.alive() {
                dead.push(p.name.clone());
            }
        }
        dead
    }

    /// The admin HTTP API of the meta process.
    pub fn admin_url(&self) -> String {
        format!(
            "http://{}",
            self.meta.as_ref().expect("meta running").addr("admin")
        )
    }

    /// The Prometheus text of a process's admin surface.
    pub async fn metrics_of(&self, proc: &Proc) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = proc.addr("admin");
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// The value of an unlabelled counter (or gauge) of a process's metrics; 0 when it has none.
    pub async fn counter_of(&self, proc: &Proc, name: &str) -> u64 {
        value_in(&self.metrics_of(proc).await.unwrap_or_default(), name)
    }

    /// A counter of the volume servers' metrics (e.g. `hoard_volume_raw_read_bytes_total`), summed over
    /// the running ones.
    pub async fn volume_counter(&self, name: &str) -> u64 {
        let mut total = 0;
        for p in self.volumes.iter().flatten() {
            total += self.counter_of(p, name).await;
        }
        total
    }

    /// Counters of the volume servers' metrics, summed over the running ones, each server's from one
    /// scrape, once they have settled (two scrapes 100 ms apart agree, for at most 5 s). A server
    /// counts a read once its bytes are sent, so a client can hold the bytes a moment before the
    /// count moves: a test comparing counts after its reads waits for them to settle.
    pub async fn settled_volume_counters(&self, names: &[&str]) -> Vec<u64> {
        let mut last: Option<Vec<u64>> = None;
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let mut now = vec![0u64; names.len()];
            for p in self.volumes.iter().flatten() {
                let m = self.metrics_of(p).await.unwrap_or_default();
                for (total, name) in now.iter_mut().zip(names) {
                    *total += value_in(&m, name);
                }
            }
            if last.as_ref() == Some(&now) || Instant::now() > until {
                return now;
            }
            last = Some(now);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A counter of the running frontend's metrics (e.g. `hoard_frontend_raw_put_bytes_total`).
    pub async fn frontend_counter(&self, name: &str) -> u64 {
        self.counter_of(self.frontend.as_ref().expect("frontend running"), name)
            .await
    }

    /// Fragment bytes the volume servers sent by raw reads, summed over the running ones.
    pub async fn raw_read_bytes(&self) -> u64 {
        self.volume_counter("hoard_volume_raw_read_bytes_total")
            .await
    }

    /// GET a JSON document from the admin API.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        hoard_admin::http_json(
            &self.admin_url(),
            Some(&self.admin_token),
            "GET",
            path,
            None,
        )
        .await
        .map_err(|e| anyhow!(e))
    }

    /// POST to the admin API.
    pub async fn admin_post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        hoard_admin::http_json(
            &self.admin_url(),
            Some(&self.admin_token),
            "POST",
            path,
            Some(&body),
        )
        .await
        .map_err(|e| anyhow!(e))
    }

    pub fn endpoint(&self) -> String {
        format!(
            "http://{}",
            self.frontend
                .as_ref()
                .expect("frontend running")
                .addr("frontend")
        )
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        Client::connect(&self.endpoint())
            .await
            .map_err(|e| anyhow!("{e}"))
    }

    /// SIGKILL the frontend.
    pub fn kill_frontend(&mut self) {
        if let Some(mut p) = self.frontend.take() {
            p.kill();
        }
    }

    pub fn kill_volume(&mut self, i: usize) {
        if let Some(mut p) = self.volumes[i].take() {
            p.kill();
        }
    }

    /// SIGKILL every process of the cell at once.
    pub fn kill_all(&mut self) {
        let mut all: Vec<Proc> = Vec::new();
        all.extend(self.frontend.take());
        all.extend(self.second_frontend.take());
        all.extend(self.repair.take());
        all.extend(self.second_repair.take());
        all.extend(self.volumes.iter_mut().filter_map(Option::take));
        all.extend(self.meta.take());
        // Signal all first, so that none outlives the others by more than a moment.
        for p in &all {
            // SAFETY: signalling our own child processes by pid.
            unsafe {
                libc::kill(p.child.id() as i32, libc::SIGKILL);
            }
        }
        for mut p in all {
            p.kill();
        }
    }

    /// Starts every role again on the same data (new ports).
    pub fn restart_all(&mut self) -> anyhow::Result<()> {
        self.start_meta()?;
        for i in 0..self.volumes.len() {
            if self.volumes[i].is_none() {
                self.start_volume(i)?;
            }
        }
        self.start_frontend()?;
        if self.opts.repair {
            self.start_repair()?;
        }
        Ok(())
    }

    /// What every running volume server holds (disks and extents in service).
    pub async fn inventories(&self) -> anyhow::Result<Vec<hoard_proto::v1::InventoryResponse>> {
        let mut out = Vec::new();
        for p in self.volumes.iter().flatten() {
            let url = format!("http://{}", p.addr("volume"));
            let mut c = hoard_proto::v1::volume_client::VolumeClient::connect(url).await?;
            out.push(
                c.inventory(hoard_proto::v1::InventoryRequest {})
                    .await?
                    .into_inner(),
            );
        }
        Ok(out)
    }

    /// Bytes in all files under the cell's disk directories.
    pub fn disk_usage(&self) -> u64 {
        (0..self.volumes.len())
            .flat_map(|i| self.disk_dirs(i))
            .map(|d| dir_size(&d))
            .sum()
    }

    /// The tail of every process log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(self.path()) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    out.push_str(&format!("==== {} ====\n", p.display()));
                    for l in &lines[lines.len().saturating_sub(40)..] {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }
}

pub fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Deterministic pseudo-random bytes: the same seed gives the same block, so tests need not keep
/// blocks in memory to check them later.
pub fn block(seed: u64, len: usize) -> Bytes {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    Bytes::from(v)
}

/// Polls `f` until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        // Each attempt is bounded too, so that a stuck server fails the test instead of hanging it.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(200));
        if let Ok(Some(v)) = tokio::time::timeout(left, f()).await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of an unlabelled counter (or gauge) in Prometheus text; 0 when it is not there.
fn value_in(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
}
