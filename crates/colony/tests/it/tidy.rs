//! Tidy checks over the source tree: the sans-IO rule of the cores, enforced by a test.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Cores take time, randomness and IO from their caller (shared/design/architecture.md):
/// none of them may name tokio, a socket, the wall clock, a monotonic clock, a thread-local
/// RNG or the file system.
#[test]
fn tidy_cores_do_no_io_and_read_no_clock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let forbidden = [
        "tokio",
        "std::net",
        "std::fs",
        "Instant::now",
        "SystemTime",
        "thread_rng",
        "rand::random",
        "std::thread",
    ];
    let mut violations = Vec::new();
    for core in ["base", "swim", "raft", "store", "health", "modes"] {
        let mut files = Vec::new();
        rust_files(&root.join("crates").join(core).join("src"), &mut files);
        assert!(!files.is_empty(), "no sources found for {core}");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable source");
            for (number, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for word in forbidden {
                    if code.contains(word) {
                        violations.push(format!("{}:{}: {word}", file.display(), number + 1));
                    }
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "cores must stay sans-IO:\n{}",
        violations.join("\n")
    );
}

/// Core crates depend only on other cores and `base`, never on the runtime.
#[test]
fn tidy_core_manifests_have_no_runtime_dependencies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for core in ["base", "swim", "raft", "store", "health", "modes"] {
        let manifest = std::fs::read_to_string(root.join("crates").join(core).join("Cargo.toml"))
            .expect("manifest");
        let dependencies = manifest
            .split("[dependencies]")
            .nth(1)
            .and_then(|rest| rest.split("\n[").next())
            .unwrap_or_default();
        for banned in ["tokio", "colony-runtime", "colony-api", "hyper", "axum"] {
            assert!(!dependencies.contains(banned), "{core} depends on {banned}");
        }
    }
}
