//! The session commands while a daemon runs, and what `session start` refuses.

use crate::helpers::DeadlineMs;
use crate::helpers::RoomArg::Num;
use crate::helpers::{Harness, SHORT, ms_of, run_cli, wait_for_wall_clock};

#[tokio::test]
async fn a_session_ended_with_the_cli_is_never_enforced_by_the_running_daemon() {
    let h = Harness::new().await;
    let _daemon = h.start_daemon().await;
    let ended = h.start_session("consultation", Num(7001), &[], Some("3s")).await.remove(0);
    // Due a second after the ended one: once it is enforced, the daemon has
    // had its chance at the ended one.
    let sentinel = h.start_session("consultation", Num(7002), &[], Some("4s")).await.remove(0);

    let out = h.cli(&["session", "end", &ended]).await.expect_ok("session end");
    assert!(out.stderr.contains("ended"), "{out:?}");

    h.wait_for_state(&sentinel, "enforced", SHORT).await;
    let row = h.session(&ended).await;
    assert_eq!((row.state.as_str(), row.attempts), ("cancelled", 0), "{row:#?}");
    let events: Vec<String> = h.audit_of(&ended).await.into_iter().map(|a| a.event).collect();
    assert_eq!(events, ["registered", "cancelled"]);
    assert!(h.sandbox.requests_for("7001").await.is_empty(), "the sandbox was called for an ended session");
    assert_eq!(h.sandbox.requests_for("7002").await.len(), 1);
}

#[tokio::test]
async fn an_extended_session_is_enforced_after_its_new_deadline_and_cannot_be_ended_afterwards() {
    let h = Harness::new().await;
    let clock = h.sandbox.clock().await;
    let _daemon = h.start_daemon().await;
    let id = h.start_session("consultation", Num(7101), &[], Some("2s")).await.remove(0);
    let first_deadline = h.session(&id).await.deadline_ms();

    let out = h.cli(&["session", "extend", &id, "--by", "2s"]).await.expect_ok("session extend");
    let printed = out.stdout.trim().to_string();
    assert_eq!(ms_of(&printed), first_deadline + 2_000, "{out:?}");
    let row = h.session(&id).await;
    assert_eq!(row.deadline.as_deref(), Some(printed.as_str()));
    assert_eq!(row.extended_ms, 2_000);

    // Past the first deadline, nothing has happened.
    wait_for_wall_clock(first_deadline + 500).await;
    assert_eq!(h.session(&id).await.state, "active");
    assert!(h.sandbox.requests_for("7101").await.is_empty(), "called at the old deadline");

    h.wait_for_state(&id, "enforced", SHORT).await;
    h.assert_never_early(Some(clock)).await;
    let events: Vec<String> = h.audit_of(&id).await.into_iter().map(|a| a.event).collect();
    assert_eq!(events, ["registered", "extended", "attempt", "enforced"]);

    // An enforced session can be neither ended nor extended.
    for args in [vec!["session", "end", &id], vec!["session", "extend", &id, "--by", "1m"]] {
        let out = h.cli(&args).await;
        assert!(!out.ok(), "{args:?} was accepted: {out:?}");
        assert!(out.stderr.contains("enforced"), "the refusal should name the state: {out:?}");
    }
    let row = h.session(&id).await;
    assert_eq!((row.state.as_str(), row.extended_ms), ("enforced", 2_000));
}

#[tokio::test]
async fn session_start_refuses_bad_input_and_inserts_nothing() {
    let h = Harness::new().await;
    let refused: [(&[&str], &str); 6] = [
        (&["--policy", "consultation", "--room", "0"], "not an integer from 1 to 4294967294"),
        (&["--policy", "consultation", "--room", "4294967295"], "not an integer from 1 to 4294967294"),
        (&["--policy", "consultation", "--room", "12", "--limit", "31m"], "longer than"),
        (&["--policy", "no-such-policy", "--room", "12"], "unknown policy"),
        (&["--policy", "paid-chat", "--room", "12"], "--user"),
        (&["--policy", "consultation", "--str-room", "no/slashes"], "string room id"),
    ];
    for (args, reason) in refused {
        let mut argv = vec!["session", "start"];
        argv.extend_from_slice(args);
        let out = h.cli(&argv).await;
        assert!(!out.ok(), "{argv:?} was accepted: {out:?}");
        assert!(out.stdout.is_empty(), "{argv:?} printed an id: {out:?}");
        assert!(out.stderr.contains(reason), "{argv:?} should say {reason:?}: {out:?}");
    }
    let listed = h.cli(&["session", "list", "--format", "json"]).await.expect_ok("session list");
    assert_eq!(listed.stdout, "", "nothing may be inserted");
    assert!(h.sessions().await.is_empty());
    assert!(h.audit().await.is_empty());

    // The same command with valid input does insert: the checks above can fail.
    h.start_session("consultation", Num(4_294_967_294), &[], Some("30m")).await;
    let listed = h.cli(&["session", "list", "--format", "json"]).await.expect_ok("session list");
    assert_eq!(listed.stdout.lines().count(), 1, "{listed:?}");
}

#[tokio::test]
async fn commands_racing_to_create_the_database_all_succeed() {
    let h = Harness::new().await;
    assert!(!h.db_path.exists());
    let mut racing = tokio::task::JoinSet::new();
    for room in 101..105 {
        let config = h.config.clone();
        racing.spawn(async move {
            let room = room.to_string();
            run_cli(&config, &["session", "start", "--policy", "consultation", "--room", &room]).await
        });
    }
    while let Some(out) = racing.join_next().await {
        out.unwrap().expect_ok("session start on a database another process is creating");
    }
    assert_eq!(h.sessions().await.len(), 4);
}
