//! Who may use a cell's ports, on real processes: the admin API of every role answers only the tokens
//! of its token file (viewers read, operators change), picks up added and revoked tokens without a
//! restart, keeps backups inside its backup directory, and a role refuses to listen beyond loopback
//! in the clear unless its config says `insecure = true`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hoard_admin::AdminClient;
use hoard_admin::auth::{Access, token_line};
use hoard_testkit::{Cluster, ClusterOpts, wait_for};
use serde_json::{Value, json};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hoard"))
}

/// The HTTP status of a GET or POST with `token`, and the error's message when refused.
async fn status_of(base: &str, token: Option<&str>, method: &str, path: &str) -> (u16, String) {
    let api = AdminClient::new(base).with_token(token.map(str::to_string));
    let r = if method == "GET" {
        api.get::<Value>(path).await
    } else {
        api.post::<Value, Value>(path, &json!({})).await
    };
    match r {
        Ok(_) => (200, String::new()),
        Err(e) => (e.status.unwrap_or(0), e.message),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_only_its_tokens_and_follows_the_token_file() {
    let cluster = Cluster::start(
        bin(),
        ClusterOpts {
            repair: false,
            ..Default::default()
        },
    )
    .unwrap();
    let meta = cluster.admin_url();
    let op = cluster.admin_token.clone();

    // No token, a made-up token: refused with 401 on every role's admin port, and the answer says why.
    let others = [
        format!(
            "http://{}",
            cluster.frontend.as_ref().unwrap().addr("admin")
        ),
        format!(
            "http://{}",
            cluster.volumes[0].as_ref().unwrap().addr("admin")
        ),
    ];
    for base in std::iter::once(&meta).chain(&others) {
        let (code, why) = status_of(base, None, "GET", "/status").await;
        assert_eq!(code, 401, "{base}/status without a token: {why}");
        assert!(why.contains("needs an admin token"), "{why}");
        let (code, why) = status_of(base, Some("hoardadm_0000"), "GET", "/api/v1/workers").await;
        assert_eq!(code, 401, "{base} with an unknown token: {why}");
        assert!(why.contains("not known"), "{why}");
        assert_eq!(status_of(base, Some(&op), "GET", "/status").await.0, 200);
        // Probes and metrics answer anyone.
        for open in ["/healthz", "/metrics"] {
            let (code, why) = status_of(base, None, "GET", open).await;
            assert!(code != 401, "{base}{open} needs a token: {why}");
        }
    }
    for path in [
        "/api/v1/status",
        "/api/v1/blocks/sample?pct=100",
        "/api/v1/volumes",
    ] {
        assert_eq!(status_of(&meta, None, "GET", path).await.0, 401, "{path}");
    }
    for path in ["/api/v1/drain", "/api/v1/repair/pause", "/api/v1/backup"] {
        assert_eq!(status_of(&meta, None, "POST", path).await.0, 401, "{path}");
    }

    // A viewer token added to the file works within seconds, no restart; it may read, not change.
    let viewer = hoard_admin::auth::new_token("hoardadm");
    let file = cluster.admin_tokens_file();
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&token_line(Access::Viewer, "grafana", &viewer));
    text.push('\n');
    std::fs::write(&file, &text).unwrap();
    wait_for("the viewer token admitted", Duration::from_secs(5), || {
        let meta = meta.clone();
        let viewer = viewer.clone();
        async move {
            (status_of(&meta, Some(&viewer), "GET", "/api/v1/status")
                .await
                .0
                == 200)
                .then_some(())
        }
    })
    .await
    .unwrap();
    let (code, why) = status_of(&meta, Some(&viewer), "POST", "/api/v1/repair/pause").await;
    assert_eq!(code, 403, "a viewer paused repair: {why}");
    assert!(
        why.contains("viewer token") && why.contains("grafana"),
        "{why}"
    );
    assert_eq!(
        status_of(&meta, Some(&op), "POST", "/api/v1/repair/pause")
            .await
            .0,
        200
    );
    assert_eq!(
        status_of(&meta, Some(&op), "POST", "/api/v1/repair/resume")
            .await
            .0,
        200
    );

    // Backups go into the configured directory, under a plain name, and nowhere else.
    let api = AdminClient::new(&meta).with_token(Some(op.clone()));
    let outside = cluster.path().join("elsewhere");
    for name in [outside.to_str().unwrap(), "../elsewhere", "a/b", ""] {
        let e = api
            .post::<_, Value>("/api/v1/backup", &json!({ "name": name }))
            .await
            .unwrap_err();
        assert_eq!(e.status, Some(400), "backup {name:?}: {e}");
        assert!(e.message.contains("not a plain name"), "{e}");
    }
    assert!(!outside.exists());
    let done: Value = api
        .post("/api/v1/backup", &json!({ "name": "first" }))
        .await
        .unwrap();
    let dir = cluster.path().join("backups").join("first");
    assert_eq!(done["dir"], dir.display().to_string(), "{done}");
    assert!(
        dir.join("CURRENT").exists(),
        "no RocksDB checkpoint in {}",
        dir.display()
    );

    // Revoked (its line deleted): refused within seconds, on every role, without a restart.
    std::fs::write(&file, token_line(Access::Viewer, "grafana", &viewer) + "\n").unwrap();
    for base in std::iter::once(&meta).chain(&others) {
        wait_for("the revoked token refused", Duration::from_secs(5), || {
            let base = base.clone();
            let op = op.clone();
            async move { (status_of(&base, Some(&op), "GET", "/status").await.0 == 401).then_some(()) }
        })
        .await
        .unwrap();
    }
    assert_eq!(
        status_of(&meta, Some(&viewer), "GET", "/api/v1/status")
            .await
            .0,
        200
    );

    // The CLI: a clear message and a non-zero exit without a token; `hoard admin-token` adds a working one.
    let out = Command::new(bin())
        .args(["admin", "--admin", &meta, "status"])
        .env_remove("HOARD_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs an admin token"), "{err}");
    let out = Command::new(bin())
        .args(["admin-token", "ops", "--access", "operator", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        made.starts_with("hoardadm_") && made.len() == 9 + 64,
        "{made}"
    );
    assert!(!std::fs::read_to_string(&file).unwrap().contains(&made));
    wait_for(
        "the new operator token admitted",
        Duration::from_secs(5),
        || {
            let meta = meta.clone();
            let made = made.clone();
            async move {
                let out = Command::new(bin())
                    .args(["admin", "--admin", &meta, "repair", "pause"])
                    .env("HOARD_ADMIN_TOKEN", &made)
                    .output()
                    .ok()?;
                out.status.success().then_some(())
            }
        },
    )
    .await
    .unwrap();
}

#[test]
fn a_role_refuses_to_listen_beyond_loopback_in_the_clear_unless_told_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("admin-tokens");
    std::fs::write(&tokens, "").unwrap();
    let config = |insecure: bool| {
        let path = dir.path().join(format!("meta-{insecure}.toml"));
        std::fs::write(
            &path,
            format!(
                "[node]\ninsecure = {insecure}\n[meta]\nlisten = \"0.0.0.0:0\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntokens = \"{}\"\n",
                dir.path().join("meta").display(),
                tokens.display()
            ),
        )
        .unwrap();
        path
    };
    let refused = config(false);
    let log = dir.path().join("refused.log");
    let mut child = Command::new(bin())
        .args(["server", "--config"])
        .arg(&refused)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("meta started on 0.0.0.0 in the clear without insecure = true");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(
        err.contains("meta.listen 0.0.0.0:0 is not a loopback address")
            && err.contains("insecure = true"),
        "{err}"
    );
    assert!(!dir.path().join("meta").exists(), "meta started anyway");
    let out = Command::new(bin())
        .args(["config", "check"])
        .arg(&refused)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(bin())
        .args(["config", "check"])
        .arg(config(true))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
