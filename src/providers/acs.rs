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
        match &self.auth {
            Auth::Key(key) => {
                let date = http_date(Utc::now());
                let hash = content_hash(&body);
                let Some(sig) =
                    signature(key.expose(), &string_to_sign("POST", &pq, &date, &self.host, &hash))
                else {
                    return unsupported("the access key is not base64".into());
                };
                request = request
                    .header("x-ms-date", &date)
                    .header("x-ms-content-sha256", &hash)
                    .header("Authorization", authorization(&sig));
            }
            Auth::Entra(tokens) => match tokens.token().await {
                Ok(token) => request = request.bearer_auth(token.expose()),
                Err(e) => {
                    let classified = match e {
                        TokenError::Unavailable(message) => {
                            Classified::Retryable { code: "EntraToken".into(), message, wait: None }
                        }
                        TokenError::Refused(message) => {
                            Classified::Fatal { code: "EntraRefused".into(), message }
                        }
                    };
                    return CallReport { classified, ..unsupported(String::new()) };
                }
            },
        }
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

/// Reads the wait a 429 or 503 asks for: `retry-after-ms`, `x-ms-retry-after-ms`
/// (milliseconds), then `Retry-After` (seconds or an HTTP date), as azure-core does.
/// A value that is not a finite, non-negative number (`inf`, `NaN`, `-1`) is
/// ignored; one too large for a `Duration` (`1e30`) reads as the longest wait,
/// which the retry policy then caps at its `max_backoff`.
pub fn retry_after(headers: &reqwest::header::HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(wait) = text(name).and_then(|v| v.parse::<f64>().ok()).and_then(|ms| seconds(ms / 1000.0))
        {
            return Some(wait);
        }
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return seconds(secs);
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or_default())
}

/// A count of seconds from a header as a wait, if it is a finite,
/// non-negative number; saturating at `Duration::MAX`.
fn seconds(secs: f64) -> Option<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
}

/// The numeric subcode of an ACS error. ACS's error bodies are
/// `{"error":{"code","message","innererror"}}`; the subcode is the whole
/// `error.code` or `innererror.code` when numeric, or the `DiagCode: 400#8528`
/// suffix of the message. Digits elsewhere in a message (raw ids, GUIDs)
/// never count.
pub fn subcode(body: &Value) -> Option<u32> {
    let error = body.get("error")?;
    let numeric = |v: Option<&Value>| {
        v.and_then(|c| {
            c.as_str().and_then(|s| s.parse().ok()).or_else(|| c.as_u64().and_then(|n| u32::try_from(n).ok()))
        })
    };
    if let Some(code) = numeric(error.get("code")).or_else(|| numeric(error.pointer("/innererror/code"))) {
        return Some(code);
    }
    let message = error.get("message").and_then(Value::as_str)?;
    let after = &message[message.find("DiagCode")?..];
    let digits: String = after[after.find('#')? + 1..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Subcodes that say the call or participant is not there (any more):
/// 8522 not found, 8558 participant not in the call, 8543 call not found,
/// 8528 call ended.
pub const GONE_SUBCODES: [u32; 4] = [8522, 8558, 8543, 8528];

/// 400 subcodes that mean the call is ending or was never established:
/// for an end-call daemon the goal already holds.
pub const ENDING_SUBCODES: [u32; 2] = [8501, 8585];

/// 412/8583: incompatible concurrent media operations, not about repeatability.
const PRECONDITION_MEDIA: u32 = 8583;

/// The issuer of the JWTs ACS signs its callbacks with (its OpenID
/// configuration names it too).
pub const ACS_CALLBACK_ISSUER: &str = "https://acscallautomation.communication.azure.com";

/// How long ACS remembers a Repeatability-Request-ID (its repeatable-requests
/// page): a send under an id first sent longer ago must use a new id.
pub const REPEATABILITY_WINDOW: Duration = Duration::from_secs(300);

/// Whether a 404's message says the call or participant was not found, for
/// bodies without a subcode. ASP.NET's "No HTTP resource was found that
/// matches the request URI" (a wrong path or api-version) does not.
fn says_not_found(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("not found") && (m.contains("call") || m.contains("participant"))
}

/// Classifies an HTTP answer to `participants:remove` or `:terminate`.
/// `wait` is what the provider asked for (Retry-After), if anything.
pub fn classify(status: u16, body: &[u8], wait: Option<Duration>) -> Classified {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let sub = subcode(&parsed);
    let message = parsed
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    let code = match (parsed.pointer("/error/code").and_then(Value::as_str), sub) {
        (Some(c), Some(s)) if c.parse::<u32>().ok() != Some(s) => format!("HTTP{status}/{c}/{s}"),
        (Some(c), _) => format!("HTTP{status}/{c}"),
        (None, Some(s)) => format!("HTTP{status}/{s}"),
        (None, None) => format!("HTTP{status}"),
    };
    let gone = sub.is_some_and(|s| GONE_SUBCODES.contains(&s));
    match status {
        202 | 204 | 200 => Classified::Success,
        // The call has ended or the participant has left.
        404 if gone || (sub.is_none() && says_not_found(&message)) => {
            Classified::AlreadyEnded { code, message }
        }
        // Any other 404 is a route the service does not serve: a wrong
        // endpoint path or api_version. Never "already ended".
        404 => Classified::Fatal {
            code: format!("{code}/route"),
            message: format!(
                "ACS does not serve this request path; check the provider's endpoint and api_version ({message})"
            ),
        },
        400 if gone || sub.is_some_and(|s| ENDING_SUBCODES.contains(&s)) => {
            Classified::AlreadyEnded { code, message }
        }
        // 412/8583 conflicts with a media operation: wait and try again.
        412 if sub == Some(PRECONDITION_MEDIA) => Classified::Retryable { code, message, wait },
        // The repeatability window has passed: the caller must resend under a
        // new id (safe: a participant already removed answers 404/8522).
        412 => Classified::Retryable { code, message, wait: None },
        // 409: conflicting parallel actions (8519), or a repeat that arrived
        // while the original request is still in progress.
        408 | 409 | 429 | 500 | 502 | 503 | 504 => Classified::Retryable { code, message, wait },
        s if s >= 506 => Classified::Retryable { code, message, wait },
        _ => Classified::Fatal { code, message },
    }
}

/// Whether an answer means the repeatability window expired: a 412 that is
/// not 412/8583.
pub fn repeatability_expired(http_status: Option<u16>, body: &[u8]) -> bool {
    http_status == Some(412)
        && subcode(&serde_json::from_slice(body).unwrap_or(Value::Null)) != Some(PRECONDITION_MEDIA)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const DATE: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
    const HOST: &str = "contoso.communication.azure.com";

    #[test]
    fn vector_a_remove_participant() {
        let body = br#"{"participantToRemove":{"kind":"communicationUser","communicationUser":{"id":"8:acs:test-user"}},"operationContext":"limit"}"#;
        assert_eq!(body.len(), 124);
        let hash = content_hash(body);
        assert_eq!(hash, "FJYeuifrbxVtMhMeGIF1wKwOacZlOj286GOTQdyM5OM=");
        let sts = string_to_sign(
            "POST",
            "/calling/callConnections/18dea47f-b081-4107-9a5c-4300819d2c6c/participants:remove?api-version=2024-09-15",
            DATE,
            HOST,
            &hash,
        );
        assert_eq!(signature(KEY, &sts).unwrap(), "eJBdgKRGW6L/8h/7otQEWiRw2I9PlM14cFgBQ8vhZZ8=");
    }

    #[test]
    fn vector_b_terminate_with_empty_body() {
        let hash = content_hash(b"");
        assert_eq!(hash, "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
        let sts = string_to_sign(
            "post",
            "/calling/callConnections/18dea47f-b081-4107-9a5c-4300819d2c6c:terminate?api-version=2024-09-15",
            DATE,
            HOST,
            &hash,
        );
        assert_eq!(
            sts,
            "POST\n/calling/callConnections/18dea47f-b081-4107-9a5c-4300819d2c6c:terminate?api-version=2024-09-15\nTue, 14 Nov 2023 22:13:20 GMT;contoso.communication.azure.com;47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        assert_eq!(signature(KEY, &sts).unwrap(), "mUmQBOyUmP83AXuyei0LGu8BfnYiI+TtOENJiJLNg4k=");
        assert!(signature("not base64!", &sts).is_none());
    }

    #[test]
    fn dates_are_imf_fixdate() {
        let t = DateTime::parse_from_rfc3339("2023-11-14T22:13:20Z").unwrap().with_timezone(&Utc);
        assert_eq!(http_date(t), DATE);
    }

    #[test]
    fn raw_ids_map_to_identifier_kinds() {
        assert_eq!(identifier("8:acs:r_u")["communicationUser"]["id"], "8:acs:r_u");
        assert_eq!(identifier("+15551234567")["phoneNumber"]["value"], "+15551234567");
        assert_eq!(identifier("+15551234567")["rawId"], "4:+15551234567");
        assert_eq!(identifier("4:+15551234567")["phoneNumber"]["value"], "+15551234567");
        let teams = identifier("8:orgid:0000-aad");
        assert_eq!(teams["kind"], "microsoftTeamsUser");
        assert_eq!(teams["microsoftTeamsUser"]["userId"], "0000-aad");
        assert_eq!(identifier("8:gcch:x")["microsoftTeamsUser"]["cloud"], "gcch");
        assert_eq!(identifier("8:teamsvisitor:v")["microsoftTeamsUser"]["isAnonymous"], true);
        assert_eq!(identifier("28:orgid:bot")["microsoftTeamsApp"]["appId"], "bot");
        assert_eq!(identifier("something-else")["kind"], "unknown");
    }

    #[test]
    fn answers_are_classified() {
        let err = |code: &str| format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#);
        assert_eq!(classify(202, br#"{"operationContext":"x"}"#, None), Classified::Success);
        assert_eq!(classify(204, b"", None), Classified::Success);
        assert_eq!(classify(404, err("8522").as_bytes(), None).outcome(), "already_ended");
        assert_eq!(classify(400, err("8528").as_bytes(), None).outcome(), "already_ended");
        assert_eq!(classify(400, err("8523").as_bytes(), None).outcome(), "fatal");
        assert_eq!(classify(401, b"", None).outcome(), "fatal");
        assert_eq!(classify(403, err("7504").as_bytes(), None).outcome(), "fatal");
        assert_eq!(classify(412, b"", None).outcome(), "retryable");
        let wait = Some(Duration::from_secs(3));
        assert_eq!(
            classify(429, b"", wait),
            Classified::Retryable { code: "HTTP429".into(), message: String::new(), wait }
        );
        assert_eq!(classify(503, b"", None).outcome(), "retryable");
        assert_eq!(classify(409, err("8519").as_bytes(), None).outcome(), "retryable");
        assert_eq!(classify(501, b"", None).outcome(), "fatal");
        let in_message =
            br#"{"error":{"code":"BadRequest","message":"Call terminated. DiagCode: 400#8528"}}"#;
        assert_eq!(classify(400, in_message, None).outcome(), "already_ended");
    }

    #[test]
    fn a_404_is_already_ended_only_when_the_call_or_participant_is_gone() {
        let err = |code: &str| format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#);
        for gone in ["8522", "8558", "8543"] {
            assert_eq!(classify(404, err(gone).as_bytes(), None).outcome(), "already_ended", "{gone}");
        }
        let said = br#"{"error":{"code":"NotFound","message":"Call not found."}}"#;
        assert_eq!(classify(404, said, None).outcome(), "already_ended");
        // A wrong api_version or path: ASP.NET's route-not-found, no subcode.
        let route = br#"{"Message":"No HTTP resource was found that matches the request URI 'https://x/calling/callConnections/c:terminate?api-version=2023-01-15-preview'."}"#;
        let c = classify(404, route, None);
        assert_eq!(c.outcome(), "fatal");
        assert!(c.message().is_some_and(|m| m.contains("api_version")), "{c:?}");
        assert_eq!(classify(404, b"", None).outcome(), "fatal");
        assert_eq!(classify(404, err("8523").as_bytes(), None).outcome(), "fatal");
    }

    #[test]
    fn a_call_that_is_ending_or_not_established_is_already_ended() {
        let err = |code: &str| format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#);
        for ending in ["8501", "8585", "8522", "8558", "8543", "8528"] {
            assert_eq!(classify(400, err(ending).as_bytes(), None).outcome(), "already_ended", "{ending}");
        }
    }

    #[test]
    fn only_a_412_about_repeatability_renews_the_id() {
        let media = br#"{"error":{"code":"8583","message":"Precondition Failed"}}"#;
        assert_eq!(classify(412, media, None).outcome(), "retryable");
        assert!(!repeatability_expired(Some(412), media));
        assert!(repeatability_expired(Some(412), b""));
        assert!(repeatability_expired(
            Some(412),
            br#"{"error":{"code":"PreconditionFailed","message":"m"}}"#
        ));
        assert!(!repeatability_expired(Some(409), b""));
        assert!(!repeatability_expired(None, b""));
    }

    #[test]
    fn the_subcode_is_read_from_the_error_fields_only() {
        let sub = |body: &str| subcode(&serde_json::from_str(body).unwrap());
        assert_eq!(sub(r#"{"error":{"code":"8522","message":"m"}}"#), Some(8522));
        assert_eq!(sub(r#"{"error":{"code":8522,"message":"m"}}"#), Some(8522));
        assert_eq!(sub(r#"{"error":{"code":"BadRequest","innererror":{"code":"8585"}}}"#), Some(8585));
        assert_eq!(
            sub(r#"{"error":{"code":"BadRequest","message":"Call ended. DiagCode: 400#8528."}}"#),
            Some(8528)
        );
        // Digits inside ids and GUIDs are not subcodes.
        let ids = r#"{"error":{"code":"BadRequest","message":"Participant 8:acs:1b2c_00000013-2ff6-8522-9e1b06caca01 is invalid"}}"#;
        assert_eq!(sub(ids), None);
        assert_eq!(classify(400, ids.as_bytes(), None).outcome(), "fatal");
    }

    #[test]
    fn retry_after_is_read_in_azure_core_order() {
        let now = DateTime::parse_from_rfc3339("2023-11-14T22:13:20Z").unwrap().with_timezone(&Utc);
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(1500)));
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "Tue, 14 Nov 2023 22:13:30 GMT".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(10)));
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new(), now), None);
    }

    /// Finding 15: `inf` and `1e30` panicked in `Duration::from_secs_f64`.
    #[test]
    fn retry_after_never_panics_on_what_a_proxy_may_send() {
        let now = DateTime::parse_from_rfc3339("2023-11-14T22:13:20Z").unwrap().with_timezone(&Utc);
        for (name, value, expected) in [
            ("retry-after-ms", "inf", None),
            ("retry-after-ms", "NaN", None),
            ("retry-after-ms", "-5", None),
            ("x-ms-retry-after-ms", "1e30", Some(Duration::MAX)),
            ("retry-after", "inf", None),
            ("retry-after", "-inf", None),
            ("retry-after", "1e30", Some(Duration::MAX)),
            ("retry-after", "99999999999999999999", Some(Duration::MAX)),
            ("retry-after", "Tue, 14 Nov 2023 22:13:00 GMT", Some(Duration::ZERO)),
            ("retry-after", "soon", None),
        ] {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(name, value.parse().unwrap());
            assert_eq!(retry_after(&h, now), expected, "{name}: {value}");
        }
    }
}
