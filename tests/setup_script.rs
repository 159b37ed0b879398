//! `scripts/setup.sh` decides what a fresh machine lacks by looking at what the build really loads. Its
//! decisions are shell functions; these tests run them against fake library trees, so that a check that
//! matches the wrong file (a `libclang-cpp.so.14` is not a libclang bindgen can load) cannot come back.

use std::path::Path;
use std::process::Command;

/// Runs `call` in bash with setup.sh's functions defined; true when it exits 0.
fn setup_fn(call: &str) -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/setup.sh");
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "HOARD_SETUP_LIB=1; . '{}'; {call}",
            script.display()
        ))
        .status()
        .expect("run bash");
    status.success()
}

fn touch(root: &Path, rel: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b"").unwrap();
}

const HEADERS: &str = "usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h";

#[test]
fn libclang_cpp_alone_is_not_a_usable_libclang() {
    // What a fresh machine of the project's kind has: the C++ interface library and LLVM, no libclang.
    let root = tempfile::tempdir().unwrap();
    touch(root.path(), "usr/lib/x86_64-linux-gnu/libclang-cpp.so.14");
    touch(root.path(), "usr/lib/llvm-14/lib/libclang-cpp.so.14");
    touch(root.path(), "usr/lib/llvm-14/lib/libLLVM-14.so");
    let r = root.path().display();
    assert!(!setup_fn(&format!("libclang_usable '{r}'")));
    assert!(setup_fn(&format!(
        "missing_packages build '{r}' | grep -qx libclang-dev"
    )));
}

#[test]
fn libclang_with_its_headers_is_usable() {
    for lib in [
        "usr/lib/llvm-14/lib/libclang.so",
        "usr/lib/llvm-14/lib/libclang-14.so.1",
        "usr/lib/x86_64-linux-gnu/libclang-14.so.14",
        "usr/lib/llvm-14/lib/libclang.so.1",
    ] {
        let root = tempfile::tempdir().unwrap();
        touch(root.path(), lib);
        touch(root.path(), "usr/lib/llvm-14/lib/libclang-cpp.so.14");
        let r = root.path().display();
        // Without clang's own headers bindgen fails on stddef.h: still missing.
        assert!(!setup_fn(&format!("libclang_usable '{r}'")), "{lib}");
        touch(root.path(), HEADERS);
        assert!(setup_fn(&format!("libclang_usable '{r}'")), "{lib}");
        assert!(!setup_fn(&format!(
            "missing_packages build '{r}' | grep -qx libclang-dev"
        )));
    }
}

#[test]
fn tests_need_chromium_and_the_build_does_not() {
    // With PATH holding no chromium, only the test set asks for it.
    let root = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let b = bin.path().display();
    let r = root.path().display();
    for tool in ["g++", "make", "python3"] {
        touch(bin.path(), tool);
        let p = bin.path().join(tool);
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let list = |mode: &str, want: &str| {
        setup_fn(&format!(
            "PATH='{b}'; missing_packages {mode} '{r}' | /usr/bin/grep -qx {want}"
        ))
    };
    assert!(list("tests", "chromium"));
    assert!(!list("build", "chromium"));
    assert!(!list("tests", "g++"));
    assert!(!list("tests", "make"));
}
