//! Every configuration file we ship or keep as a fixture, checked through
//! the real binary's `check` command: the examples and `valid/` must load;
//! each file in `invalid/` must be refused with exit code 2, its own line
//! and its own reason, written in the file's `# expect:` and `# line:`
//! header comments.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn check(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callwarden"))
        .arg("--config")
        .arg(path)
        .arg("check")
        // For config/callwarden.example.yaml's "${TRTC_SECRET_KEY}".
        .env("TRTC_SECRET_KEY", "example-secret-value-for-tests")
        .env("ACS_ACCESS_KEY", "ZXhhbXBsZS1hY3Mta2V5LWZvci10ZXN0cw==")
        .env("TRTC_CALLBACK_KEY", "example-callback-key")
        .env("CALLWARDEN_API_TOKEN", "example-api-token-for-tests")
        .env("CALLWARDEN_CHECKPOINT_KEY", "example-checkpoint-key")
        .env("ACS_CALLBACK_SECRET", "example-acs-callback-secret")
        .env("CALLWARDEN_NOTIFY_SECRET", "example-notify-secret")
        .output()
        .expect("the binary runs")
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable directory").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {}", dir.display());
    files
}

fn assert_loads(path: &Path) {
    let out = check(path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{} was refused:\n{stderr}", path.display());
    assert!(stdout.contains("is valid"), "{}: {stdout}", path.display());
    for secret in [
        "example-secret-value-for-tests",
        "ZXhhbXBsZS1hY3Mta2V5LWZvci10ZXN0cw==",
        "fixture-secret-value",
        "fixture-secret-from-file",
        "Zml4dHVyZS1hY3Mta2V5",
        "fixture-acs-callback-token",
        "example-callback-key",
        "example-api-token-for-tests",
        "example-acs-callback-secret",
        "example-checkpoint-key",
        "example-notify-secret",
        "notify-fixture-secret",
    ] {
        assert!(!stdout.contains(secret), "{} printed its secret: {stdout}", path.display());
        assert!(!stderr.contains(secret), "{} logged its secret: {stderr}", path.display());
    }
}

#[test]
fn the_shipped_example_configs_load() {
    for path in yaml_files("config") {
        // The demo configs are templates with placeholders; the demo's unit
        // tests load them filled in.
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("demo")) {
            continue;
        }
        assert_loads(&path);
    }
}

#[test]
fn every_valid_fixture_loads() {
    for path in yaml_files("tests/fixtures/config/valid") {
        assert_loads(&path);
    }
}

#[test]
fn every_invalid_fixture_is_refused_with_its_line_and_reason() {
    for path in yaml_files("tests/fixtures/config/invalid") {
        let text = std::fs::read_to_string(&path).expect("readable fixture");
        let header = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
                .unwrap_or_else(|| panic!("{} lacks a '# {key}:' line", path.display()))
                .trim()
                .to_string()
        };
        let expect = header("expect");
        let line = header("line");
        let out = check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", path.display());
        let location = format!("{}:{line}: ", path.display());
        assert!(stderr.contains(&location), "{}: expected {location:?} in {stderr}", path.display());
        assert!(stderr.contains(&expect), "{}: expected {expect:?} in {stderr}", path.display());
        assert!(!stderr.contains("fixture-secret-value"), "{} leaked a secret: {stderr}", path.display());
    }
}
