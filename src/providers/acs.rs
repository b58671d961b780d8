//! Azure Communication Services Call Automation: `participants:remove` and
//! `:terminate`, signed with the access-key HMAC-SHA256 scheme, carrying
//! `Repeatability-Request-ID` / `Repeatability-First-Sent` so that a retried
//! or post-crash repeat is answered from ACS's record instead of acting twice.
//!
//! Like the TRTC module, the signing functions are public so the sandbox
//! verifies with the code clients sign with, and the unit tests pin both to
//! the published vector.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::entra::TokenError;
use super::{CallContext, CallReport, Classified, Target};
use crate::config::{AcsAuth, AcsSettings};
use crate::domain::secret::Secret;
use crate::domain::{Action, Room};

mod answers;

pub use answers::{
    ACS_CALLBACK_ISSUER, ENDING_SUBCODES, GONE_SUBCODES, classify, repeatability_expired, retry_after,
    subcode,
};

pub const ACTIONS: [&str; 2] = ["RemoveParticipant", "TerminateCall"];

pub fn api_action(action: Action, room: &Room) -> Option<&'static str> {
    match (action, room) {
        (Action::RemoveParticipant, Room::Call(_)) => Some("RemoveParticipant"),
        (Action::TerminateCall, Room::Call(_)) => Some("TerminateCall"),
        _ => None,
    }
}

/// The path and query of a request, exactly as sent and signed. The colon in
/// `participants:remove` and `:terminate` is literal.
pub fn path_and_query(action: Action, call: &str, api_version: &str) -> Option<String> {
    let path = match action {
        Action::RemoveParticipant => format!("/calling/callConnections/{call}/participants:remove"),
        Action::TerminateCall => format!("/calling/callConnections/{call}:terminate"),
        _ => return None,
    };
    Some(format!("{path}?api-version={api_version}"))
}

/// The `RemoveParticipantRequest` body.
pub fn remove_body(participant: &str, operation_context: &str, callback: Option<&str>) -> Vec<u8> {
    let mut body = json!({
        "participantToRemove": identifier(participant),
        "operationContext": operation_context,
    });
    if let Some(url) = callback {
        body["operationCallbackUri"] = json!(url);
    }
    serde_json::to_vec(&body).expect("a JSON value always serializes")
}

/// What a start-up probe of an ACS endpoint found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// ACS serves the path and API version, and takes the credentials.
    Served,
    /// A route ACS does not serve: a wrong endpoint path or api_version.
    RouteNotFound(String),
    /// The credentials are refused.
    Refused(String),
    /// No answer.
    Unreachable(String),
    /// Anything else.
    Other(String),
}

/// How requests are authenticated.
#[derive(Debug, Clone)]
enum Auth {
    /// HMAC-SHA256 with the access key (base64).
    Key(Secret),
    /// A Microsoft Entra bearer token.
    Entra(std::sync::Arc<super::entra::EntraTokens>),
}

/// A configured ACS resource, ready to sign and send.
#[derive(Debug, Clone)]
pub struct AcsClient {
    http: reqwest::Client,
    /// The endpoint without a trailing slash.
    base: String,
    /// The authority as sent in `Host` (port included when non-default); signed.
    host: String,
    auth: Auth,
    api_version: String,
    /// `operationCallbackUri`: the configured callback URL with the webhook
    /// token in its query, so it is a secret too.
    callback: Option<Secret>,
    timeout: Duration,
}

impl AcsClient {
    /// `callback_token` is what ACS must send back as `?token=` on the
    /// callback URL (the `webhooks.acs` secret), when one is configured.
    pub fn new(
        http: reqwest::Client,
        settings: &AcsSettings,
        timeout: Duration,
        callback_token: Option<&Secret>,
    ) -> Result<AcsClient, String> {
        let url = reqwest::Url::parse(&settings.endpoint)
            .map_err(|e| format!("endpoint {:?}: {e}", settings.endpoint))?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(format!("endpoint {:?} has no host", settings.endpoint)),
        };
        // With only ACS's JWT configured, the URL goes without a token.
        let callback = match (&settings.callback_url, callback_token) {
            (Some(url), token) => {
                let mut url = reqwest::Url::parse(url).map_err(|e| format!("callback_url {url:?}: {e}"))?;
                if let Some(token) = token {
                    url.query_pairs_mut().append_pair("token", token.expose());
                }
                Some(Secret::new(url.to_string()))
            }
            (None, _) => None,
        };
        let auth = match &settings.auth {
            AcsAuth::AccessKey(key) => Auth::Key(key.clone()),
            AcsAuth::Entra(entra) => {
                Auth::Entra(std::sync::Arc::new(super::entra::EntraTokens::new(http.clone(), entra)))
            }
        };
        Ok(AcsClient {
            http,
            base: settings.endpoint.trim_end_matches('/').to_string(),
            host,
            auth,
            api_version: settings.api_version.clone(),
            callback,
            timeout,
        })
    }

    /// Signs a request with the access key (HMAC over method, path and
    /// query, date, host and content hash), or puts an Entra token on it.
    async fn authorize(
        &self,
        request: reqwest::RequestBuilder,
        method: &str,
        pq: &str,
        body: &[u8],
    ) -> Result<reqwest::RequestBuilder, Classified> {
        match &self.auth {
            Auth::Key(key) => {
                let date = http_date(Utc::now());
                let hash = content_hash(body);
                let Some(sig) =
                    signature(key.expose(), &string_to_sign(method, pq, &date, &self.host, &hash))
                else {
                    return Err(Classified::Fatal {
                        code: "UnsupportedTarget".into(),
                        message: "the access key is not base64".into(),
                    });
                };
                Ok(request
                    .header("x-ms-date", &date)
                    .header("x-ms-content-sha256", &hash)
                    .header("Authorization", authorization(&sig)))
            }
            Auth::Entra(tokens) => match tokens.token().await {
                Ok(token) => Ok(request.bearer_auth(token.expose())),
                Err(TokenError::Unavailable(message)) => {
                    Err(Classified::Retryable { code: "EntraToken".into(), message, wait: None })
                }
                Err(TokenError::Refused(message)) => {
                    Err(Classified::Fatal { code: "EntraRefused".into(), message })
                }
            },
        }
    }

    /// Asks ACS about a call that does not exist (`GET
    /// /calling/callConnections/{random}`), to tell at start whether the
    /// endpoint, API version and credentials work: ACS answers 404 with a
    /// "not found" subcode; a route it does not serve (a wrong path or
    /// api_version) answers 404 without one; a refused credential 401/403.
    pub async fn probe(&self) -> Probe {
        let pq = format!(
            "/calling/callConnections/callwarden-probe-{}?api-version={}",
            uuid::Uuid::new_v4().simple(),
            self.api_version
        );
        let request = self.http.get(format!("{}{pq}", self.base)).timeout(self.timeout);
        let request = match self.authorize(request, "GET", &pq, b"").await {
            Ok(r) => r,
            // No token yet (Entra unreachable) is no verdict on the credentials.
            Err(Classified::Retryable { message, .. }) => return Probe::Unreachable(message),
            Err(c) => return Probe::Refused(c.message().unwrap_or_default().to_string()),
        };
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Probe::Unreachable(e.without_url().to_string()),
        };
        let status = response.status().as_u16();
        let body = crate::http_client::read_capped(response).await.unwrap_or_default();
        match (status, classify(status, &body, None)) {
            (200..=299, _) | (404, Classified::AlreadyEnded { .. }) => Probe::Served,
            (404, c) => Probe::RouteNotFound(c.message().unwrap_or_default().chars().take(300).collect()),
            (401 | 403, c) => Probe::Refused(c.message().unwrap_or_default().chars().take(300).collect()),
            (_, c) => Probe::Other(format!(
                "HTTP {status}: {}",
                c.message().unwrap_or_default().chars().take(300).collect::<String>()
            )),
        }
    }

    /// Whether outcomes of removals are reported to callwarden.
    pub fn has_callback(&self) -> bool {
        self.callback.is_some()
    }

    /// Sends one signed request. Each try signs afresh (`x-ms-date`), while
    /// the repeatability pair stays what the enforcement stored.
    pub async fn call(&self, target: &Target, ctx: &CallContext) -> CallReport {
        let unsupported = |message: String| CallReport {
            classified: Classified::Fatal { code: "UnsupportedTarget".into(), message },
            http_status: None,
            provider_request_id: None,
            latency: Duration::ZERO,
            client_request_id: None,
            renew_repeatability: false,
        };
        let Room::Call(call) = &target.room else {
            return unsupported(format!("ACS cannot act on room {}", target.room));
        };
        let Some(pq) = path_and_query(target.action, call, &self.api_version) else {
            return unsupported(format!("ACS cannot {}", target.action.as_str()));
        };
        let body = match target.action {
            Action::RemoveParticipant => match target.users.first() {
                Some(p) => remove_body(
                    p.as_str(),
                    &ctx.operation_context,
                    self.callback.as_ref().map(Secret::expose),
                ),
                None => return unsupported("participants:remove needs a participant".into()),
            },
            _ => Vec::new(),
        };
        let client_request_id = uuid::Uuid::new_v4();
        let mut request = self
            .http
            .post(format!("{}{pq}", self.base))
            .timeout(self.timeout)
            // Per try, as azure-core's RequestIdPolicy does; Microsoft support
            // asks for it, so it is kept in the audit row's detail.
            .header("x-ms-client-request-id", client_request_id.to_string())
            .header("x-ms-return-client-request-id", "true");
        request = match self.authorize(request, "POST", &pq, &body).await {
            Ok(request) => request,
            Err(classified) => return CallReport { classified, ..unsupported(String::new()) },
        };
        if let Some(r) = &ctx.repeatability {
            request = request
                .header("Repeatability-Request-ID", r.request_id.to_string())
                .header("Repeatability-First-Sent", http_date(r.first_sent));
        }
        if !body.is_empty() {
            request = request.header("Content-Type", "application/json");
        }
        let started = std::time::Instant::now();
        let result = request.body(body).send().await;
        let provider_request_id = ctx.repeatability.map(|r| r.request_id.to_string());
        let mut renew_repeatability = false;
        let (classified, http_status) = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let wait = retry_after(response.headers(), Utc::now());
                match crate::http_client::read_capped(response).await {
                    Ok(bytes) => {
                        renew_repeatability = repeatability_expired(Some(status), &bytes);
                        let mut classified = classify(status, &bytes, wait);
                        // An Entra token ACS no longer takes (revoked,
                        // expired early): fetch a new one and try again.
                        if let (401, Auth::Entra(tokens)) = (status, &self.auth) {
                            tokens.forget().await;
                            if let Classified::Fatal { code, message } = classified {
                                classified = Classified::Retryable { code, message, wait: None };
                            }
                        }
                        (classified, Some(status))
                    }
                    Err(e) => (super::transport::transport_error(&e), Some(status)),
                }
            }
            Err(e) => (super::transport::transport_error(&e), None),
        };
        CallReport {
            renew_repeatability,
            classified,
            http_status,
            provider_request_id,
            client_request_id: Some(client_request_id.to_string()),
            latency: started.elapsed(),
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

/// `x-ms-content-sha256`: base64 of the body's SHA-256 (sent for empty bodies too).
pub fn content_hash(body: &[u8]) -> String {
    B64.encode(Sha256::digest(body))
}

/// RFC 1123 / IMF-fixdate, as `x-ms-date` and `Repeatability-First-Sent` want it.
pub fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

pub fn string_to_sign(
    method: &str,
    path_and_query: &str,
    date: &str,
    host: &str,
    content_hash: &str,
) -> String {
    format!("{}\n{path_and_query}\n{date};{host};{content_hash}", method.to_ascii_uppercase())
}

/// Signs with the decoded access key. `None` when the key is not base64.
pub fn signature(access_key_b64: &str, string_to_sign: &str) -> Option<String> {
    let key = B64.decode(access_key_b64.trim()).ok()?;
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes a key of any length");
    mac.update(string_to_sign.as_bytes());
    Some(B64.encode(mac.finalize().into_bytes()))
}

pub fn authorization(signature: &str) -> String {
    format!("HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={signature}")
}

/// The `CommunicationIdentifierModel` for a participant's raw id, sent as
/// `rawId` plus the kind-specific object, the way the SDK serializes it.
pub fn identifier(raw_id: &str) -> Value {
    let raw = raw_id.trim();
    if let Some(number) = raw.strip_prefix("4:") {
        return json!({ "rawId": raw, "kind": "phoneNumber", "phoneNumber": { "value": number } });
    }
    if raw.starts_with('+') {
        return json!({ "rawId": format!("4:{raw}"), "kind": "phoneNumber", "phoneNumber": { "value": raw } });
    }
    for (prefix, cloud) in [("8:orgid:", "public"), ("8:dod:", "dod"), ("8:gcch:", "gcch")] {
        if let Some(user) = raw.strip_prefix(prefix) {
            return json!({
                "rawId": raw,
                "kind": "microsoftTeamsUser",
                "microsoftTeamsUser": { "userId": user, "isAnonymous": false, "cloud": cloud }
            });
        }
    }
    if let Some(user) = raw.strip_prefix("8:teamsvisitor:") {
        return json!({
            "rawId": raw,
            "kind": "microsoftTeamsUser",
            "microsoftTeamsUser": { "userId": user, "isAnonymous": true, "cloud": "public" }
        });
    }
    for (prefix, cloud) in [("28:orgid:", "public"), ("28:dod:", "dod"), ("28:gcch:", "gcch")] {
        if let Some(app) = raw.strip_prefix(prefix) {
            return json!({
                "rawId": raw,
                "kind": "microsoftTeamsApp",
                "microsoftTeamsApp": { "appId": app, "cloud": cloud }
            });
        }
    }
    if ["8:acs:", "8:dod-acs:", "8:gcch-acs:", "8:spool:"].iter().any(|p| raw.starts_with(p)) {
        return json!({ "rawId": raw, "kind": "communicationUser", "communicationUser": { "id": raw } });
    }
    json!({ "rawId": raw, "kind": "unknown" })
}

#[cfg(test)]
mod tests;
