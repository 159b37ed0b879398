//! Clients in another language: the Python sync-client sketch in `examples/python` round-trips a file
//! through a real `hoard dev`, sending only the blocks the cell lacks; and the cell answers the gRPC
//! reflection (both versions) and health services that common tools speak.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hoard_testkit::{Proc, block};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hoard"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python(env_file: &Path, stubs: &Path, args: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!(". '{}' && python3 {args}", env_file.display()))
        .env("HOARD_PY_GEN", stubs)
        .current_dir(repo())
        .output()
        .expect("run python3")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "python failed ({:?}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn start_dev(data: &Path, log: &Path) -> Proc {
    hoard_testkit::start_dev(bin(), data, log, "32MiB").expect("hoard dev starts")
}

#[test]
fn the_python_example_round_trips_a_file_and_skips_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut dev = start_dev(&data, &dir.path().join("dev.log"));
    let env_file = data.join("hoard.env");
    let stubs = dir.path().join("stubs");
    let script = repo().join("examples/python/hoard_sync.py");
    let s = script.display();

    // Three whole blocks and a tail; the second block repeats the first, so the file has three
    // distinct blocks.
    let one = block(11, 4 * 1024 * 1024);
    let mut bytes = one.to_vec();
    bytes.extend_from_slice(&one);
    bytes.extend_from_slice(&block(12, 4 * 1024 * 1024));
    bytes.extend_from_slice(&block(13, 1_000_001));
    let file = dir.path().join("file.bin");
    std::fs::write(&file, &bytes).unwrap();
    let manifest = dir.path().join("file.manifest");
    let (f, m) = (file.display(), manifest.display());

    let out = ok(&python(
        &env_file,
        &stubs,
        &format!("'{s}' upload '{f}' '{m}'"),
    ));
    assert!(out.contains("uploaded 3 of 4 blocks"), "{out}");
    let lines = std::fs::read_to_string(&manifest).unwrap();
    assert_eq!(lines.lines().count(), 4);

    // Again: the cell holds every block, so nothing is sent.
    let out = ok(&python(
        &env_file,
        &stubs,
        &format!("'{s}' upload '{f}' '{m}'"),
    ));
    assert!(
        out.contains("uploaded 0 of 4 blocks (4 already stored)"),
        "{out}"
    );

    // A file that shares its first block with the first one sends only what is new.
    let mut other = one.to_vec();
    other.extend_from_slice(&block(14, 77_777));
    let file2 = dir.path().join("file2.bin");
    std::fs::write(&file2, &other).unwrap();
    let m2 = dir.path().join("file2.manifest");
    let out = ok(&python(
        &env_file,
        &stubs,
        &format!("'{s}' upload '{}' '{}'", file2.display(), m2.display()),
    ));
    assert!(out.contains("uploaded 1 of 2 blocks"), "{out}");

    let back = dir.path().join("back.bin");
    let out = ok(&python(
        &env_file,
        &stubs,
        &format!("'{s}' download '{m}' '{}'", back.display()),
    ));
    assert!(out.contains("every block checked"), "{out}");
    assert!(std::fs::read(&back).unwrap() == bytes, "download differs");

    // The Rust CLI reads what the Python client wrote.
    let out = Command::new(bin())
        .args(["download", &m.to_string()])
        .env("HOARD_ENDPOINT", format!("http://{}", dev.addr("endpoint")))
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout == bytes);
    assert!(dev.terminate().unwrap().success());
}

/// Lists services through `grpcio-reflection`'s v1alpha client and asks `grpc_health` for each
/// role's status; prints one line per answer.
const REFLECTION_PROBE: &str = r#"
import sys, grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
chan = grpc.insecure_channel(sys.argv[1])
stub = reflection_pb2_grpc.ServerReflectionStub(chan)
req = reflection_pb2.ServerReflectionRequest(list_services="")
for resp in stub.ServerReflectionInfo(iter([req])):
    for s in resp.list_services_response.service:
        print("service", s.name)
h = health_pb2_grpc.HealthStub(chan)
for svc in sys.argv[2:]:
    print("health", svc, health_pb2.HealthCheckResponse.ServingStatus.Name(
        h.Check(health_pb2.HealthCheckRequest(service=svc)).status))
"#;

#[test]
fn python_reflection_and_health_clients_understand_every_role() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut dev = start_dev(&data, &dir.path().join("dev.log"));
    let probe = |addr: &str, services: &[&str]| {
        let out = Command::new("python3")
            .arg("-c")
            .arg(REFLECTION_PROBE)
            .arg(addr)
            .args(services)
            .output()
            .expect("run python3");
        ok(&out)
    };
    let ep = dev.addr("endpoint").to_string();
    // The frontend's health turns SERVING once it holds a writable volume; wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let out = loop {
        let out = probe(&ep, &["hoard.v1.BlockStore"]);
        if out.contains("health hoard.v1.BlockStore SERVING")
            || std::time::Instant::now() > deadline
        {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(out.contains("service hoard.v1.BlockStore"), "{out}");
    assert!(out.contains("service grpc.health.v1.Health"), "{out}");
    assert!(out.contains("health hoard.v1.BlockStore SERVING"), "{out}");

    // Meta and the volume servers too: their addresses are in the status the admin API serves.
    let admin = format!("http://{}", dev.addr("admin"));
    let out = Command::new(bin())
        .args(["admin", "nodes", "--json", "--admin", &admin])
        .env("HOARD_ADMIN_TOKEN", dev.admin_token())
        .output()
        .unwrap();
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let volume_addr = nodes[0]["address"]
        .as_str()
        .expect("a node address")
        .to_string();
    let out = probe(&volume_addr, &["hoard.v1.Volume"]);
    assert!(out.contains("service hoard.v1.Volume"), "{out}");
    assert!(out.contains("health hoard.v1.Volume SERVING"), "{out}");
    assert!(dev.terminate().unwrap().success());
}
