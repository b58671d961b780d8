//! Provider webhooks on the daemon's listener: TRTC room callbacks (signed
//! with the callback key) and ACS CloudEvents (`?token=`) open and end
//! sessions for policies with a `match`; forged, malformed, duplicate and
//! out-of-order deliveries change nothing.

use serde_json::{Value, json};

use callwarden::sandbox::SANDBOX_SDK_APP_ID;

use crate::helpers::DeadlineMs;
use crate::helpers::{
    ACS_WEBHOOK_SECRET, Client, Harness, Listener, Reply, SHORT, SessionRow, TRTC_CALLBACK_KEY, ms_of,
    now_ms, text_of,
};

/// Webhook policies after the four without `match` (YAML entries under `policies:`).
const TRTC_POLICIES: &str = concat!(
    "  trtc-short: { provider: trtc, match: { room: '8*' }, max_duration: 2s, action: dismiss_room }\n",
    "  trtc-rooms: { provider: trtc, match: { room: '9*' }, max_duration: 30m, action: dismiss_room }\n",
    "  trtc-people: { provider: trtc, match: { room: 'chat-*', sdk_app_id: 1400000001 },\n",
    "                 scope: participant,\n",
    "                 max_duration: 20m, action: remove_user }\n",
);

const ACS_POLICIES: &str = concat!(
    "  acs-rooms: { provider: acs, match: { room: 'room-*' }, max_duration: 30m, action: terminate_call }\n",
    "  acs-people: { provider: acs, match: { room: 'people-*' }, max_duration: 20m,\n",
    "               action: remove_participant }\n",
);

/// A TRTC room callback body (group 1).
fn trtc_event(kind: i64, room: Value, at_ms: i64, user: Option<&str>) -> String {
    let mut info = json!({ "RoomId": room, "EventTs": at_ms / 1000, "EventMsTs": at_ms });
    if let Some(user) = user {
        info["UserId"] = json!(user);
        info["Role"] = json!(20);
        info["Reason"] = json!(1);
    }
    // TRTC stamps the callback when it sends it: now, whenever the event was.
    json!({ "EventGroupId": 1, "EventType": kind, "CallbackTs": now_ms(), "EventInfo": info }).to_string()
}

fn sign(body: &str) -> String {
    callwarden::providers::trtc::callback_signature(TRTC_CALLBACK_KEY, body.as_bytes())
}

/// POSTs a TRTC callback with the given `Sign` and `SdkAppId` headers (none when `None`).
async fn trtc_raw(hooks: &Client, body: &str, sign: Option<&str>, app: Option<&str>) -> Reply {
    let mut request = hooks
        .request(reqwest::Method::POST, "/webhooks/trtc")
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(sign) = sign {
        request = request.header("Sign", sign);
    }
    if let Some(app) = app {
        request = request.header("SdkAppId", app);
    }
    Client::send(request).await
}

/// POSTs a correctly signed TRTC callback from the sandbox's application; expects 200.
async fn trtc(hooks: &Client, body: &str) {
    let reply = trtc_raw(hooks, body, Some(&sign(body)), Some(&SANDBOX_SDK_APP_ID.to_string())).await;
    reply.expect(200, body);
    assert_eq!(reply.json, json!({"code": 0}), "{reply:#?}");
}

fn in_room<'a>(rows: &'a [SessionRow], room: &str) -> Vec<&'a SessionRow> {
    rows.iter().filter(|r| r.room_id == room).collect()
}

fn active_in<'a>(rows: &'a [SessionRow], room: &str) -> Vec<&'a SessionRow> {
    rows.iter().filter(|r| r.room_id == room && r.state == "active").collect()
}

fn users(rows: &[&SessionRow]) -> Vec<String> {
    let mut users: Vec<String> = rows.iter().map(|r| r.user_id.clone().unwrap_or_default()).collect();
    users.sort();
    users
}

/// A session ended by a webhook: cancelled, never attempted, audit `ended` last.
async fn assert_ended_by_webhook(h: &Harness, row: &SessionRow) {
    let now = h.session(&row.id).await;
    assert_eq!((now.state.as_str(), now.attempts), ("cancelled", 0), "{now:#?}");
    let events: Vec<String> = h.audit_of(&row.id).await.into_iter().map(|a| a.event).collect();
    assert_eq!(events, ["registered", "ended"], "{now:#?}");
}

#[tokio::test]
async fn trtc_callbacks_open_and_end_sessions_and_forged_or_stale_ones_change_nothing() {
    let h = Harness::http(Listener { trtc: true, ..Listener::default() }, TRTC_POLICIES).await;
    let clock = h.sandbox.clock().await;
    let daemon = h.start_daemon().await;
    let hooks = Client::new(&daemon.http_url().await).with_token(None);
    let app = SANDBOX_SDK_APP_ID.to_string();

    // Forged, missing or mismatched signatures: 401, nothing stored.
    let t0 = now_ms();
    let created = trtc_event(101, json!(9001), t0, None);
    let other_body = trtc_event(101, json!(9002), t0, None);
    let forged = callwarden::providers::trtc::callback_signature("SomeOtherKey", created.as_bytes());
    for (what, sign) in [
        ("a Sign made with another key", Some(forged.as_str())),
        ("no Sign", None),
        ("the Sign of another body", Some(&*self::sign(&other_body))),
        ("an empty Sign", Some("")),
    ] {
        trtc_raw(&hooks, &created, sign, Some(&app)).await.expect(401, what);
    }
    // A genuine callback replayed later: its CallbackTs is more than five
    // minutes old (TRTC retries for one minute only). 400, nothing stored.
    let sent_at = |ms: i64| {
        let mut body: Value = serde_json::from_str(&created).unwrap();
        body["CallbackTs"] = json!(ms);
        body.to_string()
    };
    let replayed = sent_at(t0 - 6 * 60_000);
    trtc_raw(&hooks, &replayed, Some(&*self::sign(&replayed)), Some(&app))
        .await
        .expect(400, "a replay six minutes later");
    let ahead = sent_at(t0 + 6 * 60_000);
    trtc_raw(&hooks, &ahead, Some(&*self::sign(&ahead)), Some(&app))
        .await
        .expect(400, "a CallbackTs six minutes ahead");
    assert_eq!(h.row_counts().await, (0, 0), "a replayed callback changed the database");
    // Signed but malformed: 400.
    let no_info = json!({"EventGroupId": 1, "EventType": 101, "CallbackTs": t0}).to_string();
    let no_user = trtc_event(103, json!(9001), t0, None);
    for (what, body, app) in [
        ("not JSON", "{\"EventGroupId\": 1,", Some(app.as_str())),
        ("no EventInfo", no_info.as_str(), Some(app.as_str())),
        ("an entry without UserId", no_user.as_str(), Some(app.as_str())),
        ("no SdkAppId", created.as_str(), None),
    ] {
        trtc_raw(&hooks, body, Some(&sign(body)), app).await.expect(400, what);
    }
    assert_eq!(h.row_counts().await, (0, 0), "a refused callback changed the database");

    // A room-scope policy with a two-second limit: the room created now is
    // dismissed two seconds later (checked at the end).
    let short_start = now_ms();
    trtc(&hooks, &trtc_event(101, json!(8001), short_start, None)).await;

    // Room created: one room session from EventMsTs, even when delivered
    // twice, and not another when someone enters.
    trtc(&hooks, &created).await;
    trtc(&hooks, &created).await;
    trtc(&hooks, &trtc_event(103, json!(9001), t0 + 100, Some("host"))).await;
    let rows = h.sessions().await;
    let room = in_room(&rows, "9001");
    assert_eq!(room.len(), 1, "{rows:#?}");
    let room_session = room[0].clone();
    assert_eq!(
        (room_session.policy.as_str(), room_session.room_kind.as_str(), room_session.user_id.as_deref()),
        ("trtc-rooms", "numeric", None)
    );
    assert_eq!(room_session.state, "active");
    assert_eq!(ms_of(&room_session.started_at), t0);
    assert_eq!(room_session.deadline_ms(), t0 + 30 * 60_000);
    // Callbacks of another application, media events and rooms no policy
    // matches open nothing.
    let elsewhere = trtc_event(101, json!(9005), t0, None);
    trtc_raw(&hooks, &elsewhere, Some(&sign(&elsewhere)), Some("1400000002")).await.expect(200, "other app");
    trtc(
        &hooks,
        &json!({"EventGroupId": 2, "EventType": 201, "CallbackTs": t0,
                        "EventInfo": {"RoomId": 9006, "EventMsTs": t0, "UserId": "u"}})
        .to_string(),
    )
    .await;
    trtc(&hooks, &trtc_event(101, json!(1234), t0, None)).await;
    trtc(&hooks, &trtc_event(103, json!("lobby-1"), t0, Some("alice"))).await;
    let rows = h.sessions().await;
    assert_eq!(rows.len(), 2, "only rooms 8001 and 9001 have sessions: {rows:#?}");

    // Dismissed: the room's session ends without a provider call. An entry
    // older than the dismissal, delivered late, opens nothing; a newer
    // creation opens a new session.
    trtc(&hooks, &trtc_event(102, json!(9001), t0 + 1_000, None)).await;
    assert_ended_by_webhook(&h, &room_session).await;
    trtc(&hooks, &trtc_event(103, json!(9001), t0 + 900, Some("latecomer"))).await;
    trtc(&hooks, &trtc_event(101, json!(9001), t0 + 500, None)).await;
    assert!(active_in(&h.sessions().await, "9001").is_empty(), "a stale event reopened room 9001");
    trtc(&hooks, &trtc_event(101, json!(9001), t0 + 2_000, None)).await;
    let rows = h.sessions().await;
    let reopened = active_in(&rows, "9001");
    assert_eq!(reopened.len(), 1, "{rows:#?}");
    assert_eq!(ms_of(&reopened[0].started_at), t0 + 2_000);

    // Participant scope (string room): a session per entry, from EventMsTs;
    // an exit ends that participant's only.
    let t1 = t0 + 10_000;
    trtc(&hooks, &trtc_event(103, json!("chat-1"), t1, Some("alice"))).await;
    trtc(&hooks, &trtc_event(103, json!("chat-1"), t1 + 10, Some("bob"))).await;
    trtc(&hooks, &trtc_event(103, json!("chat-1"), t1 + 10, Some("bob"))).await;
    let rows = h.sessions().await;
    let chat = active_in(&rows, "chat-1");
    assert_eq!(users(&chat), ["alice", "bob"], "{rows:#?}");
    for row in &chat {
        assert_eq!((row.policy.as_str(), row.room_kind.as_str()), ("trtc-people", "string"), "{row:#?}");
    }
    let alice = chat.iter().find(|r| r.user_id.as_deref() == Some("alice")).unwrap();
    assert_eq!((ms_of(&alice.started_at), alice.deadline_ms()), (t1, t1 + 20 * 60_000), "{alice:#?}");
    let (alice, bob) = ((*alice).clone(), chat.iter().find(|r| r.user_id.as_deref() == Some("bob")).unwrap());
    let bob = (*bob).clone();
    trtc(&hooks, &trtc_event(104, json!("chat-1"), t1 + 500, Some("alice"))).await;
    assert_ended_by_webhook(&h, &alice).await;
    assert_eq!(h.session(&bob.id).await.state, "active");

    // Out of order: carol's exit arrives before her older entry. Nothing is
    // left running for her.
    trtc(&hooks, &trtc_event(104, json!("chat-1"), t1 + 2_000, Some("carol"))).await;
    trtc(&hooks, &trtc_event(103, json!("chat-1"), t1 + 1_000, Some("carol"))).await;
    let rows = h.sessions().await;
    assert_eq!(users(&active_in(&rows, "chat-1")), ["bob"], "{rows:#?}");
    // A stale exit for bob (older than his entry) does not end him either.
    trtc(&hooks, &trtc_event(104, json!("chat-1"), t1 - 1_000, Some("bob"))).await;
    assert_eq!(h.session(&bob.id).await.state, "active");

    // Dismissed: everyone's session in the room ends.
    trtc(&hooks, &trtc_event(102, json!("chat-1"), t1 + 3_000, None)).await;
    assert_ended_by_webhook(&h, &bob).await;
    assert!(active_in(&h.sessions().await, "chat-1").is_empty());

    // The webhook-opened two-second room is enforced at its deadline, and
    // nothing else reached the provider.
    let short = in_room(&h.sessions().await, "8001")[0].clone();
    assert_eq!((short.policy.as_str(), ms_of(&short.started_at)), ("trtc-short", short_start));
    assert_eq!(short.deadline_ms(), short_start + 2_000);
    let row = h.wait_for_state(&short.id, "enforced", SHORT).await;
    assert_eq!(row.attempts, 1, "{row:#?}");
    let calls = h.sandbox.api_requests().await;
    let seen: Vec<(&str, Option<&str>)> =
        calls.iter().map(|r| (r.action.as_str(), r.room.as_deref())).collect();
    assert_eq!(seen, [("DismissRoom", Some("8001"))], "{calls:#?}");
    assert!(
        clock.latest_wall_ms(&calls[0]) >= short_start + 2_000,
        "dismissed before {}",
        text_of(short_start + 2_000)
    );
    h.assert_never_early(Some(clock)).await;
}

/// A CloudEvent as ACS Call Automation posts it.
fn cloud_event(kind: &str, call: &str, at_ms: i64, data: Value) -> Value {
    let mut data = data;
    data["callConnectionId"] = json!(call);
    data["serverCallId"] = json!("server-call-id");
    data["correlationId"] = json!(uuid::Uuid::new_v4().to_string());
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "source": format!("calling/callConnections/{call}"),
        "type": format!("Microsoft.Communication.{kind}"),
        "data": data,
        "time": text_of(at_ms),
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "subject": format!("calling/callConnections/{call}"),
    })
}

fn roster(call: &str, sequence: i64, at_ms: i64, participants: &[&str]) -> Value {
    let participants: Vec<Value> = participants
        .iter()
        .map(|raw| {
            let identifier = match raw.strip_prefix("4:") {
                Some(phone) => json!({"rawId": raw, "kind": "phoneNumber", "phoneNumber": {"value": phone}}),
                None => json!({"rawId": raw, "kind": "communicationUser", "communicationUser": {"id": raw}}),
            };
            json!({"identifier": identifier, "isMuted": false, "isOnHold": false})
        })
        .collect();
    cloud_event(
        "ParticipantsUpdated",
        call,
        at_ms,
        json!({"sequenceNumber": sequence, "participants": participants, "type": "participantsUpdated"}),
    )
}

/// POSTs a CloudEvents array with the right token; expects 200 and returns `changed`.
async fn acs(hooks: &Client, events: &[Value]) -> i64 {
    let reply = hooks.post(&format!("/webhooks/acs?token={ACS_WEBHOOK_SECRET}"), &json!(events)).await;
    reply.expect(200, "an ACS callback");
    reply.json["changed"].as_i64().unwrap_or_else(|| panic!("no changed count: {reply:#?}"))
}

#[tokio::test]
async fn acs_events_open_sessions_follow_the_roster_and_end_with_the_call() {
    let h = Harness::http(Listener { acs: true, ..Listener::default() }, ACS_POLICIES).await;
    let daemon = h.start_daemon().await;
    let hooks = Client::new(&daemon.http_url().await).with_token(None);
    // Events happened in the last minute, as delivered events have.
    let t0 = now_ms() - 60_000;
    let connected = cloud_event("CallConnected", "room-1", t0, json!({}));

    // The token is required, exactly; malformed bodies are refused whole.
    for (what, query) in [
        ("no token", "".to_string()),
        ("a wrong token", "?token=wrong".to_string()),
        ("the token under another name", format!("?secret={ACS_WEBHOOK_SECRET}")),
        ("a token one character short", format!("?token={}", &ACS_WEBHOOK_SECRET[1..])),
    ] {
        hooks.post(&format!("/webhooks/acs{query}"), &json!([connected])).await.expect(401, what);
    }
    let path = format!("/webhooks/acs?token={ACS_WEBHOOK_SECRET}");
    hooks.post_raw(&path, "[{\"type\":").await.expect(400, "not JSON");
    hooks.post_raw(&path, "42").await.expect(400, "not a CloudEvents batch");
    assert_eq!(h.row_counts().await, (0, 0), "a refused callback changed the database");

    // An event that cannot be acted on is skipped and counted; the rest of
    // its batch applies. CallConnected opens a room session for the
    // room-scope policy, once.
    let no_call = json!({"type": "Microsoft.Communication.CallDisconnected", "data": {}});
    let reply = hooks.post(&path, &json!([no_call, connected])).await;
    reply.expect(200, "a batch with one event that cannot be acted on");
    assert_eq!(
        (reply.json["skipped"].as_i64(), reply.json["changed"].as_i64()),
        (Some(1), Some(1)),
        "{reply:#?}"
    );
    assert_eq!(acs(&hooks, std::slice::from_ref(&connected)).await, 0, "a duplicate delivery");
    let rows = h.sessions().await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let room = rows[0].clone();
    assert_eq!(
        (room.policy.as_str(), room.room_kind.as_str(), room.room_id.as_str(), room.user_id.as_deref()),
        ("acs-rooms", "call", "room-1", None)
    );
    assert_eq!((ms_of(&room.started_at), room.deadline_ms()), (t0, t0 + 30 * 60_000));
    // Calls no policy matches, and other event types, open nothing.
    let unmatched = cloud_event("CallConnected", "other-1", t0, json!({}));
    let played = cloud_event("PlayCompleted", "room-1", t0, json!({}));
    assert_eq!(acs(&hooks, &[unmatched, played]).await, 0);

    // A participant-scope call: connecting opens nothing; the roster does.
    let call = "people-1";
    assert_eq!(acs(&hooks, &[cloud_event("CallConnected", call, t0, json!({}))]).await, 0);
    let (a, b, c) = ("8:acs:res_a", "8:acs:res_b", "4:+15551230000");
    assert_eq!(acs(&hooks, &[roster(call, 1, t0 + 1_000, &[a, b])]).await, 2);
    let rows = h.sessions().await;
    let people = active_in(&rows, call);
    assert_eq!(users(&people), [a, b], "{rows:#?}");
    for row in &people {
        assert_eq!(row.policy, "acs-people", "{row:#?}");
        assert_eq!((ms_of(&row.started_at), row.deadline_ms()), (t0 + 1_000, t0 + 1_000 + 20 * 60_000));
    }
    let session_a = (*people.iter().find(|r| r.user_id.as_deref() == Some(a)).unwrap()).clone();
    let session_b = (*people.iter().find(|r| r.user_id.as_deref() == Some(b)).unwrap()).clone();

    // A newer roster without a: a ends, b goes on.
    assert_eq!(acs(&hooks, &[roster(call, 3, t0 + 3_000, &[b])]).await, 1);
    assert_ended_by_webhook(&h, &session_a).await;
    assert_eq!(h.session(&session_b.id).await.state, "active");
    // A stale roster (lower sequence) brings nobody back and adds nobody.
    assert_eq!(acs(&hooks, &[roster(call, 2, t0 + 2_000, &[a, b, c])]).await, 0);
    assert_eq!(acs(&hooks, &[roster(call, 3, t0 + 3_000, &[b, c])]).await, 0, "the same sequence again");
    let rows = h.sessions().await;
    assert_eq!(users(&active_in(&rows, call)), [b], "{rows:#?}");
    assert_eq!(in_room(&rows, call).len(), 2, "{rows:#?}");

    // CallDisconnected ends the rest, with no provider call.
    let disconnected = cloud_event("CallDisconnected", call, t0 + 5_000, json!({}));
    assert_eq!(acs(&hooks, std::slice::from_ref(&disconnected)).await, 1);
    assert_ended_by_webhook(&h, &session_b).await;
    assert_eq!(acs(&hooks, &[disconnected]).await, 0, "a duplicate disconnect");
    assert_eq!(acs(&hooks, &[cloud_event("CallDisconnected", "room-1", t0 + 5_000, json!({}))]).await, 1);
    assert_ended_by_webhook(&h, &room).await;
    let rows = h.sessions().await;
    assert!(rows.iter().all(|r| r.state == "cancelled"), "{rows:#?}");
    // A late CallConnected (older than the disconnect) does not reopen the call.
    assert_eq!(acs(&hooks, &[cloud_event("CallConnected", "room-1", t0 + 100, json!({}))]).await, 0);
    assert!(h.sandbox.acs_requests().await.is_empty(), "a webhook made a provider call");

    // One delivery may carry several events, applied in order.
    let batch = [
        cloud_event("CallConnected", "people-2", t0, json!({})),
        roster("people-2", 1, t0 + 100, &[a]),
        roster("people-2", 2, t0 + 200, &[a, c]),
    ];
    assert_eq!(acs(&hooks, &batch).await, 2);
    let rows = h.sessions().await;
    assert_eq!(users(&active_in(&rows, "people-2")), [c, a], "sorted: the phone number first; {rows:#?}");
}

/// A roster delivered after the call's disconnect, but describing the call
/// before it, must not open sessions on a call that has ended (as TRTC
/// entries older than a room's dismissal open nothing).
#[tokio::test]
async fn a_roster_delivered_after_the_disconnect_opens_nothing() {
    let h = Harness::http(Listener { acs: true, ..Listener::default() }, ACS_POLICIES).await;
    let daemon = h.start_daemon().await;
    let hooks = Client::new(&daemon.http_url().await).with_token(None);
    let t0 = now_ms() - 10_000;
    let call = "people-late";
    acs(&hooks, &[cloud_event("CallConnected", call, t0, json!({}))]).await;
    assert_eq!(acs(&hooks, &[roster(call, 1, t0 + 1_000, &["8:acs:a"])]).await, 1);
    assert_eq!(acs(&hooks, &[cloud_event("CallDisconnected", call, t0 + 3_000, json!({}))]).await, 1);
    // Sent before the disconnect (sequence 2, time t0 + 2 s), delivered after it.
    acs(&hooks, &[roster(call, 2, t0 + 2_000, &["8:acs:a", "8:acs:b"])]).await;
    let rows = h.sessions().await;
    assert!(active_in(&rows, call).is_empty(), "sessions opened on an ended call: {rows:#?}");
}

#[tokio::test]
async fn an_entry_under_a_budget_gets_what_is_left_and_an_exhausted_user_is_removed_on_entry() {
    let policies = concat!(
        "  daily-chat: { provider: trtc, match: { room: 'paid-*' }, scope: participant, max_duration: 20m,\n",
        "                budget: { per: user, window: month, limit: 30m }, action: remove_user }\n",
    );
    let h = Harness::http(Listener { trtc: true, ..Listener::default() }, policies).await;
    let daemon = h.start_daemon().await;
    let hooks = Client::new(&daemon.http_url().await).with_token(None);
    let min = 60_000;
    let t0 = now_ms();
    let month_start = ms_of(&format!("{}-01T00:00:00Z", &text_of(t0)[..7]));
    // Earlier this month: one user used all 30 minutes, another 22 (both
    // sessions ending a minute ago; only their part inside the month counts).
    for (user, used) in [("spent", 30), ("thrifty", 22)] {
        sqlx::query(
            "INSERT INTO sessions (policy, provider, room_id, room_kind, user_id, started_at, deadline, state, ended_at) \
             VALUES ('daily-chat', 'trtc', 'paid-0', 'string', ?, ?, ?, 'enforced', ?)",
        )
        .bind(user)
        .bind(text_of(t0 - (used + 1) * min))
        .bind(text_of(t0 - min))
        .bind(text_of(t0 - min))
        .execute(h.db().await)
        .await
        .unwrap();
    }
    let counted = |used: i64| (t0 - min) - (t0 - (used + 1) * min).max(month_start);

    trtc(&hooks, &trtc_event(103, json!("paid-1"), t0, Some("thrifty"))).await;
    trtc(&hooks, &trtc_event(103, json!("paid-2"), t0, Some("spent"))).await;
    let rows = h.sessions().await;
    let thrifty = active_in(&rows, "paid-1");
    assert_eq!(thrifty.len(), 1, "{rows:#?}");
    let granted = thrifty[0].deadline_ms() - t0;
    assert_eq!(granted, (30 * min - counted(22)).min(20 * min), "the budget's remainder, from the entry");

    // The exhausted user: a session due at once, enforced, recorded as such.
    let spent = in_room(&rows, "paid-2")[0].id.clone();
    if counted(30) >= 30 * min {
        let row = h.wait_until_settled(std::slice::from_ref(&spent), SHORT).await.remove(0);
        assert_eq!(row.state, "enforced");
        assert_eq!(h.sandbox.requests_for("paid-2").await.len(), 1, "removed on entry");
        let registered = h.audit_of(&spent).await.into_iter().find(|a| a.event == "registered").unwrap();
        assert!(registered.detail.unwrap().contains("budget exhausted"));
    }
}

/// A second TRTC application, with its own callback key.
const APP_B: u64 = 1_400_000_002;
const APP_B_KEY: &str = "app-b-callback-key-0123456789";

#[tokio::test]
async fn a_trtc_application_with_its_own_key_takes_only_callbacks_signed_with_it() {
    let h = Harness::with_config(|db, url| {
        let policy = "  b-rooms: { provider: trtc-b, match: { room: '77*' }, max_duration: 30m, action: dismiss_room }\n";
        let text = crate::helpers::http_config_text(db, url, Listener { trtc: true, ..Listener::default() }, policy);
        let app_b = format!(
            "providers:\n  trtc-b:\n    kind: tencent-trtc\n    sdk_app_id: {APP_B}\n    region: ap-guangzhou\n    \
             secret_id: AKIDappb\n    secret_key: app-b-secret-key\n    endpoint: {url}\n    callback_key: {APP_B_KEY}\n"
        );
        text.replacen("providers:\n", &app_b, 1)
    })
    .await;
    let daemon = h.start_daemon().await;
    let hooks = Client::new(&daemon.http_url().await).with_token(None);
    let (app_a, app_b) = (SANDBOX_SDK_APP_ID.to_string(), APP_B.to_string());
    let t0 = now_ms();
    let created = trtc_event(101, json!(7701), t0, None);
    let signed_b = callwarden::providers::trtc::callback_signature(APP_B_KEY, created.as_bytes());

    // Signed with the shared key (application A's) but naming B: B has a
    // key of its own, so this is not B's callback. And B's signature naming
    // A is not A's. Both 401, nothing stored.
    trtc_raw(&hooks, &created, Some(&sign(&created)), Some(&app_b)).await.expect(401, "A's key, B's header");
    trtc_raw(&hooks, &created, Some(&signed_b), Some(&app_a)).await.expect(401, "B's key, A's header");
    assert_eq!(h.row_counts().await, (0, 0), "a callback under the wrong key changed the database");

    // B's own callback opens B's session.
    trtc_raw(&hooks, &created, Some(&signed_b), Some(&app_b)).await.expect(200, "B's key, B's header");
    let rows = h.sessions().await;
    let opened = in_room(&rows, "7701");
    assert_eq!(opened.len(), 1, "{rows:#?}");
    assert_eq!((opened[0].policy.as_str(), opened[0].state.as_str()), ("b-rooms", "active"));
}
