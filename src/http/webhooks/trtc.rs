//! TRTC room callbacks (events 101–104: room created and dismissed, a
//! participant entered or left), authenticated by the `Sign` header (the
//! callback key's HMAC of the body, compared in constant time), refused
//! when `CallbackTs` is more than five minutes from now (the signature has
//! no timestamp, so this is the replay window), applied as presence through
//! `intake::presence`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::{GateRefusal, refusal_response};
use crate::domain::{Instant, Room, UserId};
use crate::http::AppState;
use crate::intake::presence::{self, Cause, PresenceEvent};
use crate::policy::Presence;

/// A TRTC room callback, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrtcEvent {
    pub room: Room,
    /// `None` for events that open or close nothing (media, role changes).
    pub presence: Option<Presence>,
    /// When it happened, in Unix milliseconds (`EventMsTs`).
    pub at_ms: i64,
    /// The event type number, for logs.
    pub kind: i64,
    /// When TRTC sent the callback, in Unix milliseconds (`CallbackTs`).
    pub callback_ms: i64,
    /// Why the participant entered or left (`EventInfo.Reason`).
    pub cause: Cause,
}

/// How far `CallbackTs` may be from now. TRTC retries for one minute after
/// the first try, so a genuine delivery is always well inside; a captured
/// callback replayed later is not.
pub const MAX_CALLBACK_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// Parses a TRTC room/media callback body. Unknown fields are tolerated (TRTC
/// adds fields over time); missing or mistyped ones refuse the body.
pub fn parse_trtc_event(body: &[u8]) -> Result<TrtcEvent, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let int = |key: &str| v.get(key).and_then(Value::as_i64).ok_or(format!("no integer {key}"));
    let group = int("EventGroupId")?;
    let kind = int("EventType")?;
    let callback_ts = int("CallbackTs")?;
    let info = v.get("EventInfo").filter(|i| i.is_object()).ok_or("no EventInfo object")?;
    let room = match info.get("RoomId") {
        Some(Value::Number(n)) => Room::numeric(&n.to_string()).map_err(|e| e.to_string())?,
        Some(Value::String(s)) => Room::string(s).map_err(|e| e.to_string())?,
        _ => return Err("EventInfo.RoomId must be a number or a string".into()),
    };
    let at_ms = info
        .get("EventMsTs")
        .and_then(Value::as_i64)
        .or_else(|| info.get("EventTs").and_then(Value::as_i64).and_then(|s| s.checked_mul(1000)))
        .unwrap_or(callback_ts);
    let user = || -> Result<UserId, String> {
        let id = info.get("UserId").and_then(Value::as_str).ok_or("no EventInfo.UserId")?;
        UserId::parse(id).map_err(|e| e.to_string())
    };
    let reason = info.get("Reason").and_then(Value::as_i64);
    let cause = match (group, kind, reason) {
        // Entered after a network switch (2) or a timeout retry (3).
        (1, 103, Some(2 | 3)) => Cause::Reconnect,
        // Left because TRTC timed the participant out.
        (1, 104, Some(2)) => Cause::TimedOut,
        _ => Cause::Plain,
    };
    let presence = match (group, kind) {
        (1, 101) => Some(Presence::RoomOpened),
        (1, 102) => Some(Presence::RoomClosed),
        (1, 103) => Some(Presence::Entered(user()?)),
        (1, 104) => Some(Presence::Left(user()?)),
        _ => None,
    };
    Ok(TrtcEvent { room, presence, at_ms, kind, callback_ms: callback_ts, cause })
}

/// TRTC's own documentation shows room-dismissed (102) with `"RoomId":
/// "12345"`, a string, for a room its other events give as a number. A 102
/// naming an all-digit string room that has no active session, when the
/// numeric room of that number has some, closes the numeric room.
async fn dismissed_numeric_room(
    state: &AppState,
    provider: &str,
    event: &TrtcEvent,
) -> Result<Option<Room>, crate::store::StoreError> {
    let (Some(Presence::RoomClosed), Room::Str(s)) = (&event.presence, &event.room) else { return Ok(None) };
    let Ok(numeric) = Room::numeric(s) else { return Ok(None) };
    if !s.bytes().all(|b| b.is_ascii_digit()) || state.store.active_in_room(provider, &event.room).await? > 0
    {
        return Ok(None);
    }
    Ok((state.store.active_in_room(provider, &numeric).await? > 0).then_some(numeric))
}

/// The TRTC webhook's gate, without I/O: the `Sign` header must be the
/// callback signature of the body under `callback_key` (compared in constant
/// time); then the body must parse, and the `SdkAppId` header name an
/// application, which is returned with the event. The handler answers 401 or
/// 400 from the [`GateRefusal`]; kept apart from it so the gate can be fuzzed.
pub fn verify_trtc_callback(
    callback_key: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(TrtcEvent, u64), GateRefusal> {
    let sign = headers.get("sign").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let expected = crate::providers::trtc::callback_signature(callback_key, body);
    if !bool::from(expected.as_bytes().ct_eq(sign.as_bytes())) {
        return Err(GateRefusal::Unauthorized);
    }
    let event = parse_trtc_event(body).map_err(GateRefusal::Malformed)?;
    Ok((event, sdk_app_id(headers)?))
}

/// The application a TRTC callback names in its `SdkAppId` header (which
/// the signature does not cover).
fn sdk_app_id(headers: &HeaderMap) -> Result<u64, GateRefusal> {
    headers
        .get("sdkappid")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| GateRefusal::Malformed("the SdkAppId header is missing".into()))
}

/// `POST /webhooks/trtc`: TRTC room callbacks open and end sessions.
pub(in crate::http) async fn handle(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if state.trtc_callback_keys.is_empty() {
        return (StatusCode::NOT_FOUND, "the TRTC webhook is not configured\n").into_response();
    }
    // The application's own key: a body signed for one application is not
    // taken for another's by changing the (unsigned) SdkAppId header.
    let key = match sdk_app_id(&headers) {
        Ok(app) => state.trtc_callback_keys.for_app(app),
        Err(refusal) => return refusal_response("trtc", "Sign", refusal),
    };
    let Some(key) = key else {
        return refusal_response("trtc", "Sign", GateRefusal::Unauthorized);
    };
    let (event, sdk_app_id) = match verify_trtc_callback(key.expose(), &headers, &body) {
        Ok((event, sdk_app_id)) => (event, Some(sdk_app_id)),
        Err(refusal) => return refusal_response("trtc", "Sign", refusal),
    };
    let now = state.clock.now();
    let sent = Instant::from_millis(event.callback_ms);
    if sent < now.saturating_sub(MAX_CALLBACK_SKEW) || sent > now.saturating_add(MAX_CALLBACK_SKEW) {
        let reason =
            format!("CallbackTs {sent} is more than 5 minutes from now: a replay, or a clock far off");
        return refusal_response("trtc", "Sign", GateRefusal::Malformed(reason));
    }
    let ok = || (StatusCode::OK, axum::Json(json!({ "code": 0 }))).into_response();
    let Some(presence) = &event.presence else {
        crate::metrics::webhook("trtc", "ignored");
        return ok();
    };
    let providers: Vec<String> = state
        .config
        .current()
        .providers
        .values()
        .filter(|p| matches!(&p.settings, crate::config::ProviderSettings::Trtc(t) if Some(t.sdk_app_id) == sdk_app_id))
        .map(|p| p.name.clone())
        .collect();
    let mut changed = 0;
    for provider in &providers {
        let at = Instant::from_millis(event.at_ms);
        const AS_STRING: &str = "TRTC named the numeric room as a string";
        let (room, note) = match dismissed_numeric_room(&state, provider, &event).await {
            Ok(Some(numeric)) => {
                tracing::info!(room = %event.room, "a room-dismissed callback named numeric room {numeric} as a string; closed it");
                (numeric, Some(AS_STRING))
            }
            Ok(None) => (event.room.clone(), None),
            Err(e) => {
                crate::metrics::webhook("trtc", "unavailable");
                tracing::error!(error = %e, "cannot read sessions for a TRTC event; TRTC retries for a minute");
                return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response();
            }
        };
        let observed =
            PresenceEvent { provider, sdk_app_id, room: &room, presence, at, cause: event.cause, note };
        match presence::record_and_apply(state.intake(), &observed).await {
            Ok(n) => changed += n,
            Err(e) => {
                crate::metrics::webhook("trtc", "unavailable");
                tracing::error!(error = %e, "cannot record a TRTC event; TRTC retries for a minute");
                return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response();
            }
        }
    }
    if changed > 0 {
        state.wake_scheduler();
    }
    tracing::debug!(kind = event.kind, room = %event.room, changed, "TRTC event");
    crate::metrics::webhook("trtc", if changed > 0 { "applied" } else { "ignored" });
    ok()
}
