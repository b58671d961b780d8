//! TRTC's edge cases on the webhook: a participant who reconnects keeps
//! their clock (an entry with Reason 2 or 3, or any entry soon after an
//! exit TRTC timed out), a room re-created soon after it emptied keeps its
//! clock, and a room-dismissed callback that names a numeric room as a
//! string closes the numeric room.

use serde_json::{Value, json};

use callwarden::sandbox::SANDBOX_SDK_APP_ID;

use crate::helpers::{Client, DeadlineMs, Harness, Listener, SessionRow, TRTC_CALLBACK_KEY, now_ms};

const POLICIES: &str = concat!(
    "  trtc-rooms: { provider: trtc, match: { room: '9*' }, max_duration: 30m, action: dismiss_room }\n",
    "  trtc-people: { provider: trtc, match: { room: 'chat-*' }, scope: participant,\n",
    "                 max_duration: 20m, action: remove_user }\n",
);

/// A signed TRTC callback of group 1 with `Reason`, sent now.
async fn send(hooks: &Client, kind: i64, room: Value, at_ms: i64, user: Option<&str>, reason: i64) {
    let mut info = json!({ "RoomId": room, "EventTs": at_ms / 1000, "EventMsTs": at_ms, "Reason": reason });
    if let Some(user) = user {
        info["UserId"] = json!(user);
        info["Role"] = json!(20);
    }
    let body = json!({ "EventGroupId": 1, "EventType": kind, "CallbackTs": now_ms(), "EventInfo": info })
        .to_string();
    let sign = callwarden::providers::trtc::callback_signature(TRTC_CALLBACK_KEY, body.as_bytes());
    let request = hooks
        .request(reqwest::Method::POST, "/webhooks/trtc")
        .header("Content-Type", "application/json")
        .header("Sign", sign)
        .header("SdkAppId", SANDBOX_SDK_APP_ID.to_string())
        .body(body.clone());
    Client::send(request).await.expect(200, &body);
}

fn of<'a>(rows: &'a [SessionRow], room: &str, user: Option<&str>) -> Vec<&'a SessionRow> {
    let mut found: Vec<&SessionRow> =
        rows.iter().filter(|r| r.room_id == room && r.user_id.as_deref() == user).collect();
    found.sort_by_key(|r| r.created_at.clone());
    found
}

#[tokio::test]
async fn a_reconnecting_participant_keeps_the_deadline_and_a_new_visit_gets_a_new_one() {
    let h = Harness::http(Listener { trtc: true, ..Listener::default() }, POLICIES).await;
    let daemon = h.start_daemon().await;
    let hooks = Client::new(&daemon.http_url().await).with_token(None);
    let t0 = now_ms() - 50_000;
    let first_deadline = t0 + 20 * 60_000;

    // Ann enters, TRTC times her out (104 Reason 2), she is back 10 s later
    // with an ordinary entry: the same deadline.
    send(&hooks, 103, json!("chat-1"), t0, Some("ann"), 1).await;
    send(&hooks, 104, json!("chat-1"), t0 + 10_000, Some("ann"), 2).await;
    send(&hooks, 103, json!("chat-1"), t0 + 20_000, Some("ann"), 1).await;
    let rows = h.sessions().await;
    let ann = of(&rows, "chat-1", Some("ann"));
    assert_eq!(ann.len(), 2, "{rows:#?}");
    assert_eq!((ann[0].state.as_str(), ann[1].state.as_str()), ("cancelled", "active"));
    assert_eq!(ann[1].deadline_ms(), first_deadline, "a reconnect after a timeout reset the clock");
    let registered = h.audit_of(&ann[1].id).await;
    assert!(
        registered[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains(&format!("resumes session {}", ann[0].id))),
        "{registered:#?}"
    );

    // She leaves normally (Reason 1), then comes back after a network
    // switch (103 Reason 2): still her deadline.
    send(&hooks, 104, json!("chat-1"), t0 + 25_000, Some("ann"), 1).await;
    send(&hooks, 103, json!("chat-1"), t0 + 30_000, Some("ann"), 2).await;
    let rows = h.sessions().await;
    let ann = of(&rows, "chat-1", Some("ann"));
    assert_eq!(ann.len(), 3, "{rows:#?}");
    assert_eq!(ann[2].deadline_ms(), first_deadline, "{rows:#?}");

    // Bob leaves normally and comes back normally: a new visit, a new clock.
    send(&hooks, 103, json!("chat-1"), t0, Some("bob"), 1).await;
    send(&hooks, 104, json!("chat-1"), t0 + 10_000, Some("bob"), 1).await;
    send(&hooks, 103, json!("chat-1"), t0 + 20_000, Some("bob"), 1).await;
    let rows = h.sessions().await;
    let bob = of(&rows, "chat-1", Some("bob"));
    assert_eq!(bob.len(), 2, "{rows:#?}");
    assert_eq!(bob[1].deadline_ms(), t0 + 20_000 + 20 * 60_000);

    // Cy is timed out and comes back after the grace (60 s by default): a new clock.
    send(&hooks, 103, json!("chat-2"), t0 - 100_000, Some("cy"), 1).await;
    send(&hooks, 104, json!("chat-2"), t0 - 90_000, Some("cy"), 2).await;
    send(&hooks, 103, json!("chat-2"), t0, Some("cy"), 1).await;
    let rows = h.sessions().await;
    let cy = of(&rows, "chat-2", Some("cy"));
    assert_eq!(cy.len(), 2, "{rows:#?}");
    assert_eq!(cy[1].deadline_ms(), t0 + 20 * 60_000);
}

#[tokio::test]
async fn a_room_recreated_soon_after_it_emptied_keeps_its_deadline() {
    let h = Harness::http(Listener { trtc: true, ..Listener::default() }, POLICIES).await;
    let daemon = h.start_daemon().await;
    let hooks = Client::new(&daemon.http_url().await).with_token(None);
    let t0 = now_ms() - 50_000;
    send(&hooks, 101, json!(9100), t0, None, 0).await;
    // Everyone dropped; TRTC dismissed the room; it is back 5 s later.
    send(&hooks, 102, json!(9100), t0 + 10_000, None, 0).await;
    send(&hooks, 101, json!(9100), t0 + 15_000, None, 0).await;
    let rows = h.sessions().await;
    let room = of(&rows, "9100", None);
    assert_eq!(room.len(), 2, "{rows:#?}");
    assert_eq!(room[1].deadline_ms(), t0 + 30 * 60_000, "{rows:#?}");
}

#[tokio::test]
async fn a_room_dismissed_callback_naming_a_numeric_room_as_a_string_closes_it() {
    let h = Harness::http(Listener { trtc: true, ..Listener::default() }, POLICIES).await;
    let daemon = h.start_daemon().await;
    let hooks = Client::new(&daemon.http_url().await).with_token(None);
    let t0 = now_ms() - 50_000;
    send(&hooks, 101, json!(9200), t0, None, 0).await;
    // As in TRTC's own sample of event 102: "RoomId": "9200".
    send(&hooks, 102, json!("9200"), t0 + 10_000, None, 0).await;
    let rows = h.sessions().await;
    let room = of(&rows, "9200", None);
    assert_eq!(room.len(), 1, "{rows:#?}");
    assert_eq!((room[0].state.as_str(), room[0].room_kind.as_str()), ("cancelled", "numeric"), "{rows:#?}");
    let audit = h.audit_of(&room[0].id).await;
    let ended = audit.iter().find(|a| a.event == "ended").unwrap();
    assert!(ended.detail.as_deref().is_some_and(|d| d.contains("numeric room as a string")), "{audit:#?}");
}
