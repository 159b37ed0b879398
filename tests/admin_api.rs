//! The operator API against a real `hoard dev`: its OpenAPI description validates and matches what
//! the server answers (checked by `tests/openapi_check.py` with openapi-spec-validator and
//! jsonschema), and `hoard admin workers` lists every background job and pauses, resumes and
//! throttles them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hoard_testkit::{Proc, block};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hoard"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn start_dev(dir: &Path) -> Proc {
    hoard_testkit::start_dev(bin(), &dir.join("data"), &dir.join("dev.log"), "32MiB")
        .expect("hoard dev starts")
}

fn admin(dev: &Proc, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("admin")
        .args(["--admin", &format!("http://{}", dev.addr("admin"))])
        .env("HOARD_ADMIN_TOKEN", dev.admin_token())
        .args(args)
        .output()
        .expect("run hoard admin")
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "hoard admin failed ({:?}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn workers(dev: &Proc) -> Vec<Value> {
    let v: Value = serde_json::from_str(&stdout_of(&admin(dev, &["--json", "workers"]))).unwrap();
    v.as_array().unwrap().clone()
}

/// Polls the worker list until `ok` holds for it.
fn wait_workers(dev: &Proc, what: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ws = workers(dev);
        if ok(&ws) {
            return ws;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {ws:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn named<'a>(ws: &'a [Value], name: &str) -> &'a Value {
    ws.iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no worker {name} in {ws:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_matches_its_openapi_description() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(dir.path());
    // Some blocks, so that volumes, samples and the verification have something to show.
    let client = hoard_client::Client::connect(&format!("http://{}", dev.addr("endpoint")))
        .await
        .unwrap();
    for i in 0..4 {
        client.put(block(i, 300_000)).await.unwrap();
    }
    wait_workers(&dev, "the repair worker", |ws| {
        ws.iter().any(|w| w["name"] == "repair")
    });
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let out = Command::new("python3")
        .arg(repo().join("tests/openapi_check.py"))
        .arg(format!("http://{}", dev.addr("admin")))
        .arg(&scratch)
        .env("HOARD_ADMIN_TOKEN", dev.admin_token())
        .output()
        .expect("python3 runs (scripts/setup.sh --tests installs openapi-spec-validator)");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the API does not match its description"
    );
    assert!(text.contains("all checks passed"), "{text}");
}

#[test]
fn hoard_admin_workers_lists_and_controls_every_background_job() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(dir.path());
    let disks: Vec<Value> = serde_json::from_str(&stdout_of(&admin(&dev, &["--json", "disks"])))
        .map(|v: Value| v.as_array().unwrap().clone())
        .unwrap();
    assert!(!disks.is_empty());
    // Every kind of background job of the process is listed: the health monitor, the repair queue,
    // one scrub per disk, one trash sweep per volume server, the frontend's read-back watcher.
    let ws = wait_workers(&dev, "every worker", |ws| {
        let has = |p: &str| {
            ws.iter()
                .any(|w| w["name"].as_str().unwrap().starts_with(p))
        };
        has("health")
            && has("repair")
            && has("trash/")
            && has("watcher/")
            && disks.iter().all(|d| {
                let id = d["id"].as_str().unwrap();
                ws.iter().any(|w| w["name"] == format!("scrub/{id}"))
            })
    });
    assert!(named(&ws, "repair")["throttle_bytes_per_sec"].is_u64());
    assert!(named(&ws, "health")["throttle_bytes_per_sec"].is_null());
    // On-demand jobs join the list when they run.
    let _ = admin(&dev, &["verify"]);
    let ws = wait_workers(&dev, "the verification", |ws| {
        ws.iter()
            .any(|w| w["name"] == "verify" && w["phase"] == "done")
    });
    assert_eq!(named(&ws, "verify")["progress"]["unit"], "entries");

    // The table.
    let table = stdout_of(&admin(&dev, &["workers"]));
    let header = table.lines().next().unwrap();
    for col in ["WORKER", "STATE", "PROGRESS", "THROTTLE"] {
        assert!(header.contains(col), "{table}");
    }
    assert!(table.lines().any(|l| l.starts_with("repair ")), "{table}");

    // Pause every scrub at once; each stops, and resumes.
    let first = format!("scrub/{}", disks[0]["id"].as_str().unwrap());
    let paused: Value = serde_json::from_str(&stdout_of(&admin(
        &dev,
        &["--json", "workers", "pause", "scrub"],
    )))
    .unwrap();
    assert_eq!(paused.as_array().unwrap().len(), disks.len());
    wait_workers(&dev, "every scrub paused", |ws| {
        ws.iter()
            .filter(|w| w["name"].as_str().unwrap().starts_with("scrub/"))
            .all(|w| w["phase"] == "paused")
    });
    stdout_of(&admin(&dev, &["workers", "resume", "scrub"]));
    wait_workers(&dev, "every scrub resumed", |ws| {
        ws.iter()
            .filter(|w| w["name"].as_str().unwrap().starts_with("scrub/"))
            .all(|w| w["phase"] != "paused" && w["paused"] == false)
    });

    // Throttle one; the listing shows it.
    let out = stdout_of(&admin(
        &dev,
        &["workers", "throttle", &first, "--bytes-per-sec", "1048576"],
    ));
    assert!(out.contains("1.0 MiB/s"), "{out}");
    assert_eq!(
        named(&workers(&dev), &first)["throttle_bytes_per_sec"],
        1_048_576
    );

    // Refusals name the problem and fail the command.
    let out = admin(&dev, &["workers", "pause", "no-such-worker"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no worker no-such-worker"), "{err}");
    let out = admin(
        &dev,
        &["workers", "throttle", "health", "--bytes-per-sec", "5"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no throttle"), "{err}");

    // Cancel ends a worker for good.
    stdout_of(&admin(&dev, &["workers", "cancel", &first]));
    wait_workers(&dev, "the cancelled scrub", |ws| {
        named(ws, &first)["phase"] == "cancelled"
    });
}
