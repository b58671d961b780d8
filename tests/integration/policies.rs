//! Policies beyond a timer (#5), through the real daemon and sandbox:
//! warnings and outcome notifications to a receiver in the test, grace,
//! extension limits that move the warnings, per-user budgets, and hot reload.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::helpers::DeadlineMs;
use crate::helpers::*;

const NOTIFY_SECRET: &str = "notify-secret-0123456789";

/// One POST the receiver took.
#[derive(Debug, Clone)]
struct Delivery {
    at_ms: i64,
    headers: HeaderMap,
    raw: String,
    body: serde_json::Value,
    /// What the receiver answered.
    status: u16,
}

impl Delivery {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    fn event(&self) -> &str {
        self.body["event"].as_str().unwrap_or("")
    }
    fn room(&self) -> &str {
        self.body["session"]["room_id"].as_str().unwrap_or("")
    }
}

/// How the receiver answers a delivery.
type Answer = Arc<dyn Fn(&serde_json::Value, u32) -> StatusCode + Send + Sync>;

#[derive(Clone)]
struct ReceiverState {
    log: Arc<Mutex<Vec<Delivery>>>,
    /// Attempts seen per delivery id.
    seen: Arc<Mutex<HashMap<String, u32>>>,
    answer: Answer,
}

/// The app's backend: records every notification and answers as told.
struct Receiver {
    url: String,
    log: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    async fn start(answer: Answer) -> Receiver {
        let state = ReceiverState { log: Arc::default(), seen: Arc::default(), answer };
        let log = Arc::clone(&state.log);
        let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url: format!("http://{addr}/hook"), log }
    }

    async fn ok() -> Receiver {
        Receiver::start(Arc::new(|_, _| StatusCode::NO_CONTENT)).await
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.log.lock().unwrap().clone()
    }

    /// Accepted deliveries of `event` about `room`, in arrival order.
    fn accepted(&self, event: &str, room: &str) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|d| d.event() == event && d.room() == room && (200..300).contains(&d.status))
            .collect()
    }
}

async fn receive(State(state): State<ReceiverState>, headers: HeaderMap, body: String) -> StatusCode {
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    let id = headers.get("callwarden-delivery").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let attempt = {
        let mut seen = state.seen.lock().unwrap();
        let n = seen.entry(id).or_default();
        *n += 1;
        *n
    };
    let status = (state.answer)(&json, attempt);
    state.log.lock().unwrap().push(Delivery {
        at_ms: now_ms(),
        headers,
        raw: body,
        body: json,
        status: status.as_u16(),
    });
    status
}

/// Checks `Callwarden-Signature: t=..,v1=..` against the shared secret.
fn assert_signed(d: &Delivery) {
    let sig = d.header("callwarden-signature");
    let (t, v1) = sig
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("malformed signature header {sig:?}"));
    let mut mac = Hmac::<Sha256>::new_from_slice(NOTIFY_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", d.raw).as_bytes());
    assert_eq!(v1, hex::encode(mac.finalize().into_bytes()), "signature of {}", d.raw);
    let t: i64 = t.parse().unwrap();
    assert!((t * 1000 - d.at_ms).abs() < 5_000, "signature time {t} far from arrival {}", d.at_ms);
}

/// The base config (TRTC + ACS on the sandbox, the session API) with
/// `policies` added and notifications going to `receiver`.
async fn harness(receiver: &Receiver, policies: &str) -> Harness {
    let url = receiver.url.clone();
    Harness::with_config(|db, sandbox| {
        let mut text = http_config_text(db, sandbox, Listener { api: true, ..Listener::default() }, policies);
        text.push_str(&format!("notifications:\n  url: {url}\n  secret: {NOTIFY_SECRET}\n"));
        text
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn warnings_arrive_signed_in_order_before_the_deadline_and_the_cut_waits_for_grace() {
    let receiver = Receiver::ok().await;
    let h = harness(
        &receiver,
        "  warned:\n    provider: trtc\n    max_duration: 6s\n    warn_before: [2s, 4s]\n    grace: 1500ms\n    action: dismiss_room\n",
    )
    .await;
    let _daemon = h.start_daemon().await;
    let started = now_ms();
    let id = h.start_session("warned", RoomArg::Num(7101), &[], None).await.remove(0);
    let session = h.session(&id).await;
    let booked_end = session.deadline_ms() - 1500;
    assert!((booked_end - started - 6000).abs() < 1000, "booked end 6 s after the start");

    h.wait_for_state(&id, "enforced", SHORT).await;
    let warnings = receiver.accepted("warning", "7101");
    assert_eq!(warnings.len(), 2, "one delivery per warning point: {warnings:?}");
    let before: Vec<i64> = warnings.iter().map(|d| d.body["warn_before_ms"].as_i64().unwrap()).collect();
    assert_eq!(before, vec![4000, 2000], "the earlier warning first");
    for d in &warnings {
        assert_signed(d);
        assert_eq!(d.header("callwarden-event"), "warning");
        assert_eq!(d.body["session_id"], id.as_str());
        let due = booked_end - d.body["warn_before_ms"].as_i64().unwrap();
        assert!(d.at_ms >= due - 50, "a warning arrived {} ms before its point", due - d.at_ms);
        assert!(d.at_ms < booked_end, "a warning arrived after the booked time");
        let remaining = d.body["remaining_ms"].as_i64().unwrap();
        let meant = d.body["warn_before_ms"].as_i64().unwrap();
        assert!(
            remaining <= meant + 50 && remaining > meant - 1000,
            "remaining {remaining} ms for a {meant} ms warning"
        );
    }
    assert_ne!(warnings[0].header("callwarden-delivery"), warnings[1].header("callwarden-delivery"));

    // Enforcement waited for the grace, then the app heard why the call ended.
    let calls = h.sandbox.requests_for("7101").await;
    let clock = h.sandbox.clock().await;
    assert_eq!(calls.len(), 1);
    assert!(clock.latest_wall_ms(&calls[0]) >= session.deadline_ms(), "dismissed before the grace ran out");
    let outcome = wait_for("the enforced event", SHORT, || async {
        receiver.accepted("enforced", "7101").into_iter().next()
    })
    .await;
    assert_signed(&outcome);
    assert_eq!(outcome.body["session"]["state"], "enforced");
    // Each delivery is in the audit log.
    wait_until("three notified rows", SHORT, || async {
        h.audit_of(&id).await.iter().filter(|r| r.event == "notified").count() == 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_receiver_gets_retries_and_enforcement_stays_on_time() {
    // Room 7201's deliveries fail twice, then succeed; room 7202's always fail.
    let receiver =
        Receiver::start(Arc::new(|body, attempt| match (body["session"]["room_id"].as_str(), attempt) {
            (Some("7202"), _) => StatusCode::INTERNAL_SERVER_ERROR,
            (_, 1 | 2) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::OK,
        }))
        .await;
    let h = harness(
        &receiver,
        "  flaky:\n    provider: trtc\n    max_duration: 9s\n    warn_before: [6s]\n    action: dismiss_room\n",
    )
    .await;
    let _daemon = h.start_daemon().await;
    let a = h.start_session("flaky", RoomArg::Num(7201), &[], None).await.remove(0);
    let b = h.start_session("flaky", RoomArg::Num(7202), &[], None).await.remove(0);
    let settled = h.wait_until_settled(&[a.clone(), b.clone()], SHORT).await;
    assert!(settled.iter().all(|s| s.state == "enforced"), "{settled:?}");
    h.assert_never_early(Some(h.sandbox.clock().await)).await;
    // On time despite the receiver: the audit's lateness of each call.
    for id in [&a, &b] {
        let enforced = h.audit_of(id).await.into_iter().find(|r| r.event == "enforced").unwrap();
        assert!(enforced.lateness_ms.unwrap() < 1000, "late by {:?} ms", enforced.lateness_ms);
    }

    // 7201: the same delivery three times, the third accepted.
    let tries: Vec<Delivery> =
        receiver.deliveries().into_iter().filter(|d| d.event() == "warning" && d.room() == "7201").collect();
    assert_eq!(tries.len(), 3, "{tries:?}");
    assert!(tries.iter().all(|d| d.header("callwarden-delivery") == tries[0].header("callwarden-delivery")));
    assert_eq!(tries.iter().map(|d| d.body["attempt"].as_i64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(tries[1].at_ms - tries[0].at_ms >= 900, "retries back off");
    // 7202: given up once the warning could no longer be true, and recorded.
    let failed = wait_for("notification_failed for 7202", SHORT, || async {
        h.audit_of(&b).await.into_iter().find(|r| r.event == "notification_failed")
    })
    .await;
    assert!(failed.detail.unwrap().contains("HTTP 500"));
    let warned_b =
        receiver.deliveries().iter().filter(|d| d.event() == "warning" && d.room() == "7202").count();
    assert!((2..=4).contains(&warned_b), "bounded retries, got {warned_b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_extension_moves_the_warnings_and_stops_at_max_extension() {
    let receiver = Receiver::ok().await;
    let h = harness(
        &receiver,
        "  doctor:\n    provider: trtc\n    max_duration: 4s\n    warn_before: [2s]\n    max_extension: 3s\n    action: dismiss_room\n",
    )
    .await;
    let _daemon = h.start_daemon().await;
    let id = h.start_session("doctor", RoomArg::Num(7301), &[], None).await.remove(0);
    let first = h.session(&id).await.deadline_ms();
    h.cli(&["session", "extend", &id, "--by", "3s"]).await.expect_ok("extend within the limit");
    let over = h.cli(&["session", "extend", &id, "--by", "1s"]).await;
    assert_eq!(over.code, Some(1), "{over:?}");
    assert!(over.stderr.contains("allows 3000 ms in all"), "{}", over.stderr);
    let deadline = h.session(&id).await.deadline_ms();
    assert_eq!(deadline, first + 3000);

    h.wait_for_state(&id, "enforced", SHORT).await;
    let warnings = receiver.accepted("warning", "7301");
    assert_eq!(warnings.len(), 1, "the warning moved rather than fired twice: {warnings:?}");
    assert!(warnings[0].at_ms >= deadline - 2000 - 50, "the warning kept its old time");
    // The call itself waited for the extended deadline.
    let calls = h.sandbox.requests_for("7301").await;
    assert!(h.sandbox.clock().await.latest_wall_ms(&calls[0]) >= deadline);
    // An enforced session cannot be extended or ended any more.
    let late = h.cli(&["session", "extend", &id, "--by", "1s"]).await;
    assert!(late.stderr.contains("is enforced"), "{}", late.stderr);
}

/// Inserts a settled participant session of `user` under `policy`.
async fn history(h: &Harness, policy: &str, user: &str, started: i64, ended: i64) {
    sqlx::query(
        "INSERT INTO sessions (policy, provider, room_id, room_kind, user_id, started_at, deadline, state, ended_at) \
         VALUES (?, 'trtc', '9', 'numeric', ?, ?, ?, 'enforced', ?)",
    )
    .bind(policy)
    .bind(user)
    .bind(text_of(started))
    .bind(text_of(ended))
    .bind(text_of(ended))
    .execute(h.db().await)
    .await
    .unwrap();
}

const BUDGETED: &str = "  daily:\n    provider: trtc\n    scope: participant\n    max_duration: 20m\n    budget: { per: user, window: day, limit: 30m }\n    action: remove_user\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_counts_a_users_sessions_across_the_window_boundary() {
    let receiver = Receiver::ok().await;
    let h = harness(&receiver, BUDGETED).await;
    // A fixed day, read with --at: 10 minutes after midnight count of the
    // session that straddles it, all 15 of the next, none of yesterday's,
    // and another user's never.
    let min = 60_000;
    let midnight = ms_of("2026-11-20T00:00:00Z");
    history(&h, "daily", "alice", midnight - 10 * min, midnight + 10 * min).await;
    history(&h, "daily", "alice", midnight + 60 * min, midnight + 75 * min).await;
    history(&h, "daily", "alice", midnight - 120 * min, midnight - 90 * min).await;
    history(&h, "daily", "bob", midnight + 60 * min, midnight + 80 * min).await;
    let out = h
        .cli(&["budget", "alice", "--at", "2026-11-20T12:00:00Z", "--format", "json"])
        .await
        .expect_ok("budget");
    let row: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(row["used_ms"], 25 * min);
    assert_eq!(row["remaining_ms"], 5 * min);
    assert_eq!(row["window_start"], "2026-11-20T00:00:00.000Z");
    assert_eq!(row["window_end"], "2026-11-21T00:00:00.000Z");
    // The next day starts afresh, except for what straddles its midnight.
    let next = h
        .cli(&["budget", "alice", "--at", "2026-11-21T12:00:00Z", "--format", "json"])
        .await
        .expect_ok("budget");
    let row: serde_json::Value = serde_json::from_str(next.stdout.trim()).unwrap();
    assert_eq!(row["used_ms"], 0);
    // The documented view gives the same per-session figures to plain SQL.
    let from_view: i64 = sqlx::query_scalar(
        "SELECT sum(used_ms) FROM budget_usage WHERE policy = 'daily' AND user_id = 'alice' \
         AND started_at >= '2026-11-20T00:00:00Z' AND started_at < '2026-11-21T00:00:00Z'",
    )
    .fetch_one(h.db().await)
    .await
    .unwrap();
    assert_eq!(from_view, 15 * min, "the view sums whole sessions that started in the window");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_session_gets_what_the_budget_has_left_and_an_exhausted_user_is_removed_on_entry() {
    let receiver = Receiver::ok().await;
    let h = harness(&receiver, BUDGETED).await;
    let _daemon = h.start_daemon().await;
    let min = 60_000;
    let now = now_ms();
    // Carol used 24 minutes ending a minute ago: the part inside today counts.
    history(&h, "daily", "carol", now - 25 * min, now - min).await;
    let midnight = now - now.rem_euclid(24 * 60 * min);
    let used = (now - min) - (now - 25 * min).max(midnight);
    let id = h.start_session("daily", RoomArg::Num(7401), &["carol"], None).await.remove(0);
    let s = h.session(&id).await;
    let expected = (30 * min - used).min(20 * min);
    let granted = s.deadline_ms() - ms_of(&s.started_at);
    assert!((granted - expected).abs() < 2_000, "granted {granted} ms, expected about {expected} ms");

    // A row the app inserts with plain SQL, leaving the deadline to the
    // policy, is clipped alike when the daemon adopts it.
    history(&h, "daily", "erin", now - 25 * min, now - min).await;
    h.insert_sql(&[SqlSession {
        policy: "daily".into(),
        room_id: "7403".into(),
        room_kind: "numeric".into(),
        user_id: Some("erin".into()),
        started_at: Some(text_of(now)),
        deadline: None,
    }])
    .await
    .unwrap();
    let adopted = wait_for("the SQL row adopted", SHORT, || async {
        h.sessions().await.into_iter().find(|s| s.room_id == "7403" && s.deadline.is_some())
    })
    .await;
    let granted = adopted.deadline_ms() - now;
    assert!((granted - expected).abs() < 2_000, "adopted with {granted} ms, expected about {expected} ms");

    // Dave has nothing left: his session is due at once, and he is removed.
    history(&h, "daily", "dave", now - 40 * min, now - 5 * min).await;
    let used_dave = (now - 5 * min) - (now - 40 * min).max(midnight);
    if used_dave >= 30 * min {
        let id = h.start_session("daily", RoomArg::Num(7402), &["dave"], None).await.remove(0);
        h.wait_for_state(&id, "enforced", SHORT).await;
        let calls = h.sandbox.requests_for("7402").await;
        assert_eq!(calls.len(), 1);
        let registered = h.audit_of(&id).await.into_iter().find(|r| r.event == "registered").unwrap();
        assert!(registered.detail.unwrap().contains("budget exhausted"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_of_one_user_at_once_share_what_is_left_and_an_early_end_gives_time_back() {
    let receiver = Receiver::ok().await;
    let h = harness(&receiver, BUDGETED).await;
    let daemon = h.start_daemon().await;
    let api = Client::new(&daemon.http_url().await);
    let min = 60_000;
    // Frank enters two rooms at the same moment (two devices): 30 minutes a
    // day, 20 at most per session. Each running session books the rest of
    // its time, so the two share the 30 minutes instead of getting 20 each.
    let enter = |room: u32| {
        let api = api.clone();
        async move {
            api.post("/v1/sessions", &serde_json::json!({"policy": "daily", "room": room, "user": "frank"}))
                .await
        }
    };
    let (a, b) = tokio::join!(enter(7601), enter(7602));
    let granted = |r: &Reply| {
        r.expect(201, "register");
        ms_of(r.json["deadline"].as_str().unwrap()) - ms_of(r.json["started_at"].as_str().unwrap())
    };
    let (ga, gb) = (granted(&a), granted(&b));
    assert!((ga + gb - 30 * min).abs() < 2_000, "granted {ga} and {gb} ms: together about 30 minutes");
    assert!((ga.max(gb) - 20 * min).abs() < 2_000, "the first gets the policy's 20 minutes: {ga}, {gb}");
    // A third, while both run: nothing left.
    let c = enter(7603).await;
    assert!(granted(&c) < 1_000, "nothing left for a third: {:?}", c.json);

    // Frank leaves the 20-minute room at once: what it did not use is
    // his again.
    let long = if ga > gb { &a } else { &b };
    let long_id = long.json["id"].as_str().unwrap().to_string();
    api.post(&format!("/v1/sessions/{long_id}/end"), &serde_json::json!({})).await.expect(200, "end");
    let out = h.cli(&["budget", "frank", "--format", "json"]).await.expect_ok("budget");
    let row: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let (used, booked, remaining) = (
        row["used_ms"].as_i64().unwrap(),
        row["booked_ms"].as_i64().unwrap(),
        row["remaining_ms"].as_i64().unwrap(),
    );
    assert!(used < 30_000, "seconds used so far: {row}");
    assert!((booked - 10 * min).abs() < 30_000, "the 10-minute session's rest is booked: {row}");
    assert_eq!(remaining, 30 * min - used - booked, "{row}");
    assert!(remaining > 19 * min, "the ended session's time is back: {row}");
    let d = enter(7604).await;
    assert!((granted(&d) - remaining.min(20 * min)).abs() < 5_000, "granted what is left: {:?}", d.json);

    // The view shows the same split to plain SQL.
    let booked_in_view: i64 = sqlx::query_scalar(
        "SELECT sum(booked_ms) FROM budget_usage WHERE policy = 'daily' AND user_id = 'frank' AND ended_at IS NULL \
         AND session_id <> ?",
    )
    .bind(d.json["id"].as_str().unwrap())
    .fetch_one(h.db().await)
    .await
    .unwrap();
    assert!((booked_in_view - booked).abs() < 30_000, "view {booked_in_view} ms, CLI {booked} ms");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_applies_valid_policy_files_and_keeps_the_running_config_on_a_broken_one() {
    let receiver = Receiver::ok().await;
    let h = harness(&receiver, "").await;
    // policy_files, read relative to the config file.
    let dir = h.config.parent().unwrap().join("policies.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("10-base.yaml"),
        "policies:\n  base:\n    provider: trtc\n    max_duration: 10m\n    action: dismiss_room\n",
    )
    .unwrap();
    let mut text = std::fs::read_to_string(&h.config).unwrap();
    text.push_str("policy_files: [policies.d/*.yaml]\n");
    std::fs::write(&h.config, text).unwrap();

    let daemon = h.start_daemon().await;
    let api = Client::new(&daemon.http_url().await);
    let create = |policy: &str, room: u32| serde_json::json!({ "policy": policy, "room": room });
    api.post("/v1/sessions", &create("base", 7501)).await.expect(201, "a policy from a policy file");
    api.post("/v1/sessions", &create("added", 7502)).await.expect(422, "not yet defined");

    // A new file: picked up without a signal.
    std::fs::write(
        dir.join("20-added.yaml"),
        "policies:\n  added:\n    provider: trtc\n    max_duration: 5m\n    action: dismiss_room\n",
    )
    .unwrap();
    wait_for("the new policy to apply", SHORT, || async {
        (api.post("/v1/sessions", &create("added", 7503)).await.status == 201).then_some(())
    })
    .await;
    let reloaded = h.audit().await.into_iter().filter(|r| r.event == "config_reloaded").count();
    assert!(reloaded >= 1);

    // A broken edit: refused with file, line and reason; the old policies stay.
    std::fs::write(
        dir.join("20-added.yaml"),
        "policies:\n  added:\n    provider: trtc\n    max_duration: 5 parsecs\n    action: dismiss_room\n",
    )
    .unwrap();
    let rejected = wait_for("the rejection in the audit log", SHORT, || async {
        h.audit().await.into_iter().find(|r| r.event == "config_rejected")
    })
    .await;
    let detail = rejected.detail.unwrap();
    assert!(detail.contains("20-added.yaml:4"), "{detail}");
    assert!(detail.contains("max_duration"), "{detail}");
    api.post("/v1/sessions", &create("added", 7504)).await.expect(201, "the running config stays");
    // A policy named twice across files: refused, naming both places; SIGHUP
    // reloads too.
    std::fs::write(
        dir.join("20-added.yaml"),
        "policies:\n  base:\n    provider: trtc\n    max_duration: 1m\n    action: dismiss_room\n",
    )
    .unwrap();
    let twice = wait_for("the duplicate refused", SHORT, || async {
        h.audit().await.into_iter().find(|r| r.detail.as_deref().is_some_and(|d| d.contains("defined twice")))
    })
    .await
    .detail
    .unwrap();
    assert!(twice.contains("10-base.yaml:2") && twice.contains("20-added.yaml:2"), "{twice}");
    let before = h.audit().await.iter().filter(|r| r.event == "config_rejected").count();
    daemon.hangup();
    wait_until("SIGHUP to reload (and refuse again)", SHORT, || async {
        h.audit().await.iter().filter(|r| r.event == "config_rejected").count() > before
    })
    .await;
    let metrics = parse_metrics(&api.get("/metrics").await.text);
    assert!(metric_sum(&metrics, "callwarden_config_reloads_total", &[("result", "rejected")]) >= 2.0);
    assert!(metric_sum(&metrics, "callwarden_config_reloads_total", &[("result", "applied")]) >= 1.0);
    // The daemon is still serving the last good configuration.
    api.post("/v1/sessions", &create("added", 7505)).await.expect(201, "still the last good config");
}
