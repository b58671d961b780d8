//! Azure Communication Services: participants removed and calls terminated on
//! time, paced under the quota, retried under one repeatability id (so a
//! retry or a post-crash repeat never acts twice), and not retried when it
//! cannot help.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use callwarden::sandbox::Fault;

use crate::helpers::DeadlineMs;
use crate::helpers::{
    AuditRow, Harness, LONG, SHORT, SqlSession, now_ms, text_of, wait_for, wait_for_wall_clock,
};

fn events(rows: &[AuditRow], event: &str) -> Vec<AuditRow> {
    rows.iter().filter(|a| a.event == event).cloned().collect()
}

/// A fault rule for one call connection.
fn fault_for(call: &str) -> Fault {
    Fault { room: Some(call.into()), ..Fault::default() }
}

#[tokio::test]
async fn participants_are_removed_and_calls_terminated_on_time() {
    let h = Harness::acs().await;
    let clock = h.sandbox.clock().await;
    let _daemon = h.start_daemon().await;

    let participants = ["8:acs:res_user1", "+15551234567", "8:orgid:aad-guid"];
    let removals = h.start_acs_session("acs-paid-chat", "call-remove-1", &participants, Some("1s")).await;
    let terminated = h.start_acs_session("acs-consultation", "call-terminate-1", &[], Some("2s")).await;
    let all: Vec<String> = removals.iter().chain(&terminated).cloned().collect();

    for row in h.wait_until_settled(&all, SHORT).await {
        assert_eq!(row.state, "enforced", "{row:#?}");
        assert_eq!(row.attempts, 1, "{row:#?}");
        assert_eq!(row.room_kind, "call", "{row:#?}");
    }
    h.assert_acs_never_early(clock).await;

    // One request per participant, the phone number as a `4:` raw id, and
    // one terminate for the call.
    let seen: BTreeSet<(String, String, Vec<String>, String)> = h
        .sandbox
        .acs_requests()
        .await
        .into_iter()
        .map(|r| (r.action, r.room.unwrap_or_default(), r.users, r.answer))
        .collect();
    let expected: BTreeSet<(String, String, Vec<String>, String)> = [
        ("RemoveParticipant", "call-remove-1", vec!["8:acs:res_user1"], "HTTP202"),
        ("RemoveParticipant", "call-remove-1", vec!["4:+15551234567"], "HTTP202"),
        ("RemoveParticipant", "call-remove-1", vec!["8:orgid:aad-guid"], "HTTP202"),
        ("TerminateCall", "call-terminate-1", vec![], "HTTP204"),
    ]
    .into_iter()
    .map(|(action, call, users, answer)| {
        (action.into(), call.into(), users.into_iter().map(String::from).collect(), answer.into())
    })
    .collect();
    assert_eq!(seen, expected);
    let stats = h.sandbox.stats().await;
    assert_eq!(stats.requests_by_action.get("RemoveParticipant"), Some(&3), "{stats:#?}");
    assert_eq!(stats.requests_by_action.get("TerminateCall"), Some(&1), "{stats:#?}");
    assert_eq!((stats.participants_removed, stats.calls_terminated), (3, 1), "{stats:#?}");
    assert_eq!(stats.repeats_replayed, 0, "{stats:#?}");

    // Each session went out under its own repeatability id, stored before the
    // call, and the audit log knows the request by it.
    let requests = h.sandbox.acs_requests().await;
    let mut request_ids = HashSet::new();
    for (ids, action) in [(&removals, "RemoveParticipant"), (&terminated, "TerminateCall")] {
        for id in ids {
            let (repeatability_id, first_sent_at) = h.repeatability_of(id).await;
            let repeatability_id = repeatability_id.unwrap_or_else(|| panic!("{id}: no repeatability id"));
            assert!(first_sent_at.is_some(), "{id}: no first_sent_at");
            assert!(uuid::Uuid::parse_str(&repeatability_id).is_ok(), "{repeatability_id:?} is not a UUID");
            assert!(request_ids.insert(repeatability_id.clone()), "{repeatability_id} used twice");
            let sent: Vec<_> =
                requests.iter().filter(|r| r.request_id.as_ref() == Some(&repeatability_id)).collect();
            assert_eq!(sent.len(), 1, "{id}: {requests:#?}");
            assert_eq!(sent[0].action, action);
            let enforced = events(&h.audit_of(id).await, "enforced");
            assert_eq!(enforced.len(), 1, "{enforced:#?}");
            assert_eq!(enforced[0].action.as_deref(), Some(action));
            assert_eq!(enforced[0].outcome.as_deref(), Some("success"));
            assert_eq!(enforced[0].provider.as_deref(), Some("acs"));
            assert_eq!(enforced[0].provider_request_id.as_ref(), Some(&repeatability_id));
        }
    }
}

#[tokio::test]
async fn a_burst_of_removals_drains_under_the_quota() {
    let h = Harness::acs().await;
    let clock = h.sandbox.clock().await;
    let _daemon = h.start_daemon().await;

    // 60 removals due in one instant: three calls of twenty participants,
    // inserted with plain SQL as another program would.
    let deadline = now_ms() + 2_000;
    let rows: Vec<SqlSession> = (0..60)
        .map(|i| SqlSession {
            policy: "acs-paid-chat".into(),
            room_id: format!("burst-call-{}", i / 20),
            room_kind: "call".into(),
            user_id: Some(format!("8:acs:burst_user{i:02}")),
            deadline: Some(text_of(deadline)),
            ..SqlSession::default()
        })
        .collect();
    let ids = h.insert_sql(&rows).await.expect("the burst is inserted");

    for row in h.wait_until_settled(&ids, LONG).await {
        assert_eq!(row.state, "enforced", "{row:#?}");
        assert_eq!(row.attempts, 1, "{row:#?}");
    }
    h.assert_acs_never_early(clock).await;

    let stats = h.sandbox.stats().await;
    assert_eq!(stats.rate_limited, 0, "{stats:#?}");
    assert!(stats.max_per_second <= 20, "{stats:#?}");
    assert_eq!(stats.requests_by_action.get("RemoveParticipant"), Some(&60), "{stats:#?}");
    assert_eq!(stats.answers.get("HTTP202"), Some(&60), "{stats:#?}");
    assert_eq!(stats.participants_removed, 60, "{stats:#?}");
    // It used the quota rather than trickling.
    assert!(stats.max_per_second_by_action["RemoveParticipant"] >= 10, "{stats:#?}");

    // Sixty distinct requests, each under its session's repeatability id.
    let sent: HashSet<String> =
        h.sandbox.acs_requests().await.into_iter().filter_map(|r| r.request_id).collect();
    assert_eq!(sent.len(), 60);
    for id in &ids {
        let stored = h.repeatability_of(id).await.0.expect("a repeatability id");
        assert!(sent.contains(&stored), "{id}: {stored} was never sent");
    }
}

#[tokio::test]
async fn retries_after_a_500_and_429s_keep_one_repeatability_id_and_honour_retry_after() {
    let h = Harness::acs().await;
    let call = "call-flaky-1";
    // The first request answers 500, the next two 429 with Retry-After: 1.
    h.sandbox.inject(Fault { http_status: Some(500), times: Some(1), ..fault_for(call) }).await;
    h.sandbox
        .inject(Fault {
            http_status: Some(429),
            times: Some(2),
            retry_after_secs: Some(1),
            ..fault_for(call)
        })
        .await;
    let _daemon = h.start_daemon().await;

    let participant = "8:acs:flaky_user";
    let id = h.start_acs_session("acs-paid-chat", call, &[participant], Some("1s")).await.remove(0);

    let row = h.wait_for_state(&id, "enforced", SHORT).await;
    assert_eq!(row.attempts, 4, "{row:#?}");

    let requests = h.sandbox.acs_requests_for(call).await;
    let answers: Vec<&str> = requests.iter().map(|r| r.answer.as_str()).collect();
    assert_eq!(answers, ["HTTP500", "HTTP429", "HTTP429", "HTTP202"], "{requests:#?}");
    // One logical request: every try carried the id stored for the session.
    let stored = h.repeatability_of(&id).await.0.expect("a repeatability id");
    for r in &requests {
        assert_eq!(r.request_id.as_ref(), Some(&stored), "{requests:#?}");
        assert_eq!(r.users, [participant], "{requests:#?}");
    }
    // A 429 asked for a second: the next try waited at least that long.
    for pair in requests.windows(2).filter(|w| w[0].answer == "HTTP429") {
        let gap = pair[1].at_ms - pair[0].at_ms;
        assert!(gap >= 950, "retried {gap} ms after a 429 with Retry-After: 1: {requests:#?}");
    }

    let audit = h.audit_of(&id).await;
    let retries = events(&audit, "retry");
    let codes: Vec<_> = retries.iter().map(|r| (r.http_status, r.outcome.as_deref())).collect();
    assert_eq!(
        codes,
        [(Some(500), Some("retryable")), (Some(429), Some("retryable")), (Some(429), Some("retryable"))],
        "{audit:#?}"
    );
    for row in audit.iter().filter(|a| ["attempt", "retry", "enforced"].contains(&a.event.as_str())) {
        assert_eq!(row.provider_request_id.as_ref(), Some(&stored), "{row:#?}");
    }
    let stats = h.sandbox.stats().await;
    assert_eq!(stats.participants_removed, 1, "{stats:#?}");
    assert_eq!(stats.requests_by_action.get("RemoveParticipant"), Some(&4), "{stats:#?}");
}

/// Starts a daemon, registers a removal due in a second whose request the
/// sandbox sits on for three seconds, and kills the daemon (SIGKILL) while
/// the request is in flight. Returns the session id and the repeatability id
/// stored for it.
async fn crash_with_a_removal_in_flight(h: &Harness, call: &str, participant: &str) -> (String, String) {
    h.sandbox.inject(Fault { delay_ms: 3_000, times: Some(1), ..fault_for(call) }).await;
    let mut daemon = h.start_daemon().await;
    let id = h.start_acs_session("acs-paid-chat", call, &[participant], Some("1s")).await.remove(0);
    let deadline = h.session(&id).await.deadline_ms();

    // A second after the deadline the request has left (nothing else is
    // queued, so it goes at once) and the sandbox is sitting on it.
    wait_for_wall_clock(deadline + 1_000).await;
    assert!(
        h.sandbox.acs_requests_for(call).await.is_empty(),
        "the sandbox answered before the crash: nothing left to test"
    );
    daemon.crash();
    let row = h.session(&id).await;
    assert_eq!((row.state.as_str(), row.attempts), ("enforcing", 1), "the answer went unrecorded: {row:#?}");
    let stored = h.repeatability_of(&id).await.0.expect("the id is stored before the request is sent");
    (id, stored)
}

#[tokio::test]
async fn a_daemon_killed_with_a_removal_in_flight_resends_it_under_the_same_id_after_restart() {
    let h = Harness::acs().await;
    let (call, participant) = ("call-crash-1", "8:acs:crash_user");
    let (id, stored) = crash_with_a_removal_in_flight(&h, call, participant).await;

    let _daemon = h.start_daemon().await;
    let row = h.wait_until_settled(std::slice::from_ref(&id), SHORT).await.remove(0);
    assert!(["enforced", "already_ended"].contains(&row.state.as_str()), "{row:#?}");
    // The resend may find the original still in progress (409) and retry.
    assert!(row.attempts >= 2, "{row:#?}");
    assert_eq!(h.repeatability_of(&id).await.0.as_ref(), Some(&stored), "the stored id changed");

    // Whatever became of the interrupted request, every request the sandbox
    // saw for the call carried the one stored id, and the participant was
    // removed once.
    let requests = h.sandbox.acs_requests_for(call).await;
    assert!(!requests.is_empty(), "the restarted daemon sent nothing");
    for r in &requests {
        assert_eq!(r.request_id.as_ref(), Some(&stored), "resent under another id: {requests:#?}");
        // Requests answered from the record or refused as in progress are
        // not parsed, so only carried-out ones name the participant.
        if r.answer.starts_with("HTTP2") && !r.answer.contains("repeat") {
            assert_eq!(r.users, [participant], "{requests:#?}");
        }
    }
    let stats = h.sandbox.stats().await;
    assert_eq!(stats.participants_removed, 1, "{stats:#?}");

    let audit = h.audit_of(&id).await;
    let names: Vec<&str> = audit.iter().map(|a| a.event.as_str()).collect();
    assert_eq!(names[..4], ["registered", "attempt", "recovered", "attempt"], "{audit:#?}");
    assert_eq!(names.last(), Some(&row.state.as_str()), "{audit:#?}");
    assert!(
        names[4..names.len() - 1].iter().all(|n| ["retry", "attempt"].contains(n)),
        "after the restart only retries of the same request: {audit:#?}"
    );
    for a in audit.iter().filter(|a| a.event != "registered" && a.event != "recovered") {
        assert_eq!(a.provider_request_id.as_ref(), Some(&stored), "{a:#?}");
    }
}

/// The whole crash story: the provider carried out the request the daemon
/// never heard back about, and the restarted daemon's repeat is answered
/// from the provider's record instead of acting twice.
#[tokio::test]
async fn a_removal_carried_out_while_the_daemon_was_down_is_replayed_not_repeated() {
    let h = Harness::acs().await;
    let (call, participant) = ("call-crash-2", "8:acs:crash_user");
    let (id, stored) = crash_with_a_removal_in_flight(&h, call, participant).await;

    // The sandbox finishes the request the daemon will never hear about:
    // the participant is removed and the answer kept under the id.
    let first = wait_for("the sandbox to finish the interrupted request", SHORT, || async {
        h.sandbox.acs_requests_for(call).await.into_iter().next()
    })
    .await;
    assert_eq!((first.answer.as_str(), first.request_id.as_ref()), ("HTTP202", Some(&stored)));

    let _daemon = h.start_daemon().await;
    let row = h.wait_until_settled(std::slice::from_ref(&id), SHORT).await.remove(0);
    assert!(["enforced", "already_ended"].contains(&row.state.as_str()), "{row:#?}");
    assert_eq!(row.attempts, 2, "{row:#?}");

    // The restarted daemon resent the same request, and the sandbox answered
    // it from its record instead of acting again.
    let requests = h.sandbox.acs_requests_for(call).await;
    assert_eq!(requests.len(), 2, "{requests:#?}");
    for r in &requests {
        assert_eq!(r.request_id.as_ref(), Some(&stored), "resent under another id: {requests:#?}");
    }
    assert_eq!(requests[1].answer, "HTTP202 (repeat)", "{requests:#?}");
    let stats = h.sandbox.stats().await;
    assert!(stats.repeats_replayed >= 1, "{stats:#?}");
    assert_eq!(stats.participants_removed, 1, "{stats:#?}");

    let audit = h.audit_of(&id).await;
    let names: Vec<&str> = audit.iter().map(|a| a.event.as_str()).collect();
    assert_eq!(names, ["registered", "attempt", "recovered", "attempt", "enforced"], "{audit:#?}");
    assert_eq!(audit.last().and_then(|a| a.provider_request_id.as_ref()), Some(&stored));
}

#[tokio::test]
async fn a_call_that_already_ended_is_settled_after_one_request() {
    let h = Harness::acs().await;
    h.sandbox.end_call("ended-call-1").await;
    h.sandbox.end_call("ended-call-2").await;
    let _daemon = h.start_daemon().await;

    let removal = h
        .start_acs_session("acs-paid-chat", "ended-call-1", &["8:acs:late_user"], Some("1s"))
        .await
        .remove(0);
    let terminate = h.start_acs_session("acs-consultation", "ended-call-2", &[], Some("1s")).await.remove(0);

    for (id, call, action) in
        [(&removal, "ended-call-1", "RemoveParticipant"), (&terminate, "ended-call-2", "TerminateCall")]
    {
        let row = h.wait_for_state(id, "already_ended", SHORT).await;
        assert_eq!(row.attempts, 1, "{row:#?}");
        let audit = h.audit_of(id).await;
        assert!(events(&audit, "retry").is_empty(), "{audit:#?}");
        let ended = events(&audit, "already_ended");
        assert_eq!(ended.len(), 1, "{audit:#?}");
        assert_eq!(ended[0].http_status, Some(404), "{audit:#?}");
        assert_eq!(ended[0].error_code.as_deref(), Some("HTTP404/8522"), "{audit:#?}");
        assert_eq!(ended[0].outcome.as_deref(), Some("already_ended"));
        let calls = h.sandbox.acs_requests_for(call).await;
        assert_eq!(calls.len(), 1, "{calls:#?}");
        assert_eq!((calls[0].action.as_str(), calls[0].answer.as_str()), (action, "HTTP404"));
    }
    let stats = h.sandbox.stats().await;
    assert_eq!((stats.participants_removed, stats.calls_terminated), (0, 0), "{stats:#?}");
}

#[tokio::test]
async fn a_wrong_access_key_fails_the_session_after_one_request() {
    // Valid base64, but not the sandbox's key: every signature is wrong.
    let h = Harness::acs_signing_with("bm90LXRoZS1zYW5kYm94LWFjcy1hY2Nlc3Mta2V5LTE=").await;
    let _daemon = h.start_daemon().await;

    let id =
        h.start_acs_session("acs-paid-chat", "call-bad-key", &["8:acs:someone"], Some("1s")).await.remove(0);

    let row = h.wait_for_state(&id, "failed", SHORT).await;
    assert_eq!(row.attempts, 1, "{row:#?}");
    assert!(row.detail.as_deref().unwrap_or_default().contains("HTTP401"), "{row:#?}");
    let audit = h.audit_of(&id).await;
    assert_eq!(events(&audit, "attempt").len(), 1, "{audit:#?}");
    assert!(events(&audit, "retry").is_empty(), "{audit:#?}");
    let failed = events(&audit, "failed");
    assert_eq!(failed.len(), 1, "{audit:#?}");
    assert_eq!(failed[0].http_status, Some(401), "{audit:#?}");
    assert_eq!(failed[0].error_code.as_deref(), Some("HTTP401/7509"), "{audit:#?}");
    assert_eq!(failed[0].outcome.as_deref(), Some("fatal"));
    // No more requests come, however long one waits for a retry.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let calls = h.sandbox.acs_requests().await;
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0].answer, "HTTP401");
    assert_eq!(h.sandbox.stats().await.participants_removed, 0);
}

#[tokio::test]
async fn session_start_refuses_flags_that_do_not_fit_the_policy_and_inserts_nothing() {
    let h = Harness::acs().await;
    let refused: [(&[&str], &str); 6] = [
        (&["--policy", "consultation", "--call", "call-1"], "--room or --str-room"),
        (&["--policy", "acs-consultation", "--room", "12"], "--call"),
        (&["--policy", "acs-consultation", "--str-room", "abc"], "--call"),
        (&["--policy", "acs-paid-chat", "--call", "call-1", "--user", "alice"], "--user does not apply"),
        (&["--policy", "acs-paid-chat", "--call", "call-1"], "--participant"),
        (
            &["--policy", "paid-chat", "--room", "12", "--participant", "8:acs:x"],
            "--participant does not apply",
        ),
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

    // The same commands with fitting flags do insert: the checks above can fail.
    h.start_acs_session("acs-consultation", "call-1", &[], None).await;
    h.start_acs_session("acs-paid-chat", "call-1", &["8:acs:x", "+15550001111"], None).await;
    let rows = h.sessions().await;
    assert_eq!(rows.len(), 3, "{rows:#?}");
    for row in &rows {
        assert_eq!((row.room_kind.as_str(), row.room_id.as_str()), ("call", "call-1"), "{row:#?}");
        assert_eq!(row.provider.as_deref(), Some("acs"), "{row:#?}");
    }
}
