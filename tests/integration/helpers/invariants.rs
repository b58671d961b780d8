//! The invariants every enforcement run must keep, checked over what the run
//! left behind: audit rows, session rows and the requests the sandbox saw.
//! [`Harness`](super::Harness) gathers those and calls these.

use std::collections::HashMap;

use callwarden::sandbox::RequestRecord;

use super::rows::{AuditRow, FINAL_EVENTS, SessionRow};
use super::sandbox::SandboxClock;
use super::time::{ms_of, text_of};

/// No audit row records a provider call as early.
pub(super) fn assert_no_early_audit_row(audit: &[AuditRow]) {
    let early: Vec<_> = audit.iter().filter(|a| a.lateness_ms.is_some_and(|l| l < 0)).collect();
    assert!(early.is_empty(), "calls recorded as early: {early:#?}");
}

/// The sandbox saw none of the TRTC `requests` for a room before the
/// earliest deadline of the `sessions` in it.
pub(super) fn assert_no_early_trtc_request(
    sessions: &[SessionRow],
    requests: &[RequestRecord],
    clock: SandboxClock,
) {
    let mut deadlines: HashMap<(String, bool), i64> = HashMap::new();
    for s in sessions {
        let Some(deadline) = s.deadline.as_deref().map(ms_of) else { continue };
        let key = (s.room_id.clone(), s.room_kind == "string");
        let earliest = deadlines.entry(key).or_insert(deadline);
        *earliest = (*earliest).min(deadline);
    }
    for r in requests {
        let Some(room) = &r.room else { continue };
        let key = (room.clone(), r.action.ends_with("ByStrRoomId"));
        let Some(deadline) = deadlines.get(&key) else { continue };
        let latest = clock.latest_wall_ms(r);
        assert!(
            latest >= *deadline,
            "the sandbox saw {} for room {room} at the latest {} but its deadline is {}",
            r.action,
            text_of(latest),
            text_of(*deadline)
        );
    }
}

/// The sandbox saw none of the ACS `requests` for a call before the earliest
/// deadline of the `sessions` in it.
pub(super) fn assert_no_early_acs_request(
    sessions: &[SessionRow],
    requests: &[RequestRecord],
    clock: SandboxClock,
) {
    let mut deadlines: HashMap<String, i64> = HashMap::new();
    for s in sessions {
        let Some(deadline) = s.deadline.as_deref().map(ms_of) else { continue };
        if s.room_kind == "call" {
            let earliest = deadlines.entry(s.room_id.clone()).or_insert(deadline);
            *earliest = (*earliest).min(deadline);
        }
    }
    for r in requests {
        let Some(call) = &r.room else { continue };
        let Some(deadline) = deadlines.get(call) else { continue };
        let latest = clock.latest_wall_ms(r);
        assert!(
            latest >= *deadline,
            "the sandbox saw {} for call {call} at the latest {} but its deadline is {}",
            r.action,
            text_of(latest),
            text_of(*deadline)
        );
    }
}

/// Every session of `ids` settled `enforced` or `already_ended`, with exactly
/// one settling audit event; `already_ended` only where a crash left an
/// earlier call unrecorded (a `recovered` event) or `allow_already_ended`.
pub(super) fn assert_each_settled_once(
    audit: &[AuditRow],
    sessions: &[SessionRow],
    ids: &[String],
    allow_already_ended: bool,
) {
    let mut by_session: HashMap<&str, Vec<&AuditRow>> = HashMap::new();
    for a in audit {
        if let Some(id) = &a.session_id {
            by_session.entry(id.as_str()).or_default().push(a);
        }
    }
    for row in sessions.iter().filter(|s| ids.contains(&s.id)) {
        let events = by_session.get(row.id.as_str()).cloned().unwrap_or_default();
        let finals: Vec<&str> =
            events.iter().map(|a| a.event.as_str()).filter(|e| FINAL_EVENTS.contains(e)).collect();
        assert_eq!(finals.len(), 1, "session {} settled {finals:?}: {row:#?}", row.id);
        assert_eq!(finals[0], row.state, "{row:#?}");
        match row.state.as_str() {
            "enforced" => {}
            "already_ended" => assert!(
                allow_already_ended || events.iter().any(|a| a.event == "recovered"),
                "{} ended already without an interrupted earlier call: {:?}",
                row.id,
                events.iter().map(|a| &a.event).collect::<Vec<_>>()
            ),
            _ => panic!("session {} is {}: {row:#?}", row.id, row.state),
        }
        // Record, then call: every call (attempt) has its row.
        let attempt_rows = events.iter().filter(|a| a.event == "attempt").count() as i64;
        assert!(attempt_rows >= row.attempts, "{}: {attempt_rows} attempt rows, {row:#?}", row.id);
    }
}
