//! Policy features beyond the timer: `max_extension` bounds the total
//! extension of a session (through the real binary's `session extend`), and
//! `mode: shadow` records what would happen without calling the provider.

use crate::helpers::{ConfigYaml, NOWHERE, Workdir};

async fn start(dir: &Workdir, policy: &str) -> String {
    let out = dir.cli(&["session", "start", "--policy", policy, "--room", "7"]).await;
    assert!(out.ok(), "{}", out.stderr);
    out.stdout.trim().to_string()
}

#[tokio::test]
async fn extensions_stop_at_the_policys_max_extension_and_say_why() {
    let dir = Workdir::with_config(|db| {
        ConfigYaml::new(db, NOWHERE)
            .without_standard_policies()
            .policies(
                "  consultation: { provider: trtc, max_duration: 30m, max_extension: 5m, action: dismiss_room }
  trial: { provider: trtc, max_duration: 30m, action: dismiss_room, mode: shadow }
  open-ended: { provider: trtc, max_duration: 30m, action: dismiss_room }
",
            )
            .text()
    });
    let id = start(&dir, "consultation").await;
    assert!(dir.cli(&["session", "extend", &id, "--by", "3m"]).await.ok());
    let refused = dir.cli(&["session", "extend", &id, "--by", "3m"]).await;
    assert!(!refused.ok());
    let why = &refused.stderr;
    assert!(why.contains("extended by 180000 ms") && why.contains("allows 300000 ms in all"), "{why}");
    let last = dir.cli(&["session", "extend", &id, "--by", "2m"]).await;
    assert!(last.ok(), "exactly up to the limit is allowed");
    assert!(!dir.cli(&["session", "extend", &id, "--by", "1s"]).await.ok());

    // Without max_extension, no limit.
    let free = start(&dir, "open-ended").await;
    for _ in 0..3 {
        assert!(dir.cli(&["session", "extend", &free, "--by", "1h"]).await.ok());
    }
}

#[tokio::test]
async fn a_shadow_policy_records_what_it_would_do_and_calls_nothing() {
    use callwarden::clock::Clock;
    use callwarden::sandbox::{Sandbox, SandboxOptions};
    use std::time::Duration;

    let shutdown = tokio_util::sync::CancellationToken::new();
    let sandbox = Sandbox::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        SandboxOptions::default(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let dir = Workdir::with_config(|db| {
        ConfigYaml::new(db, &sandbox.url())
            .without_standard_policies()
            .policies(
                "  trial: { provider: trtc, max_duration: 30m, action: dismiss_room, mode: shadow }
  live: { provider: trtc, max_duration: 30m, action: dismiss_room }
",
            )
            .text()
    });
    let config = std::sync::Arc::new(callwarden::config::Config::load(&dir.config).unwrap());
    let store = callwarden::store::Store::connect(&config.database).await.unwrap();
    let daemon = tokio::spawn(callwarden::daemon::serve(
        config.clone(),
        store.clone(),
        Clock::system(),
        shutdown.clone(),
    ));

    let shadow = start(&dir, "trial").await;
    let live = {
        let out = dir.cli(&["session", "start", "--policy", "live", "--room", "8", "--limit", "1s"]).await;
        out.stdout.trim().to_string()
    };
    let out = dir.cli(&["session", "start", "--policy", "trial", "--room", "9", "--limit", "1s"]).await;
    let shadow_due = out.stdout.trim().to_string();

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let states = store.list_sessions(None, None, 10).await.unwrap();
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
