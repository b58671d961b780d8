//! Policy features beyond the timer: `max_extension` bounds the total
//! extension of a session (through the real binary's `session extend`), and
//! `mode: shadow` records what would happen without calling the provider.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

const CONFIG: &str = "\
database: cw.db
providers:
  trtc: { kind: tencent-trtc, sdk_app_id: 1400000001, region: ap-guangzhou, secret_id: AKIDtest, secret_key: test, endpoint: 'http://127.0.0.1:9' }
policies:
  consultation: { provider: trtc, max_duration: 30m, max_extension: 5m, action: dismiss_room }
  trial: { provider: trtc, max_duration: 30m, action: dismiss_room, mode: shadow }
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

#[tokio::test]
async fn a_shadow_policy_records_what_it_would_do_and_calls_nothing() {
    use callwarden::clock::Clock;
    use callwarden::sandbox::{SANDBOX_SECRET_ID, SANDBOX_SECRET_KEY, Sandbox, SandboxOptions};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let sandbox = Sandbox::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        SandboxOptions::default(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let config = format!(
        "database: cw.db\nproviders:\n  trtc: {{ kind: tencent-trtc, sdk_app_id: 1400000001, region: ap-guangzhou, \
         secret_id: {SANDBOX_SECRET_ID}, secret_key: {SANDBOX_SECRET_KEY}, endpoint: '{}' }}\npolicies:\n  \
         trial: {{ provider: trtc, max_duration: 30m, action: dismiss_room, mode: shadow }}\n  \
         live: {{ provider: trtc, max_duration: 30m, action: dismiss_room }}\n",
        sandbox.url()
    );
    std::fs::write(dir.path().join("cw.yaml"), config).unwrap();
    let config = std::sync::Arc::new(callwarden::config::Config::load(&dir.path().join("cw.yaml")).unwrap());
    let store = callwarden::store::Store::open(&config.database).await.unwrap();
    let daemon = tokio::spawn(callwarden::daemon::serve(
        config.clone(),
        store.clone(),
        Clock::system(),
        shutdown.clone(),
    ));

    let shadow = start(dir.path(), "trial");
    let live = {
        let out =
            callwarden(dir.path(), &["session", "start", "--policy", "live", "--room", "8", "--limit", "1s"]);
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let out =
        callwarden(dir.path(), &["session", "start", "--policy", "trial", "--room", "9", "--limit", "1s"]);
    let shadow_due = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let states = store.list_sessions(None, 10).await.unwrap();
        let state = |id: &str| states.iter().find(|s| s.id == id).map(|s| s.state.clone()).unwrap();
        if state(&shadow_due) == "shadowed" && state(&live) == "enforced" {
            assert_eq!(state(&shadow), "active", "the 30-minute shadow session is not due");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not settled: {states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = sandbox.state.stats();
    assert_eq!(stats.requests, 1, "only the live session reached the provider: {stats:?}");
    let audit = store
        .audit(&callwarden::store::AuditFilter {
            session: Some(shadow_due.parse().unwrap()),
            ..Default::default()
        })
        .await
        .unwrap();
    let last = audit.last().unwrap();
    assert_eq!((last.event.as_str(), last.outcome.as_deref()), ("shadow", Some("shadow")));
    assert!(last.detail.as_deref().unwrap().contains("would have called DismissRoom on room 9"));
    assert!(last.lateness_ms.unwrap() >= 0, "not early even in shadow");
    assert!(audit.iter().all(|a| a.event != "attempt"), "no attempt: nothing was sent");
    shutdown.cancel();
    daemon.await.unwrap().unwrap();
}
