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
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::domain::{SessionId, SessionState};
use crate::store::AuditEntry;

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
    CallDisconnected {
        call: String,
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
        "CallDisconnected" => Ok(AcsEvent::CallDisconnected { call: call(data()?)? }),
        other => Ok(AcsEvent::Other(other.to_string())),
    }
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
    if !token_matches(query.as_deref(), secret.expose()) {
        crate::metrics::webhook("acs", "unauthorized");
        tracing::warn!("refused an ACS callback without the right token");
        return (StatusCode::UNAUTHORIZED, "missing or wrong token\n").into_response();
    }
    let events = match parse_acs_events(&body) {
        Ok(events) => events,
        Err(reason) => {
            crate::metrics::webhook("acs", "malformed");
            tracing::warn!(%reason, "refused a malformed ACS callback");
            return (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response();
        }
    };
    let (mut settled, mut ignored) = (0u32, 0u32);
    for event in events {
        let now = state.clock.now();
        let outcome = match &event {
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
                state.store.confirm_session(*id, state_to, &entry, now).await.map(u32::from)
            }
            AcsEvent::CallDisconnected { call } => {
                let entry = AuditEntry {
                    event: "confirmed",
                    detail: Some(format!("CallDisconnected: call {call} ended")),
                    ..AuditEntry::default()
                };
                state.store.confirm_call(call, &entry, now).await.map(|n| n as u32)
            }
            AcsEvent::RemoveParticipant { session: None, .. } | AcsEvent::Other(_) => Ok(0),
        };
        match outcome {
            Ok(0) => {
                tracing::debug!(?event, "ACS event settles nothing here");
                ignored += 1;
            }
            Ok(n) => {
                tracing::info!(?event, sessions = n, "ACS reported an outcome");
                settled += n;
            }
            // ACS retries a delivery that fails; events already applied are
            // no-ops the second time.
            Err(e) => {
                crate::metrics::webhook("acs", "unavailable");
                tracing::error!(error = %e, "cannot record an ACS outcome; asking ACS to retry");
                return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response();
            }
        }
    }
    crate::metrics::webhook("acs", "accepted");
    (StatusCode::OK, axum::Json(json!({ "settled": settled, "ignored": ignored }))).into_response()
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
        assert_eq!(events[1], AcsEvent::CallDisconnected { call: "c1".into() });
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
