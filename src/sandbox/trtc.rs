//! The sandbox's TRTC API: `POST /` with TC3-signed headers and a JSON body,
//! checked in the order the real gateway does (authentication, quota, then
//! parameters), answered with HTTP 200 and TRTC's `{"Response": ...}` shape.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use super::SandboxState;
use super::header;
use crate::config::TRTC_REGIONS;
use crate::providers::trtc::{
    ACTIONS, MAX_CLOCK_SKEW, MAX_USERS_PER_CALL, Tc3Input, VERSION, parse_authorization, signature,
};

/// An error answer: TRTC's code and message.
struct SandboxError(String, String);

impl SandboxError {
    fn new(code: impl Into<String>, message: impl Into<String>) -> SandboxError {
        SandboxError(code.into(), message.into())
    }
}

fn envelope(error: Option<&SandboxError>) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let body = match error {
        None => json!({ "Response": { "RequestId": request_id } }),
        Some(SandboxError(code, message)) => json!({
            "Response": { "Error": { "Code": code, "Message": message }, "RequestId": request_id }
        }),
    };
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// Authentication and common parameters, as the API gateway checks them.
fn check_request(
    state: &SandboxState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<&'static str, SandboxError> {
    let action = header(headers, "x-tc-action")
        .ok_or_else(|| SandboxError::new("MissingParameter", "the X-TC-Action header is missing"))?;
    let action = ACTIONS
        .into_iter()
        .find(|a| *a == action)
        .ok_or_else(|| SandboxError::new("InvalidAction", format!("action {action} does not exist")))?;
    match header(headers, "x-tc-version") {
        Some(VERSION) => {}
        Some(v) => return Err(SandboxError::new("NoSuchVersion", format!("version {v} does not exist"))),
        None => return Err(SandboxError::new("MissingParameter", "the X-TC-Version header is missing")),
    }
    match header(headers, "x-tc-region") {
        Some(r) if TRTC_REGIONS.contains(&r) => {}
        Some(r) => {
            return Err(SandboxError::new("UnsupportedRegion", format!("region {r} is not supported")));
        }
        None => return Err(SandboxError::new("MissingParameter", "the X-TC-Region header is missing")),
    }
    let timestamp: i64 = header(headers, "x-tc-timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| SandboxError::new("MissingParameter", "X-TC-Timestamp is missing or not a number"))?;
    let skew = (Utc::now().timestamp() - timestamp).unsigned_abs();
    if skew > MAX_CLOCK_SKEW.as_secs() {
        return Err(SandboxError::new(
            "AuthFailure.SignatureExpire",
            "the signature has expired; the timestamp is more than 5 minutes off",
        ));
    }
    let content_type = header(headers, "content-type").unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return Err(SandboxError::new(
            "InvalidRequest",
            format!("content type {content_type:?} is not supported for POST; use application/json"),
        ));
    }
    let host = header(headers, "host").unwrap_or_default();
    let auth = header(headers, "authorization").and_then(parse_authorization).ok_or_else(|| {
        SandboxError::new("AuthFailure.InvalidAuthorization", "the Authorization header is malformed")
    })?;
    if auth.secret_id != state.options.secret_id {
        return Err(SandboxError::new("AuthFailure.SecretIdNotFound", "the SecretId does not exist"));
    }
    let signed_action = match auth.signed_headers.as_str() {
        "content-type;host" => None,
        "content-type;host;x-tc-action" => Some(action),
        _ => {
            return Err(SandboxError::new(
                "AuthFailure.InvalidAuthorization",
                "SignedHeaders must be content-type;host[;x-tc-action]",
            ));
        }
    };
    let input = Tc3Input { host, service: "trtc", content_type, signed_action, timestamp, body };
    if auth.service != "trtc" || auth.date != input.date() {
        return Err(SandboxError::new(
            "AuthFailure.SignatureFailure",
            "the credential scope does not match the timestamp and service",
        ));
    }
    let expected = signature(&state.options.secret_key, &input);
    if !bool::from(expected.as_bytes().ct_eq(auth.signature.as_bytes())) {
        return Err(SandboxError::new("AuthFailure.SignatureFailure", "the signature does not match"));
    }
    Ok(action)
}

/// The body's parameters, typed as each action requires.
struct Params {
    room: RoomParam,
    users: Vec<String>,
}

enum RoomParam {
    Numeric(u64),
    Str(String),
}

impl RoomParam {
    fn text(&self) -> String {
        match self {
            RoomParam::Numeric(n) => n.to_string(),
            RoomParam::Str(s) => s.clone(),
        }
    }
}

fn check_params(state: &SandboxState, action: &str, body: &[u8]) -> Result<Params, SandboxError> {
    let params: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| SandboxError::new("InvalidParameter", format!("the body is not a JSON object: {e}")))?;
    let removes = action.starts_with("RemoveUser");
    let string_room = action.ends_with("ByStrRoomId");
    for key in params.keys() {
        let known = key == "SdkAppId" || key == "RoomId" || (removes && key == "UserIds");
        if !known {
            return Err(SandboxError::new(
                "UnknownParameter",
                format!("the parameter {key} is not recognized"),
            ));
        }
    }
    match params.get("SdkAppId") {
        None => return Err(SandboxError::new("MissingParameter.SdkAppId", "SdkAppId is missing")),
        Some(Value::Number(n)) if n.as_u64().is_some() => {
            if n.as_u64() != Some(state.options.sdk_app_id) {
                return Err(SandboxError::new(
                    "UnauthorizedOperation.SdkAppId",
                    "the SdkAppId does not belong to this account",
                ));
            }
        }
        Some(_) => return Err(SandboxError::new("InvalidParameter.SdkAppId", "SdkAppId must be an Integer")),
    }
    let room = match (params.get("RoomId"), string_room) {
        (None, _) => return Err(SandboxError::new("MissingParameter.RoomId", "RoomId is missing")),
        (Some(Value::Number(n)), false) => match n.as_u64() {
            Some(r) if (1..=4_294_967_294).contains(&r) => RoomParam::Numeric(r),
            _ => {
                return Err(SandboxError::new(
                    "InvalidParameterValue.RoomId",
                    format!("RoomId {n} is out of range"),
                ));
            }
        },
        (Some(Value::String(s)), true) => {
            if s.is_empty() || s.len() > 64 {
                return Err(SandboxError::new(
                    "InvalidParameterValue.RoomId",
                    "RoomId must be 1 to 64 bytes",
                ));
            }
            RoomParam::Str(s.clone())
        }
        (Some(_), false) => {
            return Err(SandboxError::new("InvalidParameter.RoomId", "RoomId must be an Integer"));
        }
        (Some(_), true) => {
            return Err(SandboxError::new("InvalidParameter.RoomId", "RoomId must be a String"));
        }
    };
    let mut users = Vec::new();
    if removes {
        match params.get("UserIds") {
            None => return Err(SandboxError::new("MissingParameter.UserIds", "UserIds is missing")),
            Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_USERS_PER_CALL => {
                for item in items {
                    match item {
                        Value::String(u) if !u.is_empty() => users.push(u.clone()),
                        _ => {
                            return Err(SandboxError::new(
                                "InvalidParameter.UserIds",
                                "UserIds must be non-empty Strings",
                            ));
                        }
                    }
                }
            }
            Some(_) => {
                return Err(SandboxError::new(
                    "InvalidParameter.UserIds",
                    format!("UserIds must be an Array of 1 to {MAX_USERS_PER_CALL} Strings"),
                ));
            }
        }
    }
    Ok(Params { room, users })
}

pub(super) async fn handle(
    State(state): State<Arc<SandboxState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let action = match check_request(&state, &headers, &body) {
        Ok(action) => action,
        Err(e) => {
            let action = header(&headers, "x-tc-action").unwrap_or("?").to_string();
            state.record(&action, None, Vec::new(), &e.0);
            return envelope(Some(&e));
        }
    };
    if state.over_quota(action) {
        let e = SandboxError::new(
            "RequestLimitExceeded",
            format!("the request rate of {action} exceeds {} per second", state.options.quota_per_second),
        );
        state.record(action, None, Vec::new(), &e.0);
        return envelope(Some(&e));
    }
    let params = match check_params(&state, action, &body) {
        Ok(p) => p,
        Err(e) => {
            state.record(action, None, Vec::new(), &e.0);
            return envelope(Some(&e));
        }
    };
    let room_text = params.room.text();
    if let Some(fault) = state.take_fault(action, Some(&room_text)) {
        if fault.delay_ms > 0 {
            // hyper drops this handler if the client gives up first (a hung
            // request): log the request then, or the log would miss it.
            let unanswered = Unanswered {
                state: &state,
                at_ms: state.elapsed_ms(),
                action,
                room: &room_text,
                users: &params.users,
            };
            tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
            std::mem::forget(unanswered);
        }
        if let Some(status) = fault.http_status {
            state.record(action, Some(room_text), params.users, &format!("HTTP{status}"));
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, "sandbox: injected HTTP fault").into_response();
        }
        if let Some(code) = fault.code {
            let message = fault.message.unwrap_or_else(|| "sandbox: injected fault".into());
            state.record(action, Some(room_text), params.users, &code);
            return envelope(Some(&SandboxError(code, message)));
        }
    }
    let answer = apply(&state, action, &params);
    state.record(action, Some(room_text), params.users, answer.as_ref().map_or("success", |e| e.0.as_str()));
    envelope(answer.as_ref())
}

/// Logs a request whose client hung up before the answer, as `NoAnswer`,
/// at the time it arrived.
struct Unanswered<'a> {
    state: &'a SandboxState,
    at_ms: u64,
    action: &'a str,
    room: &'a str,
    users: &'a [String],
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let (room, users) = (Some(self.room.to_string()), self.users.to_vec());
        self.state.record_at(self.at_ms, self.action, room, users, "NoAnswer", None);
    }
}

/// Applies a valid request to the room state.
fn apply(state: &SandboxState, action: &str, params: &Params) -> Option<SandboxError> {
    let mut inner = state.lock();
    let gone = match &params.room {
        RoomParam::Numeric(r) => inner.dismissed_numeric.contains(r),
        RoomParam::Str(s) => inner.dismissed_str.contains(s),
    };
    if gone {
        return Some(SandboxError::new(
            "FailedOperation.RoomNotExist",
            format!("room {} does not exist", params.room.text()),
        ));
    }
    if action.starts_with("DismissRoom") {
        match &params.room {
            RoomParam::Numeric(r) => inner.dismissed_numeric.insert(*r),
            RoomParam::Str(s) => inner.dismissed_str.insert(s.clone()),
        };
        inner.stats.rooms_dismissed += 1;
    } else {
        inner.stats.users_removed += params.users.len() as u64;
    }
    None
}
