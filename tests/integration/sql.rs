//! Sessions registered by another program writing the database with plain SQL.

use chrono::{FixedOffset, SecondsFormat, TimeZone, Utc};

use crate::helpers::DeadlineMs;
use crate::helpers::{Harness, SHORT, SqlSession, ms_of, now_ms, text_of};

const POLICY_MAX_MS: i64 = 30 * 60 * 1000;

#[tokio::test]
async fn rows_inserted_with_plain_sql_are_adopted_and_enforced() {
    let h = Harness::new().await;
    let clock = h.sandbox.clock().await;
    let _daemon = h.start_daemon().await;
    let now = now_ms();
    let started_long_ago = text_of(now - POLICY_MAX_MS + 1_500);
    // Same instant as now + 2 s, written in India's offset.
    let ist = FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
    let offset_deadline = Utc
        .timestamp_millis_opt(now + 2_000)
        .unwrap()
        .with_timezone(&ist)
        .to_rfc3339_opts(SecondsFormat::Millis, false);
    assert!(offset_deadline.ends_with("+05:30"));

    let ids = h
        .insert_sql(&[
            // No provider: the daemon fills it from the policy.
            SqlSession::dismiss(8001, now + 1_000),
            // No deadline: started_at + the policy's 30m.
            SqlSession {
                policy: "consultation".into(),
                room_id: "8002".into(),
                room_kind: "numeric".into(),
                started_at: Some(started_long_ago.clone()),
                ..SqlSession::default()
            },
            SqlSession {
                policy: "paid-chat".into(),
                room_id: "sql-8003".into(),
                room_kind: "string".into(),
                user_id: Some("erin".into()),
                deadline: Some(offset_deadline),
                ..SqlSession::default()
            },
        ])
        .await
        .expect("plain SQL inserts are accepted");

    let rows = h.wait_until_settled(&ids, SHORT).await;
    for row in &rows {
        assert_eq!(row.state, "enforced", "{row:#?}");
        assert_eq!(row.provider.as_deref(), Some("trtc"), "{row:#?}");
        let audit = h.audit_of(&row.id).await;
        let registered: Vec<_> = audit.iter().filter(|a| a.event == "registered").collect();
        assert_eq!(registered.len(), 1, "{audit:#?}");
        assert!(registered[0].detail.as_deref().unwrap_or_default().contains("inserted with SQL"));
        assert_eq!(audit.iter().filter(|a| a.event == "enforced").count(), 1, "{audit:#?}");
    }
    assert_eq!(rows[0].deadline.as_deref(), Some(text_of(now + 1_000).as_str()));
    assert_eq!(rows[1].started_at, started_long_ago);
    assert_eq!(rows[1].deadline_ms(), ms_of(&started_long_ago) + POLICY_MAX_MS);
    assert_eq!(rows[2].deadline.as_deref(), Some(text_of(now + 2_000).as_str()), "stored as UTC");
    h.assert_never_early(Some(clock)).await;

    let calls = h.sandbox.requests_for("sql-8003").await;
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(
        (calls[0].action.as_str(), calls[0].users.as_slice()),
        ("RemoveUserByStrRoomId", &["erin".to_string()][..])
    );
}

#[tokio::test]
async fn rows_the_daemon_cannot_schedule_are_rejected_and_malformed_times_refused() {
    let h = Harness::new().await;
    let _daemon = h.start_daemon().await;
    let now = now_ms();
    let ids = h
        .insert_sql(&[
            SqlSession { policy: "no-such-policy".into(), ..SqlSession::dismiss(8101, now + 500) },
            // A remove_user policy needs a user.
            SqlSession { policy: "paid-chat".into(), ..SqlSession::dismiss(8102, now + 500) },
            // A dismiss_room policy takes none.
            SqlSession { user_id: Some("alice".into()), ..SqlSession::dismiss(8106, now + 500) },
            // Due after the others: once enforced, they had their chance.
            SqlSession::dismiss(8103, now + 1_500),
        ])
        .await
        .unwrap();

    for (id, reason) in
        [(&ids[0], "unknown policy \"no-such-policy\""), (&ids[1], "no user_id"), (&ids[2], "names a user")]
    {
        let row = h.wait_for_state(id, "failed", SHORT).await;
        assert!(row.detail.as_deref().unwrap_or_default().contains(reason), "{row:#?}");
        let audit = h.audit_of(id).await;
        let events: Vec<&str> = audit.iter().map(|a| a.event.as_str()).collect();
        assert_eq!(events, ["rejected"], "{audit:#?}");
        assert!(audit[0].detail.as_deref().unwrap_or_default().contains(reason), "{audit:#?}");
    }
    h.wait_for_state(&ids[3], "enforced", SHORT).await;
    let rooms: Vec<String> =
        h.sandbox.api_requests().await.into_iter().map(|r| r.room.unwrap_or_default()).collect();
    assert_eq!(rooms, ["8103"], "rejected rows must not be enforced");

    // The schema refuses times SQLite cannot read.
    for bad in [
        SqlSession { deadline: Some("half past never".into()), ..SqlSession::dismiss(8104, now) },
        SqlSession { started_at: Some("2026-13-45T99:00:00Z".into()), ..SqlSession::dismiss(8105, now) },
    ] {
        let err = h.insert_sql(std::slice::from_ref(&bad)).await.expect_err("a malformed time is refused");
        assert!(err.to_string().contains("CHECK constraint failed"), "{bad:?}: {err}");
    }
    assert_eq!(h.sessions().await.len(), 4);
}
