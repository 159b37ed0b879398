//! The operations surface: metrics behind the dashboard and the alerts, readiness that follows meta,
//! the status page in a real headless browser, and `hoard config check` on broken configs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hoard_testkit::{Cluster, ClusterOpts, Proc, block, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hoard"))
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p)
}

/// GET over plain HTTP/1.1: (status code, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    http_get_as(addr, path, None).await
}

/// GET with `token` as the bearer token.
async fn http_get_as(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Option<(u16, String)> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\r\n")
            .as_bytes(),
    )
    .await
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

fn start_dev(dir: &Path) -> Proc {
    Proc::start(
        bin(),
        "dev",
        &[
            "dev",
            "--data",
            dir.join("data").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--extent-size",
            "16MiB",
        ],
        &dir.join("dev.log"),
        &["admin", "endpoint"],
        &[],
    )
    .unwrap()
}

/// `hoard_...` names used in a dashboard or rules file, with histogram suffixes folded.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("hoard_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end] == b'_'
                || bytes[end].is_ascii_digit())
        {
            end += 1;
        }
        let mut name = &text[start..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(n) = name.strip_suffix(suffix) {
                name = n;
            }
        }
        // Skip words of prose such as "hoard_cell" in titles: only names with a subsystem part.
        if name.matches('_').count() >= 2 {
            out.insert(name.to_string());
        }
        i = end;
    }
    out
}

/// Metric names in Prometheus text, histograms under their base name.
fn exported_names(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            let mut n = n;
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(x) = n.strip_suffix(suffix) {
                    n = x;
                }
            }
            n.to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_the_alerts_is_exported() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(dir.path());
    let client = hoard_testkit::Client::connect(&format!("http://{}", dev.addr("endpoint")))
        .await
        .unwrap();
    let h = client.put(block(1, 100_000)).await.unwrap().hash;
    client.get(&h).await.unwrap();
    let admin = dev.addr("admin");
    let dashboard = std::fs::read_to_string(repo("deploy/grafana/hoard-cell.json")).unwrap();
    let rules = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).unwrap();
    let mut wanted = metric_names(&dashboard);
    assert!(
        wanted.len() >= 15,
        "dashboard names few metrics: {wanted:?}"
    );
    let from_rules = metric_names(&rules);
    assert!(from_rules.len() >= 8, "{from_rules:?}");
    wanted.extend(from_rules);
    // Some gauges appear only once meta has heard the volume servers and checked the volumes' health:
    // wait for the whole set, and name what is still missing if it never comes.
    let last = std::sync::Mutex::new(BTreeSet::new());
    let _ = wait_for("every wanted metric", Duration::from_secs(30), || async {
        let (_, m) = http_get(admin, "/metrics").await?;
        let names = exported_names(&m);
        let all = wanted.iter().all(|n| names.contains(n));
        *last.lock().unwrap() = names;
        all.then_some(())
    })
    .await;
    let exported = last.into_inner().unwrap();
    let missing: Vec<&String> = wanted.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "not in /metrics: {missing:?}\nexported: {exported:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_unready_without_meta_and_ready_again_after_restart() {
    let mut cluster = Cluster::start(bin(), ClusterOpts::default()).unwrap();
    let fe_admin = cluster.frontend.as_ref().unwrap().addr("admin");
    wait_for("frontend ready", Duration::from_secs(20), || async {
        let (code, _) = http_get(fe_admin, "/readyz").await?;
        (code == 200).then_some(())
    })
    .await
    .unwrap();
    let (code, _) = http_get(fe_admin, "/healthz").await.unwrap();
    assert_eq!(code, 200);
    cluster.kill_meta();
    let body = wait_for("frontend unready", Duration::from_secs(20), || async {
        let (code, body) = http_get(fe_admin, "/readyz").await?;
        (code == 503).then_some(body)
    })
    .await
    .unwrap();
    assert!(body.contains("not ready"), "{body}");
    // Alive all the same.
    assert_eq!(http_get(fe_admin, "/healthz").await.unwrap().0, 200);
    cluster.restart_meta_same_port().unwrap();
    wait_for("frontend ready again", Duration::from_secs(30), || async {
        let (code, _) = http_get(fe_admin, "/readyz").await?;
        (code == 200).then_some(())
    })
    .await
    .unwrap();
    let client = cluster.client().await.unwrap();
    client.put(block(9, 5000)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_cell_in_a_headless_browser() {
    let chromium = ["chromium", "chromium-browser"]
        .iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium is needed for this test (scripts/setup.sh --tests installs it)");
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(dir.path());
    let admin = dev.addr("admin");
    let token = dev.admin_token();
    let disks = wait_for("12 disks known", Duration::from_secs(20), || async {
        let (_, body) = http_get_as(admin, "/api/v1/disks", Some(&token)).await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v.as_array()?.len() == 12).then_some(v)
    })
    .await
    .unwrap();
    // The page takes its token from the address's fragment (never sent to the server, then dropped
    // from the address bar) and sends it as a header with each request.
    let url = format!("http://{admin}/#token={token}");
    let profile = dir.path().join("chromium-profile");
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=5000",
        "--window-size=1400,1200",
    ];
    let dom = Command::new(chromium)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", &url])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("data-loaded=\"yes\""),
        "the page did not load the API: {dom}"
    );
    for n in 1..=4 {
        assert!(
            dom.contains(&format!(">node-{n}<")),
            "node-{n} missing from the page"
        );
    }
    for d in disks.as_array().unwrap() {
        let id = d["id"].as_str().unwrap();
        assert!(dom.contains(id), "disk {id} missing from the page");
        assert!(
            dom.contains(&format!(">scrub/{id}<")),
            "the scrub worker of {id} is missing from the page"
        );
    }
    assert!(dom.contains(">repair<"), "the repair worker is missing");
    // Keep a screenshot as a test artefact.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let out = Command::new(chromium)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(out.status.success());
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "no screenshot at {}",
        shot.display()
    );
    println!("status page screenshot: {}", shot.display());
}

#[test]
fn config_check_names_every_broken_key_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            "[meta]\nlisten = \"127.0.0.1:7701\"\ndata_dir = \"/m\"\nextent_size = \"big\"\n",
            &["line 4", "big"],
        ),
        ("[meta]\nlisten = \"127.0.0.1:7701\"\n", &["data_dir"]),
        (
            "[volume]\nlisten = \"127.0.0.1:7702\"\nmeta = \"http://m:1\"\ndisks = [\"/d\"]\nhearbeat = \"5s\"\n",
            &["line 5", "hearbeat"],
        ),
        (
            "[frontend]\nlisten = \"127.0.0.1:7700\"\nmeta = \"10.0.0.1:7701\"\n",
            &["frontend.meta", "not a URL"],
        ),
        (
            "[metta]\nlisten = \"127.0.0.1:1\"\n",
            &["line 1", "unknown section [metta]"],
        ),
        ("[meta]\nlisten = 7701\n", &["line 2", "listen"]),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let out = Command::new(bin())
            .args(["config", "check", p.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} passed: {text}");
        for w in *want {
            assert!(err.contains(w), "case {i}: {w:?} not in {err}");
        }
    }
    // Several problems in one file: each reported with its own line.
    let p = dir.path().join("many.toml");
    std::fs::write(
        &p,
        "[meta]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/m\"\nlisen = 1\n[frontend]\nlisten = \"127.0.0.1:2\"\nmeta = \"http://m:1\"\nopen_volume = 2\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["config", "check", p.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 4: unknown key `lisen`")
            && err.contains("line 8: unknown key `open_volume`"),
        "{err}"
    );
    // Every example config is valid.
    for role in ["meta", "volume", "frontend", "repair"] {
        let ex = Command::new(bin())
            .args(["config", "example", role])
            .output()
            .unwrap();
        assert!(ex.status.success());
        let p = dir.path().join(format!("{role}.toml"));
        std::fs::write(&p, &ex.stdout).unwrap();
        let out = Command::new(bin())
            .args(["config", "check", p.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{role}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
