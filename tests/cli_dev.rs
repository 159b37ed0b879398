//! `hoard dev` and the client commands, driven through the real binary; and the process-level errors of
//! `hoard server` (bad config, unwritable disk, port in use).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hoard_testkit::{Proc, block};
use hoard_types::BlockHash;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hoard"))
}

fn hoard(endpoint: &str, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("HOARD_ENDPOINT", endpoint)
        .output()
        .expect("run hoard")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "hoard failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

fn start_dev(data: &Path, log: &Path) -> Proc {
    hoard_testkit::start_dev(bin(), data, log, "16MiB").expect("hoard dev starts")
}

#[test]
fn dev_cell_serves_the_cli_and_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("dev.log");
    let mut dev = start_dev(&data, &log);
    let ep = format!("http://{}", dev.addr("endpoint"));

    // put / get of one block, through a file and through stdin.
    let small = dir.path().join("small.bin");
    std::fs::write(&small, block(1, 100_000)).unwrap();
    let hash = ok(&hoard(&ep, &["put", small.to_str().unwrap()]))
        .trim()
        .to_string();
    assert_eq!(hash, BlockHash::of(&block(1, 100_000)).to_hex());
    let back = dir.path().join("back.bin");
    ok(&hoard(&ep, &["get", &hash, "-o", back.to_str().unwrap()]));
    assert_eq!(std::fs::read(&back).unwrap(), block(1, 100_000).to_vec());
    let stdout_get = hoard(&ep, &["get", &hash]);
    assert_eq!(stdout_get.stdout, block(1, 100_000).to_vec());
    let stat = ok(&hoard(&ep, &["stat", &hash, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&stat).unwrap();
    assert_eq!(v["size"], 100_000);
    assert_eq!(v["geometry"], "6+3");

    // upload / download of a file larger than a block, with a tail that is not a whole block.
    let big = dir.path().join("big.bin");
    let big_len = 3 * 4 * 1024 * 1024 + 12_345;
    std::fs::write(&big, block(2, big_len)).unwrap();
    let manifest_text = ok(&hoard(&ep, &["upload", big.to_str().unwrap()]));
    let lines: Vec<&str> = manifest_text.lines().collect();
    assert_eq!(lines.len(), 4, "{manifest_text}");
    let manifest = dir.path().join("big.manifest");
    std::fs::write(&manifest, &manifest_text).unwrap();
    let big_back = dir.path().join("big.back");
    ok(&hoard(
        &ep,
        &[
            "download",
            manifest.to_str().unwrap(),
            "-o",
            big_back.to_str().unwrap(),
        ],
    ));
    assert!(std::fs::read(&big_back).unwrap() == block(2, big_len).to_vec());

    // missing: prints exactly the hashes the cell does not hold.
    let absent = BlockHash::of(b"absent").to_hex();
    let out = ok(&hoard(&ep, &["missing", &hash, lines[0], &absent]));
    assert_eq!(out.trim(), absent);

    // delete: a block put just now is kept (a client was told it is present within the reference
    // window), and the command says so and exits 1; an absent one is not found; undelete of a live
    // block is "not deleted", exit 0; the JSON names every hash.
    let out = hoard(&ep, &["delete", &hash, &absent]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&format!("{hash}  kept")), "{table}");
    assert!(table.contains("not found"), "{table}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 kept, 1 not found"),
        "{out:?}"
    );
    let undo = ok(&hoard(&ep, &["undelete", &hash, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&undo).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{"hash": hash, "result": "not deleted"}])
    );
    let token = ok(&hoard(&ep, &["delete-token"]));
    assert!(token.trim().parse::<u64>().unwrap() > 0, "{token}");
    assert!(
        hoard(&ep, &["get", &hash]).status.success(),
        "a kept block reads back"
    );

    // Errors: a non-zero exit and one clear line.
    let out = hoard(&ep, &["get", "not-a-hash"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("InvalidArgument") && err.contains("64 hex"),
        "{err}"
    );
    let out = hoard(&ep, &["get", &absent]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
    let too_big = dir.path().join("too-big.bin");
    std::fs::write(&too_big, vec![0u8; 4 * 1024 * 1024 + 1]).unwrap();
    let out = hoard(&ep, &["put", too_big.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hoard upload"));
    let out = hoard("http://127.0.0.1:1", &["get", &hash]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));

    // SIGKILL and restart on the same data: everything acknowledged is served.
    dev.kill();
    let mut dev = start_dev(&data, &log);
    let ep = format!("http://{}", dev.addr("endpoint"));
    ok(&hoard(&ep, &["get", &hash, "-o", back.to_str().unwrap()]));
    assert_eq!(std::fs::read(&back).unwrap(), block(1, 100_000).to_vec());
    let big_back2 = dir.path().join("big.back2");
    ok(&hoard(
        &ep,
        &[
            "download",
            manifest.to_str().unwrap(),
            "-o",
            big_back2.to_str().unwrap(),
        ],
    ));
    assert!(std::fs::read(&big_back2).unwrap() == block(2, big_len).to_vec());
    // The same through direct reads from the volume servers.
    let big_back3 = dir.path().join("big.back3");
    ok(&hoard(
        &ep,
        &[
            "download",
            "--direct",
            manifest.to_str().unwrap(),
            "-o",
            big_back3.to_str().unwrap(),
        ],
    ));
    assert!(std::fs::read(&big_back3).unwrap() == block(2, big_len).to_vec());
    // And it still takes writes.
    let fresh = dir.path().join("fresh.bin");
    std::fs::write(&fresh, block(3, 5000)).unwrap();
    let h2 = ok(&hoard(&ep, &["put", fresh.to_str().unwrap()]))
        .trim()
        .to_string();
    assert_eq!(h2, BlockHash::of(&block(3, 5000)).to_hex());
    assert_eq!(hoard(&ep, &["get", &h2]).stdout, block(3, 5000).to_vec());

    // A clean stop on SIGTERM.
    let status = dev.terminate().unwrap();
    assert!(status.success(), "hoard dev exited with {status:?}");
}

fn server_with(config: &str) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, config.replace("$DIR", dir.path().to_str().unwrap())).unwrap();
    let out = Command::new(bin())
        .args(["server", "--config", p.to_str().unwrap()])
        .output()
        .unwrap();
    (out, dir)
}

fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("hoard:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    lines[0].to_string()
}

#[test]
fn bad_configs_exit_non_zero_with_one_line_naming_the_problem() {
    let (out, _d) = server_with(
        "[meta]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"$DIR/m\"\nextnet_size = \"1GiB\"\n",
    );
    let e = one_line_error(&out);
    assert!(e.contains("extnet_size") && e.contains("line 4"), "{e}");

    let (out, _d) = server_with("[meta]\nlisten = \"127.0.0.1:0\"\n");
    let e = one_line_error(&out);
    assert!(e.contains("data_dir"), "{e}");

    let (out, _d) =
        server_with("[meta]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"$DIR/m\"\nec = \"6x3\"\n");
    let e = one_line_error(&out);
    assert!(e.contains("6x3") && e.contains("line 4"), "{e}");

    let (out, _d) = server_with("");
    let e = one_line_error(&out);
    assert!(e.contains("no role"), "{e}");

    let missing = PathBuf::from("/nonexistent/hoard.toml");
    let out = Command::new(bin())
        .args(["server", "--config", missing.to_str().unwrap()])
        .output()
        .unwrap();
    let e = one_line_error(&out);
    assert!(e.contains("/nonexistent/hoard.toml"), "{e}");
}

#[test]
fn unwritable_disk_and_busy_port_exit_non_zero_with_one_line() {
    // A disk path below a regular file can never be created or written, even by root.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let (out, _d) = server_with(&format!(
        "[node]\nid = \"v\"\n[volume]\nlisten = \"127.0.0.1:0\"\nmeta = \"http://127.0.0.1:1\"\ndisks = [\"{}/disk\"]\n",
        file.display()
    ));
    let e = one_line_error(&out);
    assert!(e.contains("plain-file/disk"), "{e}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let (out, _d) = server_with(&format!(
        "[meta]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"$DIR/m\"\n"
    ));
    let e = one_line_error(&out);
    assert!(
        e.contains(&format!("127.0.0.1:{port}")) && e.to_lowercase().contains("in use"),
        "{e}"
    );
}

#[test]
fn config_check_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[frontend]\nlisten = \"127.0.0.1:7700\"\nmeta = \"http://127.0.0.1:7701\"\nopen_volumez = 3\n").unwrap();
    let out = Command::new(bin())
        .args(["config", "check", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("open_volumez") && err.contains("line 4"),
        "{err}"
    );
    std::fs::write(
        &p,
        "[frontend]\nlisten = \"127.0.0.1:7700\"\nmeta = \"http://127.0.0.1:7701\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["config", "check", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// Runs hoard with stdout on a pipe whose reader is already gone, as `hoard ... | head -1` after head
/// has exited.
fn hoard_into_closed_pipe(env: &[(&str, String)], args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut cmd = Command::new(bin());
    cmd.args(args).stdout(writer);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run hoard")
}

#[test]
fn a_closed_pipe_ends_commands_quietly_and_the_env_file_reaches_the_cell() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut dev = start_dev(&data, &dir.path().join("dev.log"));

    // `hoard dev` writes everything a client needs into DATA/hoard.env; sourcing it is enough.
    let env_file = data.join("hoard.env");
    let text = std::fs::read_to_string(&env_file).expect("hoard dev writes DATA/hoard.env");
    assert!(
        text.contains(&format!("HOARD_ENDPOINT=http://{}", dev.addr("endpoint"))),
        "{text}"
    );
    assert!(
        text.contains(&format!("HOARD_ADMIN=http://{}", dev.addr("admin"))),
        "{text}"
    );
    let file = dir.path().join("one.bin");
    std::fs::write(&file, block(7, 300_000)).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "unset HOARD_ENDPOINT HOARD_ADMIN HOARD_ADMIN_TOKEN; . '{}' && '{}' put '{}' && '{}' admin disks",
            env_file.display(),
            bin().display(),
            file.display(),
            bin().display()
        ))
        .output()
        .unwrap();
    let stdout = ok(&out);
    let hash = BlockHash::of(&block(7, 300_000)).to_hex();
    assert!(stdout.starts_with(&hash), "{stdout}");
    assert!(stdout.contains("DISK"), "{stdout}");

    // Readable output: an RFC 3339 time and a size in units, not milliseconds and bytes.
    let ep = format!("http://{}", dev.addr("endpoint"));
    let stat = ok(&hoard(&ep, &["stat", &hash]));
    let created = stat
        .lines()
        .find(|l| l.starts_with("created"))
        .expect("created line");
    let year = created.split_whitespace().nth(1).unwrap_or("");
    assert!(
        year.len() == "2026-12-02T05:07:31.123Z".len() && year.ends_with('Z') && year.contains('T'),
        "{stat}"
    );
    assert!(stat.contains("293.0 KiB"), "{stat}");
    let stat_json = ok(&hoard(&ep, &["stat", &hash, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&stat_json).unwrap();
    assert!(v["created_unix_ms"].as_u64().unwrap() > 1_700_000_000_000);

    // Every command that writes to stdout ends quietly when its reader has gone: killed by SIGPIPE,
    // as cat or ls would be, with nothing on stderr.
    let env = [
        ("HOARD_ENDPOINT", ep.clone()),
        ("HOARD_ADMIN", format!("http://{}", dev.addr("admin"))),
        (
            "HOARD_ADMIN_TOKEN",
            hoard_testkit::dev_var(&data, "HOARD_ADMIN_TOKEN"),
        ),
    ];
    let manifest = dir.path().join("m");
    std::fs::write(&manifest, format!("{hash}\n")).unwrap();
    let m = manifest.to_str().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["admin", "disks"],
        vec!["admin", "status"],
        vec!["admin", "volumes", "--json"],
        vec!["admin", "trash", "status"],
        vec!["get", &hash],
        vec!["download", m],
        vec!["stat", &hash],
        vec![
            "missing",
            &hash,
            "0000000000000000000000000000000000000000000000000000000000000000",
        ],
        vec!["bench", "put", "--count", "4", "--size", "4KiB", "--json"],
        vec!["config", "example", "meta"],
    ];
    for args in commands {
        let out = hoard_into_closed_pipe(&env, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe") && err.trim().is_empty(),
            "hoard {args:?} on a closed pipe printed: {err}"
        );
        assert_eq!(
            out.status.signal(),
            Some(13), // SIGPIPE
            "hoard {args:?} on a closed pipe: {:?}",
            out.status
        );
    }
    // The trash ledger as JSON: nothing halted, the inspector at work.
    let out = Command::new(bin())
        .args(["admin", "trash", "status", "--json"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(v["halted"], "", "{v}");
    assert!(v["entries"].is_u64() && v["waiting"].is_array(), "{v}");
    let status = dev.terminate().unwrap();
    assert!(status.success());
}
