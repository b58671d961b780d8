//! Tencent TRTC server API (version 2019-07-22): `DismissRoom`,
//! `DismissRoomByStrRoomId`, `RemoveUser`, `RemoveUserByStrRoomId`, signed with
//! TC3-HMAC-SHA256, and the classification of every answer.
//!
//! The signing functions are public because the sandbox verifies requests with
//! the very same code path a real client signs them with; the unit tests pin
//! that code to the published test vectors, so the two cannot drift together.

use std::time::{Duration, Instant as StdInstant};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{CallReport, Classified, Target};
use crate::domain::secret::Secret;
use crate::domain::{Action, Room};

pub const VERSION: &str = "2019-07-22";
pub const SERVICE: &str = "trtc";
pub const CONTENT_TYPE: &str = "application/json";
pub const MAX_USERS_PER_CALL: usize = 10;
pub const ACTIONS: [&str; 4] =
    ["DismissRoom", "DismissRoomByStrRoomId", "RemoveUser", "RemoveUserByStrRoomId"];
/// Regions the TRTC room-management APIs are documented to serve.
type HmacSha256 = Hmac<Sha256>;

pub fn api_action(action: Action, room: &Room) -> Option<&'static str> {
    match (action, room) {
        (Action::DismissRoom, Room::Numeric(_)) => Some("DismissRoom"),
        (Action::DismissRoom, Room::Str(_)) => Some("DismissRoomByStrRoomId"),
        (Action::RemoveUser, Room::Numeric(_)) => Some("RemoveUser"),
        (Action::RemoveUser, Room::Str(_)) => Some("RemoveUserByStrRoomId"),
        _ => None,
    }
}

/// The JSON body for a target: numeric rooms as JSON integers, string rooms as
/// JSON strings, exactly as each action's parameter types require.
pub fn request_body(sdk_app_id: u64, target: &Target) -> Vec<u8> {
    let room = match &target.room {
        Room::Numeric(n) => serde_json::Value::from(*n),
        Room::Str(s) | Room::Call(s) => serde_json::Value::from(s.as_str()),
    };
    let mut body = serde_json::json!({ "SdkAppId": sdk_app_id, "RoomId": room });
    if target.action == Action::RemoveUser {
        let users: Vec<&str> = target.users.iter().map(|u| u.as_str()).collect();
        body["UserIds"] = serde_json::json!(users);
    }
    serde_json::to_vec(&body).expect("a JSON value always serializes")
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The inputs of a TC3-HMAC-SHA256 signature for a `POST /` request.
#[derive(Debug, Clone)]
pub struct Tc3Input<'a> {
    pub host: &'a str,
    pub service: &'a str,
    pub content_type: &'a str,
    /// `Some(action)` also signs the `x-tc-action` header (its value lower-cased).
    pub signed_action: Option<&'a str>,
    pub timestamp: i64,
    pub body: &'a [u8],
}

impl Tc3Input<'_> {
    pub fn signed_headers(&self) -> &'static str {
        if self.signed_action.is_some() { "content-type;host;x-tc-action" } else { "content-type;host" }
    }

    pub fn canonical_request(&self) -> String {
        let mut headers = format!("content-type:{}\nhost:{}\n", self.content_type.trim(), self.host.trim());
        if let Some(action) = self.signed_action {
            headers.push_str(&format!("x-tc-action:{}\n", action.trim().to_lowercase()));
        }
        format!("POST\n/\n\n{headers}\n{}\n{}", self.signed_headers(), sha256_hex(self.body))
    }

    /// UTC date of the timestamp, as the credential scope wants it.
    pub fn date(&self) -> String {
        DateTime::<Utc>::from_timestamp(self.timestamp, 0).unwrap_or_default().format("%Y-%m-%d").to_string()
    }

    pub fn credential_scope(&self) -> String {
        format!("{}/{}/tc3_request", self.date(), self.service)
    }

    pub fn string_to_sign(&self) -> String {
        format!(
            "TC3-HMAC-SHA256\n{}\n{}\n{}",
            self.timestamp,
            self.credential_scope(),
            sha256_hex(self.canonical_request().as_bytes())
        )
    }
}

/// `kSigning` of the key chain: HMAC("TC3"+key, date) → service → "tc3_request".
pub fn signing_key(secret_key: &str, date: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let k_service = hmac(&k_date, service.as_bytes());
    hmac(&k_service, b"tc3_request")
}

pub fn signature_with_key(k_signing: &[u8], string_to_sign: &str) -> String {
    hex::encode(hmac(k_signing, string_to_sign.as_bytes()))
}

pub fn signature(secret_key: &str, input: &Tc3Input<'_>) -> String {
    let key = signing_key(secret_key, &input.date(), input.service);
    signature_with_key(&key, &input.string_to_sign())
}

pub fn authorization(secret_id: &str, secret_key: &str, input: &Tc3Input<'_>) -> String {
    format!(
        "TC3-HMAC-SHA256 Credential={secret_id}/{}, SignedHeaders={}, Signature={}",
        input.credential_scope(),
        input.signed_headers(),
        signature(secret_key, input)
    )
}

/// The `Sign` header of a TRTC room/media callback: base64 of
/// HMAC-SHA256(callback key, the raw body exactly as received).
pub fn callback_signature(callback_key: &str, body: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(hmac(callback_key.as_bytes(), body))
}

/// A parsed `Authorization` header, for the sandbox's verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAuthorization {
    pub secret_id: String,
    pub date: String,
    pub service: String,
    pub signed_headers: String,
    pub signature: String,
}

pub fn parse_authorization(header: &str) -> Option<ParsedAuthorization> {
    let rest = header.strip_prefix("TC3-HMAC-SHA256 ")?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(", ") {
        let (key, value) = part.split_once('=')?;
        match key {
            "Credential" => credential = Some(value),
            "SignedHeaders" => signed_headers = Some(value),
            "Signature" => signature = Some(value),
            _ => return None,
        }
    }
    let mut scope = credential?.split('/');
    let secret_id = scope.next()?.to_string();
    let date = scope.next()?.to_string();
    let service = scope.next()?.to_string();
    if scope.next()? != "tc3_request" || scope.next().is_some() {
        return None;
    }
    Some(ParsedAuthorization {
        secret_id,
        date,
        service,
        signed_headers: signed_headers?.to_string(),
        signature: signature?.to_string(),
    })
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "Response")]
    response: ResponseBody,
}

#[derive(Deserialize)]
struct ResponseBody {
    #[serde(rename = "RequestId")]
    request_id: Option<String>,
    #[serde(rename = "Error")]
    error: Option<TrtcErrorBody>,
}

#[derive(Deserialize)]
struct TrtcErrorBody {
    #[serde(rename = "Code")]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
}

/// Sorts an API error code into what to do next.
pub fn classify_code(code: &str, message: &str) -> Classified {
    let code_s = code.to_string();
    let message_s = message.to_string();
    let room_gone = code == "FailedOperation.RoomNotExist"
        || (code == "InvalidParameterValue.RoomId" && message.to_ascii_lowercase().contains("not exist"));
    if room_gone {
        return Classified::AlreadyEnded { code: code_s, message: message_s };
    }
    let retryable = code.starts_with("RequestLimitExceeded")
        || code.starts_with("InternalError")
        || code == "AuthFailure.SignatureExpire"
        || code == "ServiceUnavailable"
        || code == "ResourceUnavailable"
        || code == "FailedOperation.RestrictedFrequency";
    if retryable {
        Classified::Retryable { code: code_s, message: message_s, wait: None }
    } else {
        // AuthFailure.*, InvalidParameter*, MissingParameter*,
        // UnauthorizedOperation*, UnsupportedRegion, and anything not known
        // to be transient: retrying cannot help and would burn quota.
        Classified::Fatal { code: code_s, message: message_s }
    }
}

/// Classifies an HTTP answer. TRTC answers 200 whenever its gateway processed
/// the request, errors included; the outcome is in the body.
pub fn classify_response(status: u16, body: &[u8]) -> (Classified, Option<String>) {
    if status != 200 {
        let message = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        let code = format!("HTTP{status}");
        let classified = if status >= 500 || status == 408 || status == 429 {
            Classified::Retryable { code, message, wait: None }
        } else {
            Classified::Fatal { code, message }
        };
        return (classified, None);
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(Envelope { response }) => match response.error {
            None => (Classified::Success, response.request_id),
            Some(err) => (classify_code(&err.code, &err.message), response.request_id),
        },
        // A 200 that is not TRTC's envelope (a proxy page, a truncated body):
        // the request may or may not have run; both actions are idempotent in
        // effect, so asking again is safe.
        Err(e) => (
            Classified::Retryable {
                code: "MalformedResponse".into(),
                message: format!("response is not a TRTC envelope: {e}"),
                wait: None,
            },
            None,
        ),
    }
}

/// A configured TRTC account, ready to sign and send.
#[derive(Debug, Clone)]
pub struct TrtcClient {
    pub(crate) http: reqwest::Client,
    pub(crate) url: reqwest::Url,
    /// The `Host` header reqwest sends for `url` (port included when
    /// non-default); the signature covers it, so the two must agree.
    pub(crate) host: String,
    pub(crate) sdk_app_id: u64,
    pub(crate) region: String,
    pub(crate) secret_id: String,
    pub(crate) secret_key: Secret,
    /// The whole request, answer included, must finish within this.
    pub(crate) timeout: Duration,
}

impl TrtcClient {
    pub fn new(
        http: reqwest::Client,
        settings: &crate::config::TrtcSettings,
        timeout: Duration,
    ) -> Result<TrtcClient, String> {
        let endpoint = settings.endpoint.as_str();
        let url = reqwest::Url::parse(endpoint).map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("endpoint {endpoint:?} must be http or https"));
        }
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(format!("endpoint {endpoint:?} has no host")),
        };
        Ok(TrtcClient {
            http,
            url,
            host,
            sdk_app_id: settings.sdk_app_id,
            region: settings.region.clone(),
            secret_id: settings.secret_id.clone(),
            secret_key: settings.secret_key.clone(),
            timeout,
        })
    }

    pub fn sdk_app_id(&self) -> u64 {
        self.sdk_app_id
    }

    /// Sends one signed request. Every call signs afresh with the current
    /// time, so a retry after `AuthFailure.SignatureExpire` carries a new stamp.
    pub async fn call(&self, target: &Target) -> CallReport {
        let Some(action) = api_action(target.action, &target.room) else {
            return CallReport {
                classified: Classified::Fatal {
                    code: "UnsupportedTarget".into(),
                    message: format!("TRTC cannot {} on room {}", target.action.as_str(), target.room),
                },
                http_status: None,
                provider_request_id: None,
                latency: Duration::ZERO,
                client_request_id: None,
                renew_repeatability: false,
            };
        };
        let body = request_body(self.sdk_app_id, target);
        let timestamp = Utc::now().timestamp();
        let input = Tc3Input {
            host: &self.host,
            service: SERVICE,
            content_type: CONTENT_TYPE,
            signed_action: None,
            timestamp,
            body: &body,
        };
        let auth = authorization(&self.secret_id, self.secret_key.expose(), &input);
        let started = StdInstant::now();
        let result = self
            .http
            .post(self.url.clone())
            .timeout(self.timeout)
            .header("Content-Type", CONTENT_TYPE)
            .header("X-TC-Action", action)
            .header("X-TC-Version", VERSION)
            .header("X-TC-Timestamp", timestamp.to_string())
            .header("X-TC-Region", &self.region)
            .header("X-TC-Language", "en-US")
            .header("Authorization", auth)
            .body(body)
            .send()
            .await;
        let (classified, http_status, provider_request_id) = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                match crate::http_client::read_capped(response).await {
                    Ok(bytes) => {
                        let (classified, request_id) = classify_response(status, &bytes);
                        (classified, Some(status), request_id)
                    }
                    Err(e) => (super::transport::transport_error(&e), Some(status), None),
                }
            }
            Err(e) => (super::transport::transport_error(&e), None, None),
        };
        CallReport {
            classified,
            http_status,
            provider_request_id,
            latency: started.elapsed(),
            client_request_id: None,
            renew_repeatability: false,
        }
    }
}

/// How far a request's timestamp may be from the server's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests;
