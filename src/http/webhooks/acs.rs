//! ACS callbacks as they arrive: a JSON array of CloudEvents, parsed one
//! event at a time (an event that cannot be acted on is reported on its
//! own, and the others go on), and the `?token=` check (constant time).
//! ACS's signed JWT is checked in [`super::acs_jwt`]; what the events do,
//! and the relay to the application, are in [`super::acs_handler`].

use serde_json::Value;
use subtle::ConstantTimeEq;

use super::GateRefusal;
use crate::domain::{Instant, Room, SessionId, UserId};

/// `resultInformation` of an ACS event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResultInfo {
    pub code: Option<i64>,
    pub sub_code: Option<i64>,
    pub message: Option<String>,
}

impl ResultInfo {
    pub fn describe(&self) -> String {
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
    /// The full current roster of a call, ordered by `sequence`, or by the
    /// event's time when ACS leaves the (optional) sequence number out.
    ParticipantsUpdated {
        call: String,
        sequence: Option<i64>,
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

/// One event of a batch: parsed, or why it cannot be acted on.
pub type ParsedEvent = Result<AcsEvent, String>;

/// Parses a callback body: a CloudEvents array (or a single event). The
/// body is refused only when it is not one; each event that lacks what its
/// type requires is an `Err` of its own, and the others are parsed.
pub fn parse_acs_events(body: &[u8]) -> Result<Vec<ParsedEvent>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let events = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        _ => return Err("body is neither a CloudEvents array nor an event".into()),
    };
    Ok(events
        .iter()
        .enumerate()
        .map(|(i, e)| parse_event(e).map_err(|m| format!("event {i}: {m}")))
        .collect())
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
            // Optional in the spec, and absent from the SDKs' own samples.
            let sequence = match data.get("sequenceNumber") {
                None | Some(Value::Null) => None,
                Some(n) => Some(n.as_i64().ok_or("data.sequenceNumber is not an integer")?),
            };
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

/// The ACS webhook's token gate, without I/O: the query's `token` must
/// equal `secret` (compared in constant time), then the body must be a
/// CloudEvents batch. The handler answers 401 or 400 from the
/// [`GateRefusal`]; kept apart from it so the gate can be fuzzed.
pub fn verify_acs_callback(
    secret: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<Vec<ParsedEvent>, GateRefusal> {
    if !token_matches(query, secret) {
        return Err(GateRefusal::Unauthorized);
    }
    parse_acs_events(body).map_err(GateRefusal::Malformed)
}

pub(super) fn token_matches(query: Option<&str>, secret: &str) -> bool {
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
        let events: Vec<AcsEvent> =
            parse_acs_events(body.as_bytes()).unwrap().into_iter().collect::<Result<_, _>>().unwrap();
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
    fn a_body_that_is_no_batch_is_refused_and_a_bad_event_fails_alone() {
        assert!(parse_acs_events(b"not json").is_err());
        assert!(parse_acs_events(b"42").is_err());
        let one = |body: &[u8]| parse_acs_events(body).unwrap();
        assert!(one(br#"[{"data":{}}]"#)[0].is_err());
        let missing_call = br#"[{"type":"Microsoft.Communication.CallDisconnected","data":{}}]"#;
        assert!(one(missing_call)[0].is_err());
        let one_bad =
            br#"[{"type":"Microsoft.Communication.CallDisconnected","data":{"callConnectionId":"c"}},{"type":1}]"#;
        let parsed = one(one_bad);
        assert_eq!(parsed[0], Ok(AcsEvent::CallDisconnected { call: "c".into(), at: None }));
        assert!(parsed[1].is_err());
        // Call ids that no session could name: control characters, a path, a megabyte.
        let long = "c".repeat(257);
        for call in ["call\u{0}id", "../x", "a b", long.as_str()] {
            let body = format!(
                r#"[{{"type":"Microsoft.Communication.CallDisconnected","data":{{"callConnectionId":{}}}}}]"#,
                serde_json::Value::from(call)
            );
            assert!(one(body.as_bytes())[0].is_err(), "{call:?}");
        }
    }

    #[test]
    fn a_roster_without_a_sequence_number_is_valid() {
        // As in the Java SDK's own fixtures: no sequenceNumber.
        let body = br#"[{"type":"Microsoft.Communication.ParticipantsUpdated","time":"2026-11-29T10:00:00.1234567Z",
            "data":{"callConnectionId":"c1","correlationId":"x","participants":[{"identifier":{"rawId":"8:acs:u1","kind":"communicationUser"},"isMuted":false}]}}]"#;
        let parsed = parse_acs_events(body).unwrap();
        let Ok(AcsEvent::ParticipantsUpdated { sequence, participants, at, .. }) = &parsed[0] else {
            panic!("{parsed:?}")
        };
        assert_eq!(*sequence, None);
        assert_eq!(participants.len(), 1);
        assert!(at.is_some());
        let bad_sequence = br#"[{"type":"Microsoft.Communication.ParticipantsUpdated","data":{"callConnectionId":"c1","sequenceNumber":"x","participants":[]}}]"#;
        assert!(parse_acs_events(bad_sequence).unwrap()[0].is_err());
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
