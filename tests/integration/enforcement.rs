//! Deadlines reached with the daemon running: on time, paced, batched,
//! retried when it helps, not retried when it cannot.

use std::collections::BTreeSet;

use callwarden::sandbox::Fault;
use serde_json::json;

use crate::helpers::RoomArg::{Num, Str};
use crate::helpers::{AuditRow, Harness, LONG, SHORT, now_ms};

fn events(rows: &[AuditRow], event: &str) -> Vec<AuditRow> {
    rows.iter().filter(|a| a.event == event).cloned().collect()
}

#[tokio::test]
async fn sessions_are_enforced_on_time_with_the_action_their_room_needs() {
    let h = Harness::new().await;
    let clock = h.sandbox.clock().await;
    let _daemon = h.start_daemon().await;

    let dismiss_numeric = h.start_session("consultation", Num(1234), &[], Some("1s")).await;
    let dismiss_string = h.start_session("consultation", Str("consult-42"), &[], Some("2s")).await;
    let remove_numeric = h.start_session("paid-chat", Num(5678), &["alice", "bob"], Some("2s")).await;
    let remove_string = h.start_session("paid-chat", Str("chat-7"), &["carol"], Some("3s")).await;
    let all: Vec<String> = [&dismiss_numeric, &dismiss_string, &remove_numeric, &remove_string]
        .into_iter()
        .flatten()
        .cloned()
        .collect();

    for row in h.wait_until_settled(&all, SHORT).await {
        assert_eq!(row.state, "enforced", "{row:#?}");
        assert_eq!(row.attempts, 1, "{row:#?}");
    }
    h.assert_never_early(Some(clock)).await;

    // One call per room, named for the room's kind; the sandbox answers
    // success only when RoomId has the type the action requires.
    let calls: BTreeSet<(String, String, Vec<String>, String)> = h
        .sandbox
        .api_requests()
        .await
        .into_iter()
        .map(|r| {
            let mut users = r.users;
            users.sort();
            (r.action, r.room.unwrap_or_default(), users, r.answer)
        })
        .collect();
    let expected: BTreeSet<(String, String, Vec<String>, String)> = [
        ("DismissRoom", "1234", vec![]),
        ("DismissRoomByStrRoomId", "consult-42", vec![]),
        ("RemoveUser", "5678", vec!["alice".to_string(), "bob".to_string()]),
        ("RemoveUserByStrRoomId", "chat-7", vec!["carol".to_string()]),
    ]
    .into_iter()
    .map(|(action, room, users)| (action.to_string(), room.to_string(), users, "success".to_string()))
    .collect();
    assert_eq!(calls, expected);
    let stats = h.sandbox.stats().await;
    let api_calls: u64 = callwarden::providers::trtc::ACTIONS
        .iter()
        .map(|a| stats.requests_by_action.get(*a).copied().unwrap_or(0))
        .sum();
    assert_eq!(api_calls, 4, "{stats:#?}");
    assert_eq!((stats.rooms_dismissed, stats.users_removed), (2, 3), "{stats:#?}");

    // The audit log names the same action for each session, once.
    for (ids, action) in [
        (&dismiss_numeric, "DismissRoom"),
        (&dismiss_string, "DismissRoomByStrRoomId"),
        (&remove_numeric, "RemoveUser"),
        (&remove_string, "RemoveUserByStrRoomId"),
    ] {
        for id in ids {
            let enforced = events(&h.audit_of(id).await, "enforced");
            assert_eq!(enforced.len(), 1, "{enforced:#?}");
            assert_eq!(enforced[0].action.as_deref(), Some(action));
            assert_eq!(enforced[0].outcome.as_deref(), Some("success"));
            assert!(enforced[0].provider_request_id.is_some(), "{enforced:#?}");
        }
    }
}

#[tokio::test]
async fn a_burst_drains_at_the_quota_without_errors_and_earlier_deadlines_go_first() {
    let h = Harness::new().await;
    let clock = h.sandbox.clock().await;
    let _daemon = h.start_daemon().await;

    let t0 = now_ms();
    // Registered first, due last: 80 sessions in one instant.
    let burst = h.insert_burst(1000..1080, t0 + 2_500).await;
    // Registered later, due half a second earlier.
    let earlier = h.insert_burst(2000..2020, t0 + 2_000).await;
    let all: Vec<String> = burst.iter().chain(&earlier).cloned().collect();

    for row in h.wait_until_settled(&all, LONG).await {
        assert_eq!(row.state, "enforced", "{row:#?}");
    }
    h.assert_never_early(Some(clock)).await;

    let stats = h.sandbox.stats().await;
    assert_eq!(stats.rate_limited, 0, "{stats:#?}");
    assert!(stats.max_per_second <= 20, "{stats:#?}");
    assert_eq!(stats.requests_by_action.get("DismissRoom"), Some(&100), "{stats:#?}");
    assert_eq!(stats.answers.get("success"), Some(&100), "{stats:#?}");
    assert_eq!(stats.rooms_dismissed, 100, "{stats:#?}");
    // It used the quota rather than trickling.
    assert!(stats.max_per_second_by_action["DismissRoom"] >= 10, "{stats:#?}");

    // Every call for the earlier deadline went out before any for the later one.
    let rooms: Vec<u32> = h
        .sandbox
        .api_requests()
        .await
        .iter()
        .map(|r| r.room.as_deref().unwrap_or_default().parse().unwrap())
        .collect();
    let last_earlier = rooms.iter().rposition(|r| *r >= 2000).unwrap();
    let first_burst = rooms.iter().position(|r| *r < 2000).unwrap();
    assert!(last_earlier < first_burst, "calls out of deadline order: {rooms:?}");
}

#[tokio::test]
async fn removals_in_one_room_are_batched_ten_users_per_call() {
    let h = Harness::new().await;
    let _daemon = h.start_daemon().await;
    let users: Vec<String> = (1..=25).map(|i| format!("user-{i:02}")).collect();
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();

    let ids = h.start_session("paid-chat", Num(3001), &user_refs, Some("1s")).await;

    for row in h.wait_until_settled(&ids, SHORT).await {
        assert_eq!(row.state, "enforced", "{row:#?}");
    }
    let calls = h.sandbox.requests_for("3001").await;
    assert_eq!(calls.len(), 3, "{calls:#?}");
    let mut removed = Vec::new();
    for call in &calls {
        assert_eq!((call.action.as_str(), call.answer.as_str()), ("RemoveUser", "success"));
        assert!((1..=10).contains(&call.users.len()), "{call:#?}");
        removed.extend(call.users.iter().cloned());
    }
    removed.sort();
    assert_eq!(removed, users, "each user removed exactly once");
    assert_eq!(h.sandbox.stats().await.users_removed, 25);
    for id in &ids {
        assert_eq!(events(&h.audit_of(id).await, "enforced").len(), 1);
    }
    h.assert_never_early(None).await;
}

#[tokio::test]
async fn retryable_errors_are_retried_until_the_call_goes_through() {
    let h = Harness::new().await;
    h.sandbox
        .inject(Fault {
            room: Some("4001".into()),
            code: Some("InternalError".into()),
            times: Some(2),
            ..Fault::default()
        })
        .await;
    h.sandbox
        .inject(Fault {
            action: Some("DismissRoom".into()),
            room: Some("4002".into()),
            http_status: Some(502),
            times: Some(1),
            ..Fault::default()
        })
        .await;
    let _daemon = h.start_daemon().await;

    let internal = h.start_session("consultation", Num(4001), &[], Some("1s")).await.remove(0);
    let bad_gateway = h.start_session("consultation", Num(4002), &[], Some("1s")).await.remove(0);

    let row = h.wait_for_state(&internal, "enforced", SHORT).await;
    assert_eq!(row.attempts, 3);
    let audit = h.audit_of(&internal).await;
    let attempts: Vec<_> = events(&audit, "attempt").iter().map(|a| a.attempt).collect();
    assert_eq!(attempts, [Some(1), Some(2), Some(3)]);
    let retries = events(&audit, "retry");
    assert_eq!(retries.len(), 2, "{audit:#?}");
    for (i, retry) in retries.iter().enumerate() {
        assert_eq!(retry.attempt, Some(i as i64 + 1));
        assert_eq!(retry.error_code.as_deref(), Some("InternalError"));
        assert_eq!(retry.outcome.as_deref(), Some("retryable"));
    }
    let enforced = events(&audit, "enforced");
    assert_eq!(enforced.len(), 1);
    assert_eq!(enforced[0].attempt, Some(3));
    let answers: Vec<String> = h.sandbox.requests_for("4001").await.into_iter().map(|r| r.answer).collect();
    assert_eq!(answers, ["InternalError", "InternalError", "success"]);

    let row = h.wait_for_state(&bad_gateway, "enforced", SHORT).await;
    assert_eq!(row.attempts, 2);
    let audit = h.audit_of(&bad_gateway).await;
    let retries = events(&audit, "retry");
    assert_eq!(retries.len(), 1, "{audit:#?}");
    assert_eq!(retries[0].http_status, Some(502));
    assert_eq!(retries[0].error_code.as_deref(), Some("HTTP502"));
    assert_eq!(events(&audit, "enforced")[0].attempt, Some(2));
    let answers: Vec<String> = h.sandbox.requests_for("4002").await.into_iter().map(|r| r.answer).collect();
    assert_eq!(answers, ["HTTP502", "success"]);

    // `audit --session ID --format json` tells the same story as the table.
    let out = h.cli(&["audit", "--session", &internal, "--format", "json"]).await.expect_ok("audit");
    let cli_events: Vec<String> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].as_str().unwrap().to_string())
        .collect();
    let sql_events: Vec<String> = h.audit_of(&internal).await.into_iter().map(|a| a.event).collect();
    assert_eq!(cli_events, sql_events);
    assert_eq!(cli_events, ["registered", "attempt", "retry", "attempt", "retry", "attempt", "enforced"]);
    h.assert_never_early(None).await;
}

#[tokio::test]
async fn a_room_that_already_ended_is_settled_after_one_call() {
    let h = Harness::new().await;
    h.sandbox.end_room(json!(5001)).await;
    h.sandbox.end_room(json!("gone-5002")).await;
    let _daemon = h.start_daemon().await;

    let numeric = h.start_session("consultation", Num(5001), &[], Some("1s")).await.remove(0);
    let string = h.start_session("paid-chat", Str("gone-5002"), &["dave"], Some("1s")).await.remove(0);

    for (id, room, action) in
        [(&numeric, "5001", "DismissRoom"), (&string, "gone-5002", "RemoveUserByStrRoomId")]
    {
        let row = h.wait_for_state(id, "already_ended", SHORT).await;
        assert_eq!(row.attempts, 1, "{row:#?}");
        let audit = h.audit_of(id).await;
        assert!(events(&audit, "retry").is_empty(), "{audit:#?}");
        let ended = events(&audit, "already_ended");
        assert_eq!(ended.len(), 1, "{audit:#?}");
        assert_eq!(ended[0].error_code.as_deref(), Some("FailedOperation.RoomNotExist"));
        assert_eq!(ended[0].outcome.as_deref(), Some("already_ended"));
        let calls = h.sandbox.requests_for(room).await;
        assert_eq!(calls.len(), 1, "{calls:#?}");
        assert_eq!(
            (calls[0].action.as_str(), calls[0].answer.as_str()),
            (action, "FailedOperation.RoomNotExist")
        );
    }
    let stats = h.sandbox.stats().await;
    assert_eq!((stats.rooms_dismissed, stats.users_removed), (0, 0), "{stats:#?}");
}

#[tokio::test]
async fn a_signature_failure_fails_the_session_without_retrying() {
    let h = Harness::signing_with("not-the-sandbox-secret-key").await;
    let _daemon = h.start_daemon().await;

    let id = h.start_session("consultation", Num(6001), &[], Some("1s")).await.remove(0);

    let row = h.wait_for_state(&id, "failed", SHORT).await;
    assert_eq!(row.attempts, 1);
    assert!(row.detail.as_deref().unwrap_or_default().contains("AuthFailure.SignatureFailure"), "{row:#?}");
    let audit = h.audit_of(&id).await;
    assert_eq!(events(&audit, "attempt").len(), 1, "{audit:#?}");
    assert!(events(&audit, "retry").is_empty(), "{audit:#?}");
    let failed = events(&audit, "failed");
    assert_eq!(failed.len(), 1, "{audit:#?}");
    assert_eq!(failed[0].error_code.as_deref(), Some("AuthFailure.SignatureFailure"));
    assert_eq!(failed[0].outcome.as_deref(), Some("fatal"));
    let calls = h.sandbox.api_requests().await;
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0].answer, "AuthFailure.SignatureFailure");
}
