//! The sandbox: a local stand-in for the provider APIs (TRTC at `POST /`,
//! ACS Call Automation under `/calling/callConnections/`), for the demo,
//! integration tests and trying callwarden without an account.
//!
//! It checks what the real service checks (signature, version, region,
//! parameter types, the per-action quota over a sliding second), keeps room
//! state (a dismissed room answers `RoomNotExist`), answers in the real
//! response shape, and can inject faults. A control API under `/_sandbox/`
//! reports what it saw and takes fault rules:
//!
//! - `GET /_sandbox/stats`: counts per action and answer, the most requests
//!   seen in any one-second window, effective dismissals and removals;
//! - `GET /_sandbox/requests`: every request, in the order answered (one
//!   whose client hung up first is logged then, as `NoAnswer`, under the
//!   time it arrived);
//! - `POST /_sandbox/faults` ([`Fault`]) and `DELETE /_sandbox/faults`;
//! - `POST /_sandbox/rooms/dismiss` `{"room": 1234}` or `{"room": "abc"}`
//!   (TRTC), `{"call": "id"}` (ACS): ends a room or call as if everyone had left;
//! - ACS calls created by "the application", whose events the sandbox posts
//!   signed to the call's callback URI: see [`acs_calls`].
//!
//! It keeps everything in memory and is meant for loopback only.

pub mod acs;
pub mod acs_calls;
pub mod entra;
pub mod trtc;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A request header as text, if present and printable.
fn header<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub const SANDBOX_SECRET_ID: &str = "AKIDcallwardenSANDBOX";
pub const SANDBOX_SECRET_KEY: &str = "callwarden-sandbox-secret-key";
pub const SANDBOX_SDK_APP_ID: u64 = 1400000001;
/// The sandbox's ACS access key (base64 of `callwarden-sandbox-acs-key-0001`).
pub const SANDBOX_ACS_ACCESS_KEY: &str = "Y2FsbHdhcmRlbi1zYW5kYm94LWFjcy1rZXktMDAwMQ==";
/// The quota the real APIs publish: 20 requests per second per action.
pub const SANDBOX_QUOTA: u32 = 20;
/// How many requests the log keeps (oldest dropped first).
const REQUEST_LOG_CAP: usize = 200_000;

#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub secret_id: String,
    pub secret_key: String,
    pub sdk_app_id: u64,
    pub acs_access_key: String,
    /// The ACS resource's immutable id: the audience of the JWTs on the
    /// callbacks the sandbox posts.
    pub acs_resource_id: String,
    pub quota_per_second: u32,
    /// How long the Entra tokens the sandbox issues live.
    pub entra_token_lifetime: Duration,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            secret_id: SANDBOX_SECRET_ID.into(),
            secret_key: SANDBOX_SECRET_KEY.into(),
            sdk_app_id: SANDBOX_SDK_APP_ID,
            acs_access_key: SANDBOX_ACS_ACCESS_KEY.into(),
            acs_resource_id: acs_calls::SANDBOX_ACS_RESOURCE_ID.into(),
            quota_per_second: SANDBOX_QUOTA,
            entra_token_lifetime: entra::SANDBOX_TOKEN_LIFETIME,
        }
    }
}

/// A fault rule: requests it matches get this answer instead of the normal one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// API action to match (`DismissRoom`...); any when absent.
    #[serde(default)]
    pub action: Option<String>,
    /// Room id to match, as text (`"1234"` matches numeric room 1234 and string room "1234").
    #[serde(default)]
    pub room: Option<String>,
    /// Error code to answer with, e.g. `InternalError`; with `http_status`, ignored.
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// Answer with this HTTP status and a plain body instead of a TRTC envelope.
    #[serde(default)]
    pub http_status: Option<u16>,
    /// Wait this long before answering (normally, or with the fault). A delay
    /// longer than the client's timeout is a hung request: TRTC drops the
    /// work when the client hangs up; ACS carries it out once the delay ends
    /// (answering 409 to a repeat meanwhile), as a slow real service would.
    #[serde(default)]
    pub delay_ms: u64,
    /// How many requests the rule applies to; absent = every matching one.
    #[serde(default)]
    pub times: Option<u32>,
    /// ACS: the `Retry-After` seconds to send with an injected status.
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
    /// ACS: accept a removal but report it as `RemoveParticipantFailed`
    /// (`"failed"`), or report nothing at all (`"none"`).
    #[serde(default)]
    pub outcome_event: Option<String>,
    /// Applies to each matching request with this chance, in percent (drawn
    /// per request); a request it passes over is answered normally (or by a
    /// later rule) and does not count against `times`. Always, when absent.
    #[serde(default)]
    pub percent: Option<u8>,
    /// The rule lapses this long after it was added: an outage window.
    #[serde(default)]
    pub for_ms: Option<u64>,
}

/// A fault rule and when it lapses.
#[derive(Debug)]
struct ActiveFault {
    fault: Fault,
    until: Option<StdInstant>,
}

/// An ACS answer, kept under its repeatability id to be replayed.
#[derive(Debug, Clone)]
pub struct StoredAnswer {
    pub status: u16,
    pub body: Option<String>,
}

/// One request as the sandbox saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Milliseconds since the sandbox started.
    pub at_ms: u64,
    pub action: String,
    pub room: Option<String>,
    pub users: Vec<String>,
    /// The answer's error code, or `"success"` (TRTC); `HTTP<status>` (ACS).
    pub answer: String,
    /// ACS: the request's Repeatability-Request-ID, if it carried one.
    #[serde(default)]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    pub requests_by_action: HashMap<String, u64>,
    pub answers: HashMap<String, u64>,
    /// The most requests for one action within any sliding second.
    pub max_per_second_by_action: HashMap<String, u32>,
    pub max_per_second: u32,
    pub rate_limited: u64,
    /// Dismiss calls that ended a live room.
    pub rooms_dismissed: u64,
    /// Users removed from a live room.
    pub users_removed: u64,
    /// ACS: participants removed from a live call (a repeat does not count).
    pub participants_removed: u64,
    /// ACS: calls terminated.
    pub calls_terminated: u64,
    /// ACS: requests answered from the repeatability record without acting.
    pub repeats_replayed: u64,
    /// ACS: outcome events delivered to a callback (answered 2xx), and not.
    pub events_delivered: u64,
    pub events_undelivered: u64,
    /// ACS: how often the callback signing keys (JWKS) were fetched.
    pub signing_keys_served: u64,
    /// Entra tokens issued (client credentials and managed identity).
    pub entra_tokens_issued: u64,
}

#[derive(Debug, Default)]
struct Inner {
    windows: HashMap<String, VecDeque<StdInstant>>,
    stats: Stats,
    dismissed_numeric: HashSet<u64>,
    dismissed_str: HashSet<String>,
    /// ACS calls that were terminated (or ended by themselves).
    terminated_calls: HashSet<String>,
    /// ACS calls an application created, with their callback URIs.
    calls: HashMap<String, acs_calls::SandboxCall>,
    /// ACS (call, participant raw id) pairs removed.
    removed_participants: HashSet<(String, String)>,
    /// ACS first answers by repeatability id.
    repeats: HashMap<String, StoredAnswer>,
    /// ACS repeatability ids whose first request is still being carried out.
    repeats_in_progress: HashSet<String>,
    /// Entra tokens issued, and when each expires.
    entra_tokens: HashMap<String, StdInstant>,
    faults: Vec<ActiveFault>,
    log: VecDeque<RequestRecord>,
}

#[derive(Debug)]
pub struct SandboxState {
    options: SandboxOptions,
    started: StdInstant,
    inner: Mutex<Inner>,
    /// For posting ACS outcome events.
    http: reqwest::Client,
}

impl SandboxState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock would only leave counters half
        // updated; keep serving rather than poison every later request.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().log.iter().cloned().collect()
    }

    pub fn add_fault(&self, fault: Fault) {
        let until = fault.for_ms.map(|ms| StdInstant::now() + Duration::from_millis(ms));
        self.lock().faults.push(ActiveFault { fault, until });
    }

    /// Ends a room as if everyone had left: later calls get `RoomNotExist`.
    pub fn close_room(&self, room: &crate::domain::Room) {
        let mut inner = self.lock();
        match room {
            crate::domain::Room::Numeric(n) => inner.dismissed_numeric.insert(u64::from(*n)),
            crate::domain::Room::Str(s) => inner.dismissed_str.insert(s.clone()),
            crate::domain::Room::Call(c) => inner.terminated_calls.insert(c.clone()),
        };
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Counts a request against its action's sliding one-second window and
    /// says whether it is over the quota.
    fn over_quota(&self, action: &str) -> bool {
        let now = StdInstant::now();
        let mut inner = self.lock();
        let window = inner.windows.entry(action.to_string()).or_default();
        while window.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1)) {
            window.pop_front();
        }
        let over = window.len() >= self.options.quota_per_second as usize;
        window.push_back(now);
        let seen = window.len() as u32;
        let stats = &mut inner.stats;
        let max = stats.max_per_second_by_action.entry(action.to_string()).or_default();
        *max = (*max).max(seen);
        stats.max_per_second = stats.max_per_second.max(seen);
        if over {
            stats.rate_limited += 1;
        }
        over
    }

    /// The first fault rule that matches the request (and, for a rule with a
    /// probability, is drawn), used up by one. Lapsed rules are dropped.
    fn take_fault(&self, action: &str, room: Option<&str>) -> Option<Fault> {
        let now = StdInstant::now();
        let mut inner = self.lock();
        inner.faults.retain(|f| f.until.is_none_or(|until| now < until));
        let i = inner.faults.iter().position(|ActiveFault { fault: f, .. }| {
            f.action.as_deref().is_none_or(|a| a == action)
                && f.room.as_deref().is_none_or(|r| Some(r) == room)
                && f.percent.is_none_or(|p| rand::Rng::gen_range(&mut rand::thread_rng(), 0..100u8) < p)
        })?;
        let fault = inner.faults[i].fault.clone();
        if let Some(times) = &mut inner.faults[i].fault.times {
            *times = times.saturating_sub(1);
            if *times == 0 {
                inner.faults.remove(i);
            }
        }
        Some(fault)
    }

    fn record(&self, action: &str, room: Option<String>, users: Vec<String>, answer: &str) {
        self.record_with_id(action, room, users, answer, None);
    }

    fn record_with_id(
        &self,
        action: &str,
        room: Option<String>,
        users: Vec<String>,
        answer: &str,
        request_id: Option<String>,
    ) {
        self.record_at(self.elapsed_ms(), action, room, users, answer, request_id);
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Logs a request under the time `at_ms` it arrived (for one answered
    /// late, or never).
    fn record_at(
        &self,
        at_ms: u64,
        action: &str,
        room: Option<String>,
        users: Vec<String>,
        answer: &str,
        request_id: Option<String>,
    ) {
        let mut inner = self.lock();
        inner.stats.requests += 1;
        *inner.stats.requests_by_action.entry(action.to_string()).or_default() += 1;
        *inner.stats.answers.entry(answer.to_string()).or_default() += 1;
        if inner.log.len() >= REQUEST_LOG_CAP {
            inner.log.pop_front();
        }
        inner.log.push_back(RequestRecord {
            at_ms,
            action: action.to_string(),
            room,
            users,
            answer: answer.to_string(),
            request_id,
        });
    }
}

/// A running sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub addr: SocketAddr,
    pub state: Arc<SandboxState>,
}

impl Sandbox {
    /// Serves on `listener` until `shutdown`.
    pub async fn start(
        listener: TcpListener,
        options: SandboxOptions,
        shutdown: CancellationToken,
    ) -> std::io::Result<Sandbox> {
        let addr = listener.local_addr()?;
        let state = Arc::new(SandboxState {
            options,
            started: StdInstant::now(),
            inner: Mutex::new(Inner::default()),
            http: crate::http_client::http_client(),
        });
        let app = router(Arc::clone(&state));
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "sandbox server stopped");
            }
        });
        Ok(Sandbox { addr, state })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn router(state: Arc<SandboxState>) -> Router {
    Router::new()
        .route("/", post(trtc::handle))
        .route("/calling/callConnections/{*rest}", post(acs::handle).get(acs::get_call))
        .route("/calling/.well-known/acsopenidconfiguration", get(acs_calls::openid_configuration))
        .route("/calling/keys", get(acs_calls::keys))
        .route("/{tenant}/oauth2/v2.0/token", post(entra::token))
        .route("/metadata/identity/oauth2/token", get(entra::imds))
        .route("/_sandbox/acs/calls", post(acs_calls::create_call))
        .route("/_sandbox/acs/calls/{id}/participants", post(acs_calls::change_roster))
        .route("/_sandbox/stats", get(stats))
        .route("/_sandbox/requests", get(requests))
        .route("/_sandbox/faults", post(add_fault).delete(clear_faults))
        .route("/_sandbox/rooms/dismiss", post(dismiss_room))
        .with_state(state)
}

async fn stats(State(state): State<Arc<SandboxState>>) -> impl IntoResponse {
    axum::Json(state.stats())
}

async fn requests(State(state): State<Arc<SandboxState>>) -> impl IntoResponse {
    axum::Json(state.requests())
}

async fn add_fault(State(state): State<Arc<SandboxState>>, body: axum::body::Bytes) -> impl IntoResponse {
    match serde_json::from_slice::<Fault>(&body) {
        Ok(fault) => {
            state.add_fault(fault);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("bad fault rule: {e}")).into_response(),
    }
}

async fn clear_faults(State(state): State<Arc<SandboxState>>) -> impl IntoResponse {
    state.clear_faults();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DismissBody {
    #[serde(default)]
    room: Option<serde_json::Value>,
    #[serde(default)]
    call: Option<String>,
}

async fn dismiss_room(State(state): State<Arc<SandboxState>>, body: axum::body::Bytes) -> impl IntoResponse {
    let usage = "expected {\"room\": 1234}, {\"room\": \"abc\"} or {\"call\": \"id\"}";
    let Ok(DismissBody { room, call }) = serde_json::from_slice(&body) else {
        return (StatusCode::BAD_REQUEST, usage).into_response();
    };
    let mut inner = state.lock();
    match (room, call) {
        (Some(serde_json::Value::Number(n)), None) if n.as_u64().is_some() => {
            inner.dismissed_numeric.insert(n.as_u64().unwrap_or_default());
        }
        (Some(serde_json::Value::String(s)), None) => {
            inner.dismissed_str.insert(s);
        }
        (None, Some(c)) => {
            inner.terminated_calls.insert(c);
        }
        _ => return (StatusCode::BAD_REQUEST, usage).into_response(),
    }
    StatusCode::NO_CONTENT.into_response()
}
