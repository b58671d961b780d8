//! The sandbox's ACS Call Automation API: `participants:remove` and
//! `:terminate` under `/calling/callConnections/`, checked as ACS does:
//! HMAC signature and content hash, `api-version` (one it does not serve is
//! a route not found: 404 without an error code), the quota (429 with
//! `Retry-After`), and repeatability (a repeated request id gets the first
//! answer again, with `Repeatability-Result: accepted`, and does nothing).
//! The events that follow are posted by [`super::acs_calls`].

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::header;
use super::{SandboxState, StoredAnswer};
use crate::domain::session::REPEATABILITY_WINDOW;
use crate::providers::acs::{content_hash, signature, string_to_sign};

/// The clock skew the sandbox accepts on `x-ms-date`.
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

fn answer(status: u16, body: Option<Value>) -> StoredAnswer {
    StoredAnswer { status, body: body.map(|b| b.to_string()) }
}

fn error(status: u16, code: &str, message: &str) -> StoredAnswer {
    answer(status, Some(json!({ "error": { "code": code, "message": message } })))
}

/// What ACS's front end answers for a path or api-version it does not
/// serve: ASP.NET's message, no error code.
fn route_not_found(uri: &Uri) -> StoredAnswer {
    let message = format!("No HTTP resource was found that matches the request URI 'https://sandbox{uri}'.");
    answer(404, Some(json!({ "Message": message })))
}

/// The `api-version` must be one the sandbox serves; a retired or mistyped
/// one is a route not found.
fn check_api_version(uri: &Uri) -> Result<(), StoredAnswer> {
    match uri.query().unwrap_or_default().split('&').find_map(|kv| kv.strip_prefix("api-version=")) {
        None | Some("") => {
            Err(error(400, "MissingApiVersionParameter", "the api-version query parameter is required"))
        }
        Some(v) if !API_VERSIONS.contains(&v) => Err(route_not_found(uri)),
        Some(_) => Ok(()),
    }
}

/// `GET /calling/callConnections/{id}` (GetCall): a call an application
/// created, or 404/8522 as ACS answers for one it does not know.
pub(super) async fn get_call(
    State(state): State<Arc<SandboxState>>,
    Path(call): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let answer = match authenticate(&state, "GET", &headers, &uri, b"").and_then(|()| check_api_version(&uri))
    {
        Err(a) => a,
        Ok(()) => match state.call_callback(&call) {
            Some(callback) => answer(
                200,
                Some(
                    json!({ "callConnectionId": call, "callConnectionState": "connected", "callbackUri": callback }),
                ),
            ),
            None => error(404, "8522", "Call not found."),
        },
    };
    state.record("GetCall", Some(call), Vec::new(), &format!("HTTP{}", answer.status));
    respond(&answer, false, None)
}

/// The api-versions the sandbox serves (Call Automation's GA versions).
const API_VERSIONS: [&str; 3] = ["2023-10-15", "2024-09-15", "2025-05-15"];

fn respond(a: &StoredAnswer, replayed: bool, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match &a.body {
        Some(body) => (status, [("content-type", "application/json")], body.clone()).into_response(),
        None => status.into_response(),
    };
    if replayed {
        response.headers_mut().insert("repeatability-result", HeaderValue::from_static("accepted"));
    }
    if let Some(secs) = retry_after {
        response.headers_mut().insert("retry-after", HeaderValue::from(secs));
    }
    response
}

fn parse_http_date(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(s).ok().map(|t| t.with_timezone(&Utc))
}

/// Authentication as ACS checks it: date, content hash, HMAC signature.
fn authenticate(
    state: &SandboxState,
    method: &str,
    headers: &HeaderMap,
    uri: &Uri,
    body: &[u8],
) -> Result<(), StoredAnswer> {
    let unauthorized = |m: &str| error(401, "7509", m);
    // Microsoft Entra ID: a bearer token the sandbox's Entra issued.
    if let Some(token) = header(headers, "authorization").and_then(|a| a.strip_prefix("Bearer ")) {
        return if state.entra_token_valid(token) {
            Ok(())
        } else {
            Err(error(401, "InvalidAuthenticationToken", "the bearer token is invalid or expired"))
        };
    }
    let date = header(headers, "x-ms-date").ok_or_else(|| unauthorized("x-ms-date is missing"))?;
    let when = parse_http_date(date).ok_or_else(|| unauthorized("x-ms-date is not an RFC 1123 date"))?;
    if (Utc::now() - when).abs().to_std().unwrap_or_default() > MAX_SKEW {
        return Err(unauthorized("x-ms-date is too far from the server's clock"));
    }
    let hash = header(headers, "x-ms-content-sha256")
        .ok_or_else(|| unauthorized("x-ms-content-sha256 is missing"))?;
    if hash != content_hash(body) {
        return Err(unauthorized("x-ms-content-sha256 does not match the body"));
    }
    let auth = header(headers, "authorization").unwrap_or_default();
    let Some(given) =
        auth.strip_prefix("HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=")
    else {
        return Err(unauthorized("Authorization is not an HMAC-SHA256 header"));
    };
    let host = header(headers, "host").unwrap_or_default();
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let expected = signature(&state.options.acs_access_key, &string_to_sign(method, pq, date, host, hash))
        .unwrap_or_default();
    if !bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
        return Err(unauthorized("HMAC validation error"));
    }
    Ok(())
}

/// The repeatability pair: both or neither; the id a UUID, the date an IMF-fixdate.
fn repeatability(headers: &HeaderMap) -> Result<Option<(String, DateTime<Utc>)>, StoredAnswer> {
    match (header(headers, "repeatability-request-id"), header(headers, "repeatability-first-sent")) {
        (None, None) => Ok(None),
        (Some(id), Some(sent)) => {
            let id = uuid::Uuid::parse_str(id)
                .map_err(|_| error(400, "8523", "Repeatability-Request-ID is not a UUID"))?;
            let sent = parse_http_date(sent)
                .ok_or_else(|| error(400, "8523", "Repeatability-First-Sent is not an RFC 1123 date"))?;
            Ok(Some((id.to_string(), sent)))
        }
        _ => Err(error(400, "8523", "send Repeatability-Request-ID and Repeatability-First-Sent together")),
    }
}

pub(super) async fn handle(
    State(state): State<Arc<SandboxState>>,
    Path(rest): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A real service carries out a request it received even if the client
    // hangs up (a daemon killed mid-call); hyper cancels the handler on
    // disconnect, so the work runs in a task of its own.
    match tokio::spawn(handle_request(state, rest, uri, headers, body)).await {
        Ok(response) => response,
        Err(_) => respond(&error(500, "InternalError", "sandbox: the request handler failed"), false, None),
    }
}

async fn handle_request(
    state: Arc<SandboxState>,
    rest: String,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (call, action) = if let Some(call) = rest.strip_suffix("/participants:remove") {
        (call.to_string(), "RemoveParticipant")
    } else if let Some(call) = rest.strip_suffix(":terminate") {
        (call.to_string(), "TerminateCall")
    } else {
        return respond(&route_not_found(&uri), false, None);
    };
    let request_id = header(&headers, "repeatability-request-id").map(str::to_string);
    let finish = |a: StoredAnswer, participant: Option<String>, replayed: bool, retry_after: Option<u64>| {
        let label = if replayed { format!("HTTP{} (repeat)", a.status) } else { format!("HTTP{}", a.status) };
        let users = participant.into_iter().collect();
        state.record_with_id(action, Some(call.clone()), users, &label, request_id.clone());
        respond(&a, replayed, retry_after)
    };
    if let Err(a) = authenticate(&state, "POST", &headers, &uri, &body) {
        return finish(a, None, false, None);
    }
    if let Err(a) = check_api_version(&uri) {
        return finish(a, None, false, None);
    }
    if state.over_quota(action) {
        return finish(error(429, "TooManyRequests", "too many requests"), None, false, Some(1));
    }
    let repeat = match repeatability(&headers) {
        Ok(r) => r,
        Err(a) => return finish(a, None, false, None),
    };
    if let Some((id, first_sent)) = &repeat {
        if (Utc::now() - *first_sent).to_std().unwrap_or_default() > REPEATABILITY_WINDOW {
            return finish(
                error(412, "8583", "Repeatability-First-Sent is outside the repeatability window"),
                None,
                false,
                None,
            );
        }
        let first = state.lock().repeats.get(id).cloned();
        if let Some(first) = first {
            state.lock().stats.repeats_replayed += 1;
            return finish(first, None, true, None);
        }
        // The original is still being carried out: ACS answers 409 rather
        // than act twice.
        if !state.lock().repeats_in_progress.insert(id.clone()) {
            return finish(
                error(409, "Conflict", "a request with this Repeatability-Request-ID is in progress"),
                None,
                false,
                Some(1),
            );
        }
    }
    let response = carry_out(&state, action, &call, &headers, &body, repeat.as_ref().map(|(id, _)| id)).await;
    if let Some((id, _)) = &repeat {
        state.lock().repeats_in_progress.remove(id);
    }
    let (answer, participant, retry_after) = response;
    finish(answer, participant, false, retry_after)
}

/// Validates, applies faults, and carries out a request that passed the
/// checks; stores the answer under its repeatability id.
async fn carry_out(
    state: &Arc<SandboxState>,
    action: &'static str,
    call: &str,
    _headers: &HeaderMap,
    body: &[u8],
    repeat: Option<&String>,
) -> (StoredAnswer, Option<String>, Option<u64>) {
    let participant = match action {
        "RemoveParticipant" => match participant_of(body) {
            Ok(p) => Some(p),
            Err(a) => return (a, None, None),
        },
        _ => {
            if !body.is_empty() {
                return (error(400, "8523", ":terminate takes no body"), None, None);
            }
            None
        }
    };
    let mut outcome_event = None;
    if let Some(fault) = state.take_fault(action, Some(call)) {
        if fault.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
        }
        if let Some(status) = fault.http_status {
            let code = fault.code.unwrap_or_else(|| status.to_string());
            let message = fault.message.unwrap_or_else(|| "sandbox: injected fault".into());
            return (error(status, &code, &message), participant, fault.retry_after_secs);
        }
        outcome_event = fault.outcome_event;
    }
    let result = apply(state, action, call, participant.as_deref(), body);
    if result.status < 300 {
        report_outcome(state, action, call, body, outcome_event.as_deref());
    }
    // ACS remembers answers under the id, except server errors, which a
    // repeat executes again.
    if let Some(id) = repeat
        && result.status < 500
    {
        state.lock().repeats.insert(id.clone(), result.clone());
    }
    (result, participant, None)
}

/// Posts the events ACS would send after a successful request, signed: the
/// removal's outcome to its `operationCallbackUri` (or, without one, to
/// the call's callback URI) and the new roster to the call's callback URI;
/// `CallDisconnected` after a terminate to the call's callback URI.
/// Delivered in the background, a moment after the answer, as ACS does.
fn report_outcome(state: &Arc<SandboxState>, action: &str, call: &str, body: &[u8], outcome: Option<&str>) {
    if outcome == Some("none") {
        return;
    }
    if action != "RemoveParticipant" {
        state.call_ended(call);
        return;
    }
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let participant = participant_of(body).ok();
    let url = request
        .get("operationCallbackUri")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| state.call_callback(call));
    let (kind, result) = match outcome {
        Some("failed") => (
            "RemoveParticipantFailed",
            json!({ "code": 500, "subCode": 8500, "message": "sandbox: the removal failed" }),
        ),
        // The participant had already hung up when ACS got to it.
        Some("gone") => (
            "RemoveParticipantFailed",
            json!({ "code": 400, "subCode": 8558, "message": "Participant is not in the call." }),
        ),
        _ => (
            "RemoveParticipantSucceeded",
            json!({ "code": 200, "subCode": 0, "message": "Participant removed." }),
        ),
    };
    if let Some(url) = url {
        let data = json!({
            "callConnectionId": call,
            "operationContext": request.get("operationContext").cloned().unwrap_or(Value::Null),
            "participant": request.get("participantToRemove").cloned().unwrap_or(Value::Null),
            "resultInformation": result,
        });
        state.post_event(&url, call, kind, data);
    }
    if kind == "RemoveParticipantSucceeded"
        && let Some(p) = participant
    {
        state.participant_removed(call, &p);
    }
}

/// The participant's raw id from a `RemoveParticipantRequest`, type-checked.
fn participant_of(body: &[u8]) -> Result<String, StoredAnswer> {
    let bad = |m: &str| error(400, "8523", m);
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("the body is not JSON"))?;
    let p = v.get("participantToRemove").ok_or_else(|| bad("participantToRemove is required"))?;
    if let Some(ctx) = v.get("operationContext")
        && ctx.as_str().is_none_or(|c| c.len() > 5000)
    {
        return Err(bad("operationContext must be a string of at most 5000 characters"));
    }
    let raw = p
        .get("rawId")
        .and_then(Value::as_str)
        .or_else(|| p.pointer("/communicationUser/id").and_then(Value::as_str))
        .ok_or_else(|| bad("participantToRemove needs rawId or a kind-specific id"))?;
    Ok(raw.to_string())
}

fn apply(
    state: &SandboxState,
    action: &str,
    call: &str,
    participant: Option<&str>,
    body: &[u8],
) -> StoredAnswer {
    let mut inner = state.lock();
    if inner.terminated_calls.contains(call) {
        return error(404, "8522", "the call has ended");
    }
    match (action, participant) {
        ("TerminateCall", _) => {
            inner.terminated_calls.insert(call.to_string());
            inner.stats.calls_terminated += 1;
            answer(204, None)
        }
        (_, Some(p)) => {
            if !inner.removed_participants.insert((call.to_string(), p.to_string())) {
                return error(404, "8558", "the participant is not in the call");
            }
            inner.stats.participants_removed += 1;
            let context = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("operationContext").cloned())
                .unwrap_or(Value::Null);
            answer(202, Some(json!({ "operationContext": context })))
        }
        _ => error(400, "8523", "participantToRemove is required"),
    }
}
