//! Hardening (issue 12): one bad row never stops the others, a presence
//! event whose apply fails is applied when the provider retries it, one
//! daemon per database, stale work expires instead of cutting a reused room,
//! and inputs that would overflow are refused with the field.

use serde_json::json;

use callwarden::sandbox::SANDBOX_SDK_APP_ID;

use crate::helpers::{
    Client, Harness, Listener, SHORT, SqlSession, TRTC_CALLBACK_KEY, now_ms, run_cli, text_of,
};

/// A row's state and detail, read without decoding the whole row (a row
/// with a BLOB where text belongs cannot be read as a session).
async fn state_and_detail(h: &Harness, id: &str) -> (String, Option<String>) {
    sqlx::query_as("SELECT state, detail FROM sessions WHERE id = ?")
        .bind(id)
        .fetch_one(h.db().await)
        .await
        .unwrap()
}

async fn wait_for_raw_state(h: &Harness, id: &str, state: &str) -> Option<String> {
    crate::helpers::wait_for(&format!("row {id} to become {state}"), SHORT, || async {
        let (now, detail) = state_and_detail(h, id).await;
        (now == state).then_some(detail)
    })
    .await
}

#[tokio::test]
async fn rows_the_daemon_cannot_read_are_failed_alone_and_the_others_enforced() {
    let h = Harness::new().await;
    let now = now_ms();
    let db = h.db().await;
    // Adoption: a BLOB user id (a Python app binding bytes), text in an
    // integer column, a start so late its deadline would pass the year 9999.
    let mut bad = Vec::new();
    for (sql, what) in [
        (
            "INSERT INTO sessions (policy, room_id, room_kind, user_id) \
             VALUES ('paid-chat', 'poison-1', 'string', X'616C696365') RETURNING id",
            "a BLOB user_id",
        ),
        (
            "INSERT INTO sessions (policy, room_id, room_kind, grace_ms) \
             VALUES ('consultation', '7101', 'numeric', 'soon') RETURNING id",
            "text in grace_ms",
        ),
        (
            "INSERT INTO sessions (policy, room_id, room_kind, started_at) \
             VALUES ('consultation', '7102', 'numeric', '9999-12-31T23:59:00.000Z') RETURNING id",
            "a deadline past the year 9999",
        ),
    ] {
        let id: String =
            sqlx::query_scalar(sql).fetch_one(db).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        bad.push((id, what));
    }
    // Claiming: a due row, already adopted, with text in `attempts`.
    let claimed_bad: String = sqlx::query_scalar(
        "INSERT INTO sessions (policy, provider, room_id, room_kind, deadline, attempts) \
         VALUES ('consultation', 'trtc', '7103', 'numeric', ?, 'many') RETURNING id",
    )
    .bind(text_of(now + 1_000))
    .fetch_one(db)
    .await
    .unwrap();
    bad.push((claimed_bad, "text in attempts, claimed with good rows"));
    // Good rows due with it, and after it.
    let good = h
        .insert_sql(&[
            SqlSession::dismiss(7201, now + 1_000),
            SqlSession::dismiss(7202, now + 1_000),
            SqlSession::dismiss(7203, now + 1_500),
        ])
        .await
        .unwrap();

    let daemon = h.start_daemon().await;
    h.wait_until_settled(&good, SHORT).await;
    for id in &good {
        assert_eq!(h.session(id).await.state, "enforced");
    }
    for (id, what) in &bad {
        let detail = wait_for_raw_state(&h, id, "failed").await.unwrap_or_default();
        assert!(!detail.is_empty(), "{what}: no reason given");
        let audit = h.audit_of(id).await;
        let events: Vec<&str> = audit.iter().map(|a| a.event.as_str()).collect();
        assert_eq!(events, ["rejected"], "{what}: {audit:#?}");
    }
    let rooms: Vec<String> = h.sandbox.api_requests().await.into_iter().filter_map(|r| r.room).collect();
    assert!(rooms.iter().all(|r| r.starts_with("72")), "a bad row was called: {rooms:?}");
    assert_eq!(h.state_counts().await.get("enforcing"), None, "nothing stranded");
    drop(daemon);
}

#[tokio::test]
async fn plain_sql_cannot_write_a_session_id_that_is_not_text() {
    let h = Harness::new().await;
    let refused = sqlx::query(
        "INSERT INTO sessions (id, policy, room_id, room_kind) VALUES (X'00', 'consultation', '1', 'numeric')",
    )
    .execute(h.db().await)
    .await
    .expect_err("a BLOB id is refused");
    assert!(refused.to_string().contains("sessions.id must be text"), "{refused}");
}

/// A TRTC "entered" callback for the participant policy of this file's
/// config, signed.
fn entered(room: &str, user: &str, at_ms: i64) -> (String, String) {
    let body = json!({
        "EventGroupId": 1, "EventType": 103, "CallbackTs": now_ms(),
        "EventInfo": { "RoomId": room, "EventTs": at_ms / 1000, "EventMsTs": at_ms, "UserId": user, "Role": 20 }
    })
    .to_string();
    let sign = callwarden::providers::trtc::callback_signature(TRTC_CALLBACK_KEY, body.as_bytes());
    (body, sign)
}

async fn post_trtc(hooks: &Client, body: &str, sign: &str) -> u16 {
    let request = hooks
        .request(reqwest::Method::POST, "/webhooks/trtc")
        .header("Content-Type", "application/json")
        .header("Sign", sign)
        .header("SdkAppId", SANDBOX_SDK_APP_ID.to_string())
        .body(body.to_string());
    Client::send(request).await.status
}

/// A daemon taking TRTC callbacks for a participant policy on `chat-*`
/// rooms, and a client for its webhooks.
async fn trtc_participants() -> (Harness, crate::helpers::Daemon, Client) {
    let policies = "  people: { provider: trtc, match: { room: 'chat-*' }, scope: participant,\n\
                    \x20           max_duration: 20m, action: remove_user }\n";
    let h = Harness::http(Listener { trtc: true, ..Listener::default() }, policies).await;
    let daemon = h.start_daemon().await;
    let hooks = Client::new(&daemon.http_url().await).with_token(None);
    (h, daemon, hooks)
}

#[tokio::test]
async fn a_presence_event_whose_apply_fails_is_applied_when_the_provider_retries_it() {
    let (h, _daemon, hooks) = trtc_participants().await;
    // The apply step fails once: a trigger refuses the session insert
    // while `fail_next` has a row (a full disk or a lock would do the same).
    let db = h.db().await;
    for sql in [
        "CREATE TABLE fail_next (x INTEGER)",
        "INSERT INTO fail_next VALUES (1)",
        "CREATE TRIGGER fail_once BEFORE INSERT ON sessions WHEN (SELECT count(*) FROM fail_next) > 0 \
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    ] {
        sqlx::query(sql).execute(db).await.unwrap();
    }
    let (body, sign) = entered("chat-9", "alice", now_ms());
    assert_eq!(post_trtc(&hooks, &body, &sign).await, 503, "a failed apply is not acknowledged");
    assert!(h.sessions().await.is_empty());
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM presence").fetch_one(db).await.unwrap();
    assert_eq!(seen, 0, "the event must not be marked seen");

    sqlx::query("DELETE FROM fail_next").execute(db).await.unwrap();
    assert_eq!(post_trtc(&hooks, &body, &sign).await, 200);
    let rows = h.sessions().await;
    assert_eq!(rows.len(), 1, "the retried delivery opens the session: {rows:#?}");
    assert_eq!((rows[0].user_id.as_deref(), rows[0].state.as_str()), (Some("alice"), "active"));
    // And a third delivery is a duplicate.
    assert_eq!(post_trtc(&hooks, &body, &sign).await, 200);
    assert_eq!(h.sessions().await.len(), 1);
}

#[tokio::test]
async fn a_replayed_or_far_future_webhook_event_opens_nothing() {
    let (h, _daemon, hooks) = trtc_participants().await;
    // A signed callback captured two hours ago and sent again, and one from
    // a clock an hour ahead: acknowledged (so TRTC stops retrying), not applied.
    for at in [now_ms() - 2 * 3600 * 1000, now_ms() + 3600 * 1000] {
        let (body, sign) = entered("chat-7", "mallory", at);
        assert_eq!(post_trtc(&hooks, &body, &sign).await, 200);
    }
    assert!(h.sessions().await.is_empty(), "a stale event opened a session");
    let (body, sign) = entered("chat-7", "alice", now_ms());
    assert_eq!(post_trtc(&hooks, &body, &sign).await, 200);
    assert_eq!(h.sessions().await.len(), 1);
}

#[tokio::test]
async fn a_second_daemon_on_the_same_database_refuses_to_start_and_touches_nothing() {
    let h = Harness::new().await;
    let now = now_ms();
    // Due later than the test lasts: enforcing only if someone claims early.
    let ids = h.insert_sql(&[SqlSession::dismiss(7301, now + 600_000)]).await.unwrap();
    let first = h.start_daemon().await;
    crate::helpers::wait_for("the first daemon to adopt the row", SHORT, || async {
        h.session(&ids[0]).await.provider.is_some().then_some(())
    })
    .await;
    let audit_before = h.audit().await.len();
    let out = run_cli(&h.config, &["run"]).await;
    assert!(!out.ok(), "a second daemon started: {out:?}");
    assert!(out.stderr.contains("another callwarden daemon is running on it"), "{}", out.stderr);
    assert!(out.stderr.contains("pid "), "the holder is named: {}", out.stderr);
    assert_eq!(h.audit().await.len(), audit_before, "the second daemon wrote to the database");
    // Logs to a pipe (as to journald) carry no colour codes.
    let logs = first.logs();
    assert!(logs.contains("INFO"), "{logs}");
    assert!(!logs.contains('\u{1b}') && !out.stderr.contains('\u{1b}'), "ANSI codes in logs: {logs:?}");
}

#[tokio::test]
async fn a_session_overdue_past_stale_after_expires_instead_of_calling() {
    let h = Harness::new().await;
    let now = now_ms();
    // consultation keeps the default stale_after (10 minutes).
    let ids = h
        .insert_sql(&[SqlSession::dismiss(7401, now - 20 * 60_000), SqlSession::dismiss(7402, now - 60_000)])
        .await
        .unwrap();
    // A close of room 7403 reported after its session started (recorded
    // while the session was under way, say): settled without a call.
    let closing = h.insert_sql(&[SqlSession::dismiss(7403, now + 500)]).await.unwrap();
    sqlx::query(
        "INSERT INTO presence (provider, room_kind, room_id, participant, last_event_ms, last_event) \
         VALUES ('trtc', 'numeric', '7403', '', ?, 'closed')",
    )
    .bind(now + 100)
    .execute(h.db().await)
    .await
    .unwrap();
    let _daemon = h.start_daemon().await;
    let expired = h.wait_for_state(&ids[0], "expired", SHORT).await;
    assert!(expired.detail.as_deref().unwrap_or_default().contains("stale_after"), "{expired:#?}");
    let audit = h.audit_of(&ids[0]).await;
    let last = audit.last().unwrap();
    assert_eq!(last.event, "expired", "{audit:#?}");
    assert!(last.lateness_ms.unwrap_or_default() >= 20 * 60_000, "{last:#?}");
    h.wait_for_state(&ids[1], "enforced", SHORT).await;
    let ended = h.wait_for_state(&closing[0], "already_ended", SHORT).await;
    assert!(ended.detail.as_deref().unwrap_or_default().contains("closed"), "{ended:#?}");
    let rooms: Vec<String> = h.sandbox.api_requests().await.into_iter().filter_map(|r| r.room).collect();
    assert_eq!(rooms, ["7402"], "only the fresh session is called");
}

#[tokio::test]
async fn registrations_that_would_overflow_or_widen_are_refused_with_the_field() {
    let h = Harness::http(Listener { api: true, ..Listener::default() }, "").await;
    let daemon = h.start_daemon().await;
    let api = Client::new(&daemon.http_url().await);
    let long_ago = text_of(now_ms() - 8 * 24 * 3600 * 1000);
    let far_ahead = text_of(now_ms() + 2 * 24 * 3600 * 1000);
    for (body, field) in [
        (json!({"policy": "consultation", "room": 1, "started_at": "9999-12-31T23:59:00Z"}), "started_at"),
        (json!({"policy": "consultation", "room": 1, "started_at": long_ago}), "started_at"),
        (json!({"policy": "consultation", "room": 1, "started_at": far_ahead}), "started_at"),
        // A user on a whole-room policy would dismiss everyone at their deadline.
        (json!({"policy": "consultation", "room": 1, "user": "alice"}), "user"),
    ] {
        let reply = api.post("/v1/sessions", &body).await;
        reply.expect(422, &body.to_string());
        assert_eq!(reply.json["error"]["field"], field, "{body}: {reply:#?}");
    }
    let made = api.post("/v1/sessions", &json!({"policy": "consultation", "room": 2})).await;
    made.expect(201, "a plain registration");
    let id = made.json["id"].as_str().unwrap().to_string();
    for by in ["10000y", "8d", "0s"] {
        let reply = api.post(&format!("/v1/sessions/{id}/extend"), &json!({ "by": by })).await;
        reply.expect(422, by);
        assert_eq!(reply.json["error"]["field"], "by", "{by}: {reply:#?}");
    }
    assert_eq!(h.sessions().await.len(), 1);
}

#[tokio::test]
async fn reading_commands_never_create_or_migrate_the_database() {
    let h = Harness::new().await;
    let out = run_cli(&h.config, &["session", "list"]).await;
    assert!(!out.ok() && out.stderr.contains("no such file"), "{out:?}");
    assert!(!h.db_path.exists(), "session list created the database");

    let db = h.db().await;
    let latest: i64 =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations").fetch_one(db).await.unwrap();
    // A newer callwarden migrated it: every reading command refuses.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                 VALUES (9999, 'from the future', 1, X'00', 0)",
    )
    .execute(db)
    .await
    .unwrap();
    let backup = h.db_path.with_extension("backup");
    let backup_arg = backup.to_string_lossy().into_owned();
    for args in [vec!["session", "list"], vec!["audit"], vec!["audit", "verify"], vec!["backup", &backup_arg]]
    {
        let out = run_cli(&h.config, &args).await;
        assert!(!out.ok() && out.stderr.contains("newer than"), "{args:?}: {out:?}");
    }
    // An older schema: reading commands refuse, backup works, nothing is migrated.
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version >= ?").bind(latest).execute(db).await.unwrap();
    let out = run_cli(&h.config, &["audit"]).await;
    assert!(!out.ok() && out.stderr.contains("older than"), "{out:?}");
    run_cli(&h.config, &["backup", &backup_arg]).await.expect_ok("backup of an older schema");
    let now: i64 =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations").fetch_one(db).await.unwrap();
    assert_eq!(now, latest - 1, "a reading command migrated the database");
}
