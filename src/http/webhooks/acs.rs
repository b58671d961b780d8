//! ACS callbacks: a JSON array of CloudEvents, authenticated by the
//! `?token=` secret on the callback URL (compared in constant time).
//!
//! Operation callbacks settle removals the provider had accepted
//! (`RemoveParticipantSucceeded` → `enforced`, audit `confirmed`;
//! `RemoveParticipantFailed` → `failed` with ACS's result code;
//! `CallDisconnected` → every accepted session of that call `enforced`).
//! Call events (`CallConnected`, `ParticipantsUpdated`, `CallDisconnected`)
//! are presence, applied through `intake::presence`. Duplicates and late
//! events are harmless: a session already settled is left alone.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::{GateRefusal, refusal_response};
use crate::domain::audit::AuditEntry;
use crate::domain::{Instant, Room, SessionId, SessionState, UserId};
use crate::http::AppState;
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

impl AcsEvent {
    /// The event's type, for logs.
    pub fn kind(&self) -> &str {
        match self {
            AcsEvent::RemoveParticipant { succeeded: true, .. } => "RemoveParticipantSucceeded",
            AcsEvent::RemoveParticipant { succeeded: false, .. } => "RemoveParticipantFailed",
            AcsEvent::CallConnected { .. } => "CallConnected",
            AcsEvent::CallDisconnected { .. } => "CallDisconnected",
            AcsEvent::ParticipantsUpdated { .. } => "ParticipantsUpdated",
            AcsEvent::Other(kind) => kind,
        }
    }

    /// The call connection it concerns, if any.
    pub fn call(&self) -> Option<&str> {
        match self {
            AcsEvent::RemoveParticipant { call, .. }
            | AcsEvent::CallConnected { call, .. }
            | AcsEvent::CallDisconnected { call, .. }
            | AcsEvent::ParticipantsUpdated { call, .. } => Some(call),
            AcsEvent::Other(_) => None,
        }
    }
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
    // A call id as sessions store it (at most 256 unreserved characters):
    // anything else is no call of ours, and is refused before it is stored.
    let call = |data: &Value| {
        data.get("callConnectionId")
            .and_then(Value::as_str)
            .filter(|c| Room::call(c).is_ok())
            .map(str::to_string)
            .ok_or("no valid data.callConnectionId (1 to 256 of A-Z a-z 0-9 - . _ ~)")
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

/// The ACS webhook's gate, without I/O: the query's `token` must equal
/// `secret` (compared in constant time), then the whole body must parse.
/// The handler answers 401 or 400 from the [`GateRefusal`]; kept apart from it so
/// the gate can be fuzzed.
pub fn verify_acs_callback(
    secret: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<Vec<AcsEvent>, GateRefusal> {
    if !token_matches(query, secret) {
        return Err(GateRefusal::Unauthorized);
    }
    parse_acs_events(body).map_err(GateRefusal::Malformed)
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

/// `POST /webhooks/acs`: ACS callbacks settle accepted removals and open
/// and end sessions on call events.
pub(in crate::http) async fn handle(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    let Some(secret) = &state.acs_secret else {
        return (StatusCode::NOT_FOUND, "the ACS webhook is not configured\n").into_response();
    };
    // The token is in the URL: the body is read only for a caller that has it.
    if !token_matches(query.as_deref(), secret.expose()) {
        return refusal_response("acs", "token", GateRefusal::Unauthorized);
    }
    let Ok(body) = axum::body::to_bytes(body, crate::http::BODY_LIMIT).await else {
        return refusal_response(
            "acs",
            "token",
            GateRefusal::Malformed("the body is incomplete or too large".into()),
        );
    };
    // The token was checked above; what is left of the gate is the parse.
    let events = match parse_acs_events(&body) {
        Ok(events) => events,
        Err(reason) => return refusal_response("acs", "token", GateRefusal::Malformed(reason)),
    };
    let (mut changed, mut ignored) = (0u32, 0u32);
    for event in events {
        match apply_acs_event(&state, &event).await {
            Ok(0) => {
                tracing::debug!(?event, "ACS event changes nothing here");
                ignored += 1;
            }
            Ok(n) => {
                // Participant ids (phone numbers among them) only at debug.
                tracing::info!(kind = event.kind(), call = event.call(), sessions = n, "ACS event applied");
                tracing::debug!(?event, "ACS event applied");
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
        // Call ids that no session could name: control characters, a path, a megabyte.
        let long = "c".repeat(257);
        for call in ["call\u{0}id", "../x", "a b", long.as_str()] {
            let body = format!(
                r#"[{{"type":"Microsoft.Communication.CallDisconnected","data":{{"callConnectionId":{}}}}}]"#,
                serde_json::Value::from(call)
            );
            assert!(parse_acs_events(body.as_bytes()).is_err(), "{call:?}");
        }
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
