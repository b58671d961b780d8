//! Stopping the daemon in the middle of a burst: by SIGKILL (a crash) and by
//! SIGTERM (a clean stop). Either way a restart finishes the work, and no
//! room is dismissed twice.

use std::collections::HashMap;
use std::time::Duration;

use callwarden::sandbox::RequestRecord;

use crate::helpers::{FINAL_EVENTS, Harness, LONG, now_ms, wait_until};

/// Waits until the sandbox has answered `n` DismissRoom requests.
async fn wait_for_calls(h: &Harness, n: u64) {
    wait_until(&format!("{n} DismissRoom calls"), LONG, || async {
        h.sandbox.stats().await.requests_by_action.get("DismissRoom").copied().unwrap_or(0) >= n
    })
    .await;
}

/// Answers per room, for requests that named a room.
fn answers_by_room(requests: &[RequestRecord]) -> HashMap<String, Vec<String>> {
    let mut by_room: HashMap<String, Vec<String>> = HashMap::new();
    for r in requests {
        if let Some(room) = &r.room {
            by_room.entry(room.clone()).or_default().push(r.answer.clone());
        }
    }
    by_room
}

/// Every session has exactly one settling audit event.
async fn assert_one_final_event_each(h: &Harness, ids: &[String]) {
    for id in ids {
        let finals: Vec<String> = h
            .audit_of(id)
            .await
            .into_iter()
            .filter(|a| FINAL_EVENTS.contains(&a.event.as_str()))
            .map(|a| a.event)
            .collect();
        assert_eq!(finals.len(), 1, "session {id} settled {finals:?}");
    }
}

#[tokio::test]
async fn a_daemon_killed_mid_burst_finishes_after_restart_without_dismissing_a_room_twice() {
    let h = Harness::new().await;
    let mut daemon = h.start_daemon().await;
    let ids = h.insert_burst(9000..9080, now_ms() + 1_500).await;

    wait_for_calls(&h, 20).await;
    daemon.crash();
    let counts = h.state_counts().await;
    let unsettled = counts.get("active").unwrap_or(&0) + counts.get("enforcing").unwrap_or(&0);
    assert!(unsettled > 0, "the crash came too late to test anything: {counts:?}");

    let _daemon = h.start_daemon().await;
    let rows = h.wait_until_settled(&ids, LONG).await;

    let mut already_ended = Vec::new();
    for row in &rows {
        assert!(["enforced", "already_ended"].contains(&row.state.as_str()), "{row:#?}");
        if row.state == "already_ended" {
            already_ended.push(row.id.clone());
        }
    }
    assert_one_final_event_each(&h, &ids).await;
    let recovered = h.audit().await.into_iter().filter(|a| a.event == "recovered").count();
    assert!(recovered > 0, "the restart should have re-queued the interrupted sessions");
    // RoomNotExist only for a session whose earlier call went unrecorded.
    for id in &already_ended {
        let events: Vec<String> = h.audit_of(id).await.into_iter().map(|a| a.event).collect();
        assert!(events.contains(&"recovered".to_string()), "{id}: {events:?}");
    }

    let by_room = answers_by_room(&h.sandbox.api_requests().await);
    for room in 9000..9080 {
        let answers = &by_room[&room.to_string()];
        let successes = answers.iter().filter(|a| *a == "success").count();
        assert_eq!(successes, 1, "room {room}: {answers:?}");
        assert!(
            answers.iter().all(|a| a == "success" || a == "FailedOperation.RoomNotExist"),
            "room {room}: {answers:?}"
        );
    }
    assert_eq!(h.sandbox.stats().await.rooms_dismissed, 80);
    h.assert_never_early(None).await;
}

#[tokio::test]
async fn sigterm_mid_burst_stops_cleanly_and_a_restart_finishes_the_rest() {
    let h = Harness::new().await;
    let mut daemon = h.start_daemon().await;
    let ids = h.insert_burst(9100..9180, now_ms() + 1_500).await;

    wait_for_calls(&h, 20).await;
    daemon.terminate();
    let status = daemon.exit_status(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "logs:\n{}", daemon.logs());

    let counts = h.state_counts().await;
    assert_eq!(counts.get("enforcing"), None, "a clean stop leaves nothing enforcing: {counts:?}");
    let waiting: Vec<_> = h.sessions().await.into_iter().filter(|s| s.state == "active").collect();
    assert!(!waiting.is_empty(), "the stop came too late to test anything: {counts:?}");
    for s in &waiting {
        let events: Vec<String> = h.audit_of(&s.id).await.into_iter().map(|a| a.event).collect();
        assert_eq!(events.last().map(String::as_str), Some("interrupted"), "{}: {events:?}", s.id);
    }
    let calls_before_restart = h.sandbox.api_requests().await.len();

    let _daemon = h.start_daemon().await;
    for row in h.wait_until_settled(&ids, LONG).await {
        assert_eq!(row.state, "enforced", "{row:#?}");
    }
    assert!(h.sandbox.api_requests().await.len() > calls_before_restart);
    assert_one_final_event_each(&h, &ids).await;

    // Every answer of the first run was recorded, so no room was asked twice.
    let by_room = answers_by_room(&h.sandbox.api_requests().await);
    for room in 9100..9180 {
        assert_eq!(by_room[&room.to_string()], ["success"], "room {room}");
    }
    h.assert_never_early(None).await;
}

#[tokio::test]
async fn a_clean_stop_counts_no_attempt_for_calls_never_made() {
    let h = Harness::new().await;
    let mut daemon = h.start_daemon().await;
    h.insert_burst(9200..9280, now_ms() + 1_500).await;
    wait_for_calls(&h, 20).await;
    daemon.terminate();
    daemon.exit_status(Duration::from_secs(10)).await;

    // `sessions.attempts` is "provider calls made for this session so far"
    // (migrations/0001); a session the stop interrupted before its call
    // went out made none.
    let by_room = answers_by_room(&h.sandbox.api_requests().await);
    let waiting: Vec<_> = h.sessions().await.into_iter().filter(|s| s.state == "active").collect();
    assert!(!waiting.is_empty());
    for s in &waiting {
        let calls = by_room.get(&s.room_id).map_or(0, Vec::len);
        assert_eq!(s.attempts, calls as i64, "session {} in room {} (never called)", s.id, s.room_id);
    }
}
