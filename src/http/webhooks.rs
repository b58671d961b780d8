//! Provider callbacks. ACS Call Automation posts a JSON array of CloudEvents
//! to the `operationCallbackUri` callwarden sent with each removal; those
//! events settle sessions the provider had accepted:
//!
//! - `RemoveParticipantSucceeded` → `enforced` (audit `confirmed`);
//! - `RemoveParticipantFailed` → `failed`, with ACS's result code;
//! - `CallDisconnected` → every accepted session of that call `enforced`.
//!
//! Authentication is the `?token=` secret on the callback URL, compared in
//! constant time. (ACS also signs callbacks with a JWT; validating it needs
//! ACS's OpenID metadata, out of reach here: see the README.) Duplicates and
//! late events are harmless: a session already settled is left alone.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::domain::audit::AuditEntry;
use crate::domain::{Instant, Room, SessionId, SessionState, UserId};
use crate::intake::presence::{self, PresenceEvent};
use crate::policy::Presence;
use crate::store::StoreError;

/// `resultInformation` of an ACS event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResultInfo {
    pub code: Option<i64>,
    pub sub_code: Option<i64>,
    pub message: Option<String>,
}

impl ResultInfo {
    fn describe(&self) -> String {
        format!(
            "code {} subCode {}: {}",
            self.code.map_or("-".into(), |c| c.to_string()),
            self.sub_code.map_or("-".into(), |c| c.to_string()),
            self.message.as_deref().unwrap_or("")
        )
    }
}

/// An ACS callback event, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcsEvent {
    RemoveParticipant {
        succeeded: bool,
        /// From `operationContext`; `None` when the operation was not ours.
        session: Option<SessionId>,
        call: String,
        result: ResultInfo,
    },
    CallConnected {
        call: String,
        at: Option<Instant>,
    },
    CallDisconnected {
        call: String,
        at: Option<Instant>,
    },
    /// The full current roster of a call, ordered by `sequence`.
    ParticipantsUpdated {
        call: String,
        sequence: i64,
        participants: Vec<UserId>,
        at: Option<Instant>,
    },
    /// Any other event type; acknowledged and ignored.
    Other(String),
}

/// Parses a callback body: a CloudEvents array (or a single event). Refuses
/// the whole body if any event lacks what its type requires.
pub fn parse_acs_events(body: &[u8]) -> Result<Vec<AcsEvent>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let events = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        _ => return Err("body is neither a CloudEvents array nor an event".into()),
    };
    events.iter().enumerate().map(|(i, e)| parse_event(e).map_err(|m| format!("event {i}: {m}"))).collect()
}

fn parse_event(event: &Value) -> Result<AcsEvent, String> {
    let kind = event.get("type").and_then(Value::as_str).ok_or("no type")?;
    let name = kind.strip_prefix("Microsoft.Communication.").unwrap_or(kind);
    let data = || event.get("data").filter(|d| d.is_object()).ok_or("no data object");
    let call = |data: &Value| {
        data.get("callConnectionId")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .ok_or("no data.callConnectionId")
    };
    match name {
        "RemoveParticipantSucceeded" | "RemoveParticipantFailed" => {
            let data = data()?;
            let result = data.get("resultInformation");
            Ok(AcsEvent::RemoveParticipant {
                succeeded: name == "RemoveParticipantSucceeded",
                session: data.get("operationContext").and_then(Value::as_str).and_then(|c| c.parse().ok()),
                call: call(data)?,
                result: ResultInfo {
                    code: result.and_then(|r| r.get("code")).and_then(Value::as_i64),
                    sub_code: result.and_then(|r| r.get("subCode")).and_then(Value::as_i64),
                    message: result
                        .and_then(|r| r.get("message"))
                        .and_then(Value::as_str)
                        .map(str::to_string),
                },
            })
        }
        "CallDisconnected" => Ok(AcsEvent::CallDisconnected { call: call(data()?)?, at: event_time(event) }),
        "CallConnected" => Ok(AcsEvent::CallConnected { call: call(data()?)?, at: event_time(event) }),
        "ParticipantsUpdated" => {
            let data = data()?;
            let sequence =
                data.get("sequenceNumber").and_then(Value::as_i64).ok_or("no data.sequenceNumber")?;
            let list =
                data.get("participants").and_then(Value::as_array).ok_or("no data.participants array")?;
            let participants = list
                .iter()
                .map(|p| {
                    p.pointer("/identifier/rawId")
                        .and_then(Value::as_str)
                        .ok_or("a participant without identifier.rawId".to_string())
                        .and_then(|raw| UserId::parse(raw).map_err(|e| e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(AcsEvent::ParticipantsUpdated {
                call: call(data)?,
                sequence,
                participants,
                at: event_time(event),
            })
        }
        other => Ok(AcsEvent::Other(other.to_string())),
    }
}

fn event_time(event: &Value) -> Option<Instant> {
    event.get("time").and_then(Value::as_str).and_then(|t| Instant::parse(t).ok())
}

/// Why a provider callback was refused before anything was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The credential (TRTC's `Sign`, ACS's `?token=`) is missing or wrong.
    Unauthorized,
    /// Authenticated, but not a callback this daemon understands; the reason
    /// goes back to the sender.
    Malformed(String),
}

/// The ACS webhook's gate, without I/O: the query's `token` must equal
/// `secret` (compared in constant time), then the whole body must parse.
/// The handler answers 401 or 400 from the [`Refusal`]; kept apart from it so
/// the gate can be fuzzed.
pub fn verify_acs_callback(secret: &str, query: Option<&str>, body: &[u8]) -> Result<Vec<AcsEvent>, Refusal> {
    if !token_matches(query, secret) {
        return Err(Refusal::Unauthorized);
    }
    parse_acs_events(body).map_err(Refusal::Malformed)
}

fn token_matches(query: Option<&str>, secret: &str) -> bool {
    let Some(query) = query else { return false };
    url_token(query).is_some_and(|given| bool::from(given.as_bytes().ct_eq(secret.as_bytes())))
}

/// The decoded `token` parameter of a query string.
fn url_token(query: &str) -> Option<String> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

pub(super) async fn acs(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let Some(secret) = &state.acs_secret else {
        return (StatusCode::NOT_FOUND, "the ACS webhook is not configured\n").into_response();
    };
    let events = match verify_acs_callback(secret.expose(), query.as_deref(), &body) {
        Ok(events) => events,
        Err(Refusal::Unauthorized) => {
            crate::metrics::webhook("acs", "unauthorized");
            tracing::warn!("refused an ACS callback without the right token");
            return (StatusCode::UNAUTHORIZED, "missing or wrong token\n").into_response();
        }
        Err(Refusal::Malformed(reason)) => {
            crate::metrics::webhook("acs", "malformed");
            tracing::warn!(%reason, "refused a malformed ACS callback");
            return (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response();
        }
    };
    let (mut changed, mut ignored) = (0u32, 0u32);
    for event in events {
        match apply_acs_event(&state, &event).await {
            Ok(0) => {
                tracing::debug!(?event, "ACS event changes nothing here");
                ignored += 1;
            }
            Ok(n) => {
                tracing::info!(?event, sessions = n, "ACS event applied");
                changed += n;
            }
            // ACS retries a delivery that fails; events already applied are
            // no-ops the second time.
            Err(e) => {
                crate::metrics::webhook("acs", "unavailable");
                tracing::error!(error = %e, "cannot record an ACS event; asking ACS to retry");
                return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response();
            }
        }
    }
    if changed > 0 {
        state.wake_scheduler();
    }
    crate::metrics::webhook("acs", "accepted");
    (StatusCode::OK, axum::Json(json!({ "changed": changed, "ignored": ignored }))).into_response()
}

/// The configured ACS providers' names, in file order.
fn acs_providers(state: &AppState) -> Vec<String> {
    state
        .config
        .current()
        .providers
        .values()
        .filter(|p| matches!(p.settings, crate::config::ProviderSettings::Acs(_)))
        .map(|p| p.name.clone())
        .collect()
}

/// Applies one ACS event; returns how many sessions it changed.
async fn apply_acs_event(state: &AppState, event: &AcsEvent) -> Result<u32, StoreError> {
    let now = state.clock.now();
    match event {
        AcsEvent::RemoveParticipant { succeeded, session: Some(id), call, result } => {
            let (state_to, entry) = if *succeeded {
                let e = AuditEntry::new("confirmed", *id)
                    .detail(format!("RemoveParticipantSucceeded on call {call}"));
                (SessionState::Enforced, e)
            } else {
                let e = AuditEntry {
                    error_code: Some(format!(
                        "{}/{}",
                        result.code.unwrap_or_default(),
                        result.sub_code.unwrap_or_default()
                    )),
                    ..AuditEntry::new("failed", *id)
                        .detail(format!("RemoveParticipantFailed on call {call}: {}", result.describe()))
                };
                (SessionState::Failed, e)
            };
            Ok(u32::from(state.store.confirm_session(*id, state_to, &entry, now).await?))
        }
        AcsEvent::RemoveParticipant { session: None, .. } | AcsEvent::Other(_) => Ok(0),
        AcsEvent::CallDisconnected { call, at } => {
            // Ordered against CallConnected by the provider's clock, not ours.
            let at = at.unwrap_or(now);
            let entry = AuditEntry {
                event: "confirmed",
                detail: Some(format!("CallDisconnected: call {call} ended")),
                ..AuditEntry::default()
            };
            let confirmed = state.store.confirm_call(call, &entry, now).await?;
            let room = Room::Call(call.clone());
            let mut changed = confirmed as u32;
            for provider in acs_providers(state) {
                let event = PresenceEvent {
                    provider: &provider,
                    sdk_app_id: None,
                    room: &room,
                    presence: &Presence::RoomClosed,
                    at,
                };
                changed += presence::record_and_apply(state.intake(), &event).await?;
            }
            Ok(changed)
        }
        AcsEvent::CallConnected { call, at } => {
            let room = Room::Call(call.clone());
            let at = at.unwrap_or(now);
            let mut changed = 0;
            for provider in acs_providers(state) {
                let event = PresenceEvent {
                    provider: &provider,
                    sdk_app_id: None,
                    room: &room,
                    presence: &Presence::RoomOpened,
                    at,
                };
                changed += presence::record_and_apply(state.intake(), &event).await?;
            }
            Ok(changed)
        }
        AcsEvent::ParticipantsUpdated { call, sequence, participants, at } => {
            let room = Room::Call(call.clone());
            let at = at.unwrap_or(now);
            let mut changed = 0;
            for provider in acs_providers(state) {
                changed +=
                    presence::apply_roster(state.intake(), &provider, &room, *sequence, participants, at)
                        .await?;
            }
            Ok(changed)
        }
    }
}

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
}

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
        .or_else(|| info.get("EventTs").and_then(Value::as_i64).map(|s| s * 1000))
        .unwrap_or(callback_ts);
    let user = || -> Result<UserId, String> {
        let id = info.get("UserId").and_then(Value::as_str).ok_or("no EventInfo.UserId")?;
        UserId::parse(id).map_err(|e| e.to_string())
    };
    let presence = match (group, kind) {
        (1, 101) => Some(Presence::RoomOpened),
        (1, 102) => Some(Presence::RoomClosed),
        (1, 103) => Some(Presence::Entered(user()?)),
        (1, 104) => Some(Presence::Left(user()?)),
        _ => None,
    };
    Ok(TrtcEvent { room, presence, at_ms, kind })
}

/// The TRTC webhook's gate, without I/O: the `Sign` header must be the
/// callback signature of the body under `callback_key` (compared in constant
/// time); then the body must parse, and the `SdkAppId` header name an
/// application, which is returned with the event. The handler answers 401 or
/// 400 from the [`Refusal`]; kept apart from it so the gate can be fuzzed.
pub fn verify_trtc_callback(
    callback_key: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(TrtcEvent, u64), Refusal> {
    let sign = headers.get("sign").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let expected = crate::providers::trtc::callback_signature(callback_key, body);
    if !bool::from(expected.as_bytes().ct_eq(sign.as_bytes())) {
        return Err(Refusal::Unauthorized);
    }
    let event = parse_trtc_event(body).map_err(Refusal::Malformed)?;
    let sdk_app_id = headers
        .get("sdkappid")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| Refusal::Malformed("the SdkAppId header is missing".into()))?;
    Ok((event, sdk_app_id))
}

/// `POST /webhooks/trtc`: TRTC room callbacks open and end sessions.
pub(super) async fn trtc(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(key) = &state.trtc_callback_key else {
        return (StatusCode::NOT_FOUND, "the TRTC webhook is not configured\n").into_response();
    };
    let (event, sdk_app_id) = match verify_trtc_callback(key.expose(), &headers, &body) {
        Ok((event, sdk_app_id)) => (event, Some(sdk_app_id)),
        Err(Refusal::Unauthorized) => {
            crate::metrics::webhook("trtc", "unauthorized");
            tracing::warn!("refused a TRTC callback with a missing or wrong Sign");
            return (StatusCode::UNAUTHORIZED, "missing or wrong Sign\n").into_response();
        }
        Err(Refusal::Malformed(reason)) => {
            crate::metrics::webhook("trtc", "malformed");
            tracing::warn!(%reason, "refused a malformed TRTC callback");
            return (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response();
        }
    };
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
        let observed = PresenceEvent { provider, sdk_app_id, room: &event.room, presence, at };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_events_parse_into_outcomes() {
        let id = SessionId::new();
        let body = format!(
            r#"[{{"id":"1","source":"calling/callConnections/c1","type":"Microsoft.Communication.RemoveParticipantSucceeded",
                 "data":{{"callConnectionId":"c1","operationContext":"{id}","resultInformation":{{"code":200,"subCode":0,"message":"ok"}}}},
                 "specversion":"1.0"}},
                {{"type":"Microsoft.Communication.CallDisconnected","data":{{"callConnectionId":"c1"}}}},
                {{"type":"Microsoft.Communication.PlayCompleted","data":{{"callConnectionId":"c1"}}}}]"#
        );
        let events = parse_acs_events(body.as_bytes()).unwrap();
        assert_eq!(
            events[0],
            AcsEvent::RemoveParticipant {
                succeeded: true,
                session: Some(id),
                call: "c1".into(),
                result: ResultInfo { code: Some(200), sub_code: Some(0), message: Some("ok".into()) },
            }
        );
        assert_eq!(events[1], AcsEvent::CallDisconnected { call: "c1".into(), at: None });
        assert_eq!(events[2], AcsEvent::Other("PlayCompleted".into()));
    }

    #[test]
    fn malformed_bodies_are_refused_whole() {
        assert!(parse_acs_events(b"not json").is_err());
        assert!(parse_acs_events(b"42").is_err());
        assert!(parse_acs_events(br#"[{"data":{}}]"#).is_err());
        let missing_call = br#"[{"type":"Microsoft.Communication.CallDisconnected","data":{}}]"#;
        assert!(parse_acs_events(missing_call).is_err());
        let one_bad =
            br#"[{"type":"Microsoft.Communication.CallDisconnected","data":{"callConnectionId":"c"}},{"type":1}]"#;
        assert!(parse_acs_events(one_bad).is_err());
    }

    #[test]
    fn the_token_must_match_exactly() {
        assert!(token_matches(Some("token=s3cret"), "s3cret"));
        assert!(token_matches(Some("a=1&token=s%33cret"), "s3cret"));
        assert!(!token_matches(Some("token=s3cre"), "s3cret"));
        assert!(!token_matches(Some("token=s3crett"), "s3cret"));
        assert!(!token_matches(None, "s3cret"));
        assert!(!token_matches(Some("tok=s3cret"), "s3cret"));
    }
}
