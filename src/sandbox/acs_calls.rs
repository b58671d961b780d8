//! The sandbox's ACS calls and callbacks, as ACS delivers them.
//!
//! An application creates or answers a call with a callback URI; ACS then
//! posts that call's events (`CallConnected`, `ParticipantsUpdated` with the
//! whole roster, the application's own leg included, `CallDisconnected`)
//! there, and each operation's outcome to its `operationCallbackUri`, or to
//! the call's callback URI when the operation named none. Every callback
//! carries `Authorization: Bearer <JWT>`, RS256, signed by a key published
//! at the `jwks_uri` of the OpenID configuration.
//!
//! The sandbox plays this with a key of its own (`keys/`), serving
//! `GET /calling/.well-known/acsopenidconfiguration` and `GET /calling/keys`,
//! and a control API standing in for the application's Call Automation
//! calls:
//!
//! - `POST /_sandbox/acs/calls` `{"callConnectionId": "c1", "callbackUri":
//!   "https://app/events", "participants": ["8:acs:…"],
//!   "sequenceNumbers": true}`: the call is connected; `CallConnected` and a
//!   roster follow;
//! - `POST /_sandbox/acs/calls/{id}/participants` `{"join": [..], "leave":
//!   [..]}`: someone joined or hung up; a roster follows.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::SandboxState;
use crate::providers::acs::ACS_CALLBACK_ISSUER as ACS_ISSUER;

/// The sandbox ACS resource's immutable id: the audience of its tokens.
pub const SANDBOX_ACS_RESOURCE_ID: &str = "5a4db0c0-ca11-4a77-9e1b-5a4db0c0ffee";
/// The key id of the sandbox's signing key.
pub const SANDBOX_ACS_KEY_ID: &str = "callwarden-sandbox-2026";
/// The application's own leg in each call's roster: this prefix and the call id.
pub const SANDBOX_APP_LEG_PREFIX: &str = "28:acs:5a4db0c0-ca11-4a77-9e1b-5a4db0c0ffee_";

/// Test material only (see keys/README.md).
const SIGNING_KEY_PEM: &str = include_str!("keys/acs-callback-signing.pem");
/// The signing key's modulus, base64url (the JWKS `n`).
const SIGNING_KEY_N: &str = "sa1eGHkEjKLMG8nyIwnKtQBjTsWtkUP2No2iYwNw_28Psw1WS9zwIXq_7NkC3a6eTzndHj8TUIoTyxbtq_O4Gaj-OVhDkl7V19p2_Y7SxZQmVrObA3EfrAv3wf2RBXpOYUfaohsbDvIg4Ra-5ki2d2K99iumyg-JyGSLan5o-r-HLlHv7Xo5UKrELBa8fnkXGwex30-V80MbRI2uuETw83CSZrFPMytSXkv3F1l4LmXkLnfR0CkWmWsQxUlH3V3uDnk6H6JpYPzFL29rvhn8DGa0saBAdCIOcIZmir1CgWYUAsTOD6BrADHGLsSohDEERVUrNnlSujgJx_4XwV7hbw";

/// A call an application created, as the sandbox keeps it.
#[derive(Debug, Clone)]
pub struct SandboxCall {
    /// Where the call's events go.
    pub callback: String,
    /// Raw ids in the call, the application's own leg first.
    pub roster: Vec<String>,
    /// Whether rosters carry `sequenceNumber` (optional in ACS's spec).
    pub sequence_numbers: bool,
    pub sequence: i64,
}

/// How long the sandbox reuses a token. ACS signs one per event; an RSA
/// signature costs milliseconds of CPU, which a demo burst of hundreds of
/// events would take from the daemon sharing the process. Tokens live five
/// minutes, so one a minute checks the same things.
const TOKEN_REUSE: Duration = Duration::from_secs(60);

static TOKENS: std::sync::Mutex<Option<(String, String, std::time::Instant)>> = std::sync::Mutex::new(None);

/// A callback token for `audience`, reused for up to [`TOKEN_REUSE`].
fn callback_token(audience: &str) -> Option<String> {
    let mut cached = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((aud, token, at)) = cached.as_ref()
        && aud == audience
        && at.elapsed() < TOKEN_REUSE
    {
        return Some(token.clone());
    }
    let token = sign_callback_token(audience)?;
    *cached = Some((audience.to_string(), token.clone(), std::time::Instant::now()));
    Some(token)
}

/// A JWT as ACS signs its callbacks: RS256, `kid`, issuer, the resource id
/// as audience, five minutes.
pub fn sign_callback_token(audience: &str) -> Option<String> {
    let key = EncodingKey::from_rsa_pem(SIGNING_KEY_PEM.as_bytes()).ok()?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(SANDBOX_ACS_KEY_ID.to_string());
    let now = Utc::now().timestamp();
    let claims = json!({ "iss": ACS_ISSUER, "aud": audience, "iat": now, "nbf": now, "exp": now + 300 });
    jsonwebtoken::encode(&header, &claims, &key).ok()
}

/// `GET /calling/.well-known/acsopenidconfiguration`.
pub(super) async fn openid_configuration(headers: HeaderMap) -> Response {
    let host = super::header(&headers, "host").unwrap_or("127.0.0.1");
    axum::Json(json!({
        "issuer": ACS_ISSUER,
        "jwks_uri": format!("http://{host}/calling/keys"),
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
    .into_response()
}

/// `GET /calling/keys`.
pub(super) async fn keys(State(state): State<Arc<SandboxState>>) -> Response {
    state.lock().stats.signing_keys_served += 1;
    axum::Json(json!({ "keys": [{
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": SANDBOX_ACS_KEY_ID, "n": SIGNING_KEY_N, "e": "AQAB",
    }]}))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateCall {
    call_connection_id: String,
    callback_uri: String,
    #[serde(default)]
    participants: Vec<String>,
    #[serde(default = "yes")]
    sequence_numbers: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterChange {
    #[serde(default)]
    join: Vec<String>,
    #[serde(default)]
    leave: Vec<String>,
}

/// `POST /_sandbox/acs/calls`.
pub(super) async fn create_call(State(state): State<Arc<SandboxState>>, body: axum::body::Bytes) -> Response {
    let c: CreateCall = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad call: {e}")).into_response(),
    };
    if reqwest::Url::parse(&c.callback_uri).is_err() {
        return (StatusCode::BAD_REQUEST, "callbackUri is not a URL").into_response();
    }
    state.create_call(&c.call_connection_id, &c.callback_uri, &c.participants, c.sequence_numbers);
    StatusCode::CREATED.into_response()
}

/// `POST /_sandbox/acs/calls/{id}/participants`.
pub(super) async fn change_roster(
    State(state): State<Arc<SandboxState>>,
    Path(call): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let change: RosterChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad roster change: {e}")).into_response(),
    };
    if state.change_roster(&call, &change.join, &change.leave) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::NOT_FOUND, "no such call").into_response()
    }
}

impl SandboxState {
    /// A call the application created: `CallConnected` and its first roster
    /// go to `callback`.
    pub fn create_call(
        self: &Arc<Self>,
        call: &str,
        callback: &str,
        participants: &[String],
        sequence_numbers: bool,
    ) {
        let mut roster = vec![format!("{SANDBOX_APP_LEG_PREFIX}{call}")];
        roster.extend(participants.iter().cloned());
        let record = SandboxCall { callback: callback.to_string(), roster, sequence_numbers, sequence: 0 };
        self.lock().calls.insert(call.to_string(), record);
        self.post_event(callback, call, "CallConnected", json!({ "callConnectionId": call }));
        self.post_roster(call);
    }

    /// Participants joined or left: a roster follows. False for an unknown call.
    pub fn change_roster(self: &Arc<Self>, call: &str, join: &[String], leave: &[String]) -> bool {
        {
            let mut inner = self.lock();
            let Some(c) = inner.calls.get_mut(call) else { return false };
            c.roster.retain(|p| !leave.contains(p));
            c.roster.extend(join.iter().filter(|j| !c.roster.contains(j)).cloned().collect::<Vec<_>>());
        }
        self.post_roster(call);
        true
    }

    /// The call's callback URI, when an application created it.
    pub(super) fn call_callback(&self, call: &str) -> Option<String> {
        self.lock().calls.get(call).map(|c| c.callback.clone())
    }

    /// After a removal: the participant is gone from the roster.
    pub(super) fn participant_removed(self: &Arc<Self>, call: &str, participant: &str) {
        let known = {
            let mut inner = self.lock();
            inner.calls.get_mut(call).map(|c| c.roster.retain(|p| p != participant)).is_some()
        };
        if known {
            self.post_roster(call);
        }
    }

    /// After a terminate: `CallDisconnected` to the call's callback.
    pub(super) fn call_ended(self: &Arc<Self>, call: &str) {
        let callback = self.lock().calls.remove(call).map(|c| c.callback);
        if let Some(url) = callback {
            let result = json!({ "code": 200, "subCode": 7000, "message": "The conversation has ended." });
            self.post_event(
                &url,
                call,
                "CallDisconnected",
                json!({ "callConnectionId": call, "resultInformation": result }),
            );
        }
    }

    fn post_roster(self: &Arc<Self>, call: &str) {
        let (url, data) = {
            let mut inner = self.lock();
            let Some(c) = inner.calls.get_mut(call) else { return };
            c.sequence += 1;
            let participants: Vec<Value> = c
                .roster
                .iter()
                .map(|raw| json!({ "identifier": { "rawId": raw, "kind": kind_of(raw) }, "isMuted": false, "isOnHold": false }))
                .collect();
            let mut data = json!({ "callConnectionId": call, "participants": participants });
            if c.sequence_numbers {
                data["sequenceNumber"] = json!(c.sequence);
            }
            (c.callback.clone(), data)
        };
        self.post_event(&url, call, "ParticipantsUpdated", data);
    }

    /// Posts one event (a CloudEvents array of one) in the background, a
    /// moment after what caused it, signed as ACS signs its callbacks.
    pub(super) fn post_event(self: &Arc<Self>, url: &str, call: &str, kind: &str, mut data: Value) {
        data["correlationId"] = json!(format!("corr-{call}"));
        let event = json!([{
            "id": uuid::Uuid::new_v4().to_string(),
            "source": format!("calling/callConnections/{call}"),
            "type": format!("Microsoft.Communication.{kind}"),
            "data": data,
            "time": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "specversion": "1.0",
            "datacontenttype": "application/json",
            "subject": format!("calling/callConnections/{call}"),
        }]);
        let token = callback_token(&self.options.acs_resource_id);
        let url = url.to_string();
        // Each delivery on its own, as ACS guarantees no order: callwarden
        // orders events by their time and rosters by their number.
        let state = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let mut request = state.http.post(&url).json(&event);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let delivered = request.send().await.is_ok_and(|r| r.status().is_success());
            let mut inner = state.lock();
            if delivered {
                inner.stats.events_delivered += 1;
            } else {
                inner.stats.events_undelivered += 1;
            }
        });
    }
}

/// The identifier kind a raw id names, as ACS reports it.
fn kind_of(raw: &str) -> &'static str {
    if raw.starts_with("8:acs:") || raw.starts_with("8:spool:") {
        "communicationUser"
    } else if raw.starts_with("4:") || raw.starts_with('+') {
        "phoneNumber"
    } else if raw.starts_with("8:orgid:") || raw.starts_with("8:teamsvisitor:") {
        "microsoftTeamsUser"
    } else if raw.starts_with("28:") {
        "microsoftTeamsApp"
    } else {
        "unknown"
    }
}
