//! A policy's `max_extension` bounds the total extension of a session,
//! through the real binary's `session extend`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

const CONFIG: &str = "\
database: cw.db
providers:
  trtc: { kind: tencent-trtc, sdk_app_id: 1400000001, region: ap-guangzhou, secret_id: AKIDtest, secret_key: test, endpoint: 'http://127.0.0.1:9' }
policies:
  consultation: { provider: trtc, max_duration: 30m, max_extension: 5m, action: dismiss_room }
  open-ended: { provider: trtc, max_duration: 30m, action: dismiss_room }
";

fn callwarden(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callwarden"))
        .arg("--config")
        .arg(dir.join("cw.yaml"))
        .args(args)
        .env_remove("CALLWARDEN_CONFIG")
        .output()
        .unwrap()
}

fn start(dir: &std::path::Path, policy: &str) -> String {
    let out = callwarden(dir, &["session", "start", "--policy", policy, "--room", "7"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn extensions_stop_at_the_policys_max_extension_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cw.yaml"), CONFIG).unwrap();
    let id = start(dir.path(), "consultation");
    assert!(callwarden(dir.path(), &["session", "extend", &id, "--by", "3m"]).status.success());
    let refused = callwarden(dir.path(), &["session", "extend", &id, "--by", "3m"]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("extended by 180000 ms") && why.contains("allows 300000 ms in all"), "{why}");
    let last = callwarden(dir.path(), &["session", "extend", &id, "--by", "2m"]);
    assert!(last.status.success(), "exactly up to the limit is allowed");
    assert!(!callwarden(dir.path(), &["session", "extend", &id, "--by", "1s"]).status.success());

    // Without max_extension, no limit.
    let free = start(dir.path(), "open-ended");
    for _ in 0..3 {
        assert!(callwarden(dir.path(), &["session", "extend", &free, "--by", "1h"]).status.success());
    }
}
