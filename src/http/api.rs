//! The session API: register, read, list, extend and end sessions over
//! JSON, for app backends that would rather not shell out or write SQL.
//!
//! Every request needs `Authorization: Bearer <api_token>` (compared in
//! constant time); without it the answer is 401 and nothing changes. Bodies
//! are parsed into typed values before anything is written: a malformed body
//! is 400, a well-formed but unacceptable one 422, each with a JSON error
//! naming the field and the reason. Registration decisions are
//! [`crate::policy::register`]'s, the same as the CLI's.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::domain::session::{SessionCursor, SessionRecord};
use crate::domain::{Instant, Room, SessionId, SessionState, UserId, parse_duration};
use crate::intake::register::{self, RegisterError};
use crate::policy::Registration;
use crate::store::{Inserted, StoreError};

/// A deadline this close is worth waking the scheduler for (milliseconds).
const IMMINENT_MS: i64 = 2 * crate::scheduler::CHANGE_POLL.as_millis() as i64;

/// Most sessions one list request returns.
const LIST_LIMIT_MAX: u32 = 10_000;

/// An API error: status, the field at fault (if one), and why.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    field: Option<String>,
    reason: String,
}

impl ApiError {
    fn new(status: StatusCode, field: Option<&str>, reason: impl Into<String>) -> ApiError {
        ApiError { status, field: field.map(str::to_string), reason: reason.into() }
    }

    fn invalid(field: &str, reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, Some(field), reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "field": self.field, "reason": self.reason } });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(id) => {
                ApiError::new(StatusCode::NOT_FOUND, None, format!("no session {id}"))
            }
            e @ (StoreError::NotActive { .. } | StoreError::AlreadyCalled { .. }) => {
                ApiError::new(StatusCode::CONFLICT, None, e.to_string())
            }
            e @ StoreError::ExtensionLimit { .. } => {
                ApiError::new(StatusCode::CONFLICT, Some("by"), e.to_string())
            }
            e if e.is_refusal() => {
                // The time columns' checks: a start or deadline the store cannot hold.
                let text = e.to_string();
                let field =
                    ["started_at", "deadline"].iter().any(|c| text.contains(c)).then_some("started_at");
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    field,
                    format!("the database refused the session: {text}"),
                )
            }
            e => {
                tracing::error!(error = %e, "session API cannot reach the database");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, None, "the database is unavailable")
            }
        }
    }
}

type ApiResult = Result<Response, ApiError>;

fn authorize(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &app.api_token else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            None,
            "the session API is off: set api_token in the configuration",
        ));
    };
    // The scheme name is case-insensitive (RFC 7235).
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim());
    if bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, None, "a valid bearer token is required"))
    }
}

/// Reads a request's body, once the caller has authenticated: a client
/// without the token never makes the daemon buffer a body.
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, super::BODY_LIMIT).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            format!("the request body must be complete and at most {} bytes", super::BODY_LIMIT),
        )
    })
}

/// Parses a JSON body, naming the field of a type error.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        ApiError::new(StatusCode::BAD_REQUEST, field.as_deref(), e.into_inner().to_string())
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSession {
    policy: String,
    /// A JSON number is a numeric TRTC room, a JSON string a string room.
    room: Option<Value>,
    /// An ACS call connection id.
    call: Option<String>,
    user: Option<String>,
    participant: Option<String>,
    limit: Option<String>,
    started_at: Option<String>,
    idempotency_key: Option<String>,
}

impl CreateSession {
    fn registration(&self) -> Result<Registration, ApiError> {
        let room = match (&self.room, &self.call) {
            (Some(Value::Number(n)), None) => Room::numeric(&n.to_string()),
            (Some(Value::String(s)), None) => Room::string(s),
            (Some(_), None) => return Err(ApiError::invalid("room", "room must be a number or a string")),
            (None, Some(c)) => Room::call(c),
            (Some(_), Some(_)) => return Err(ApiError::invalid("room", "give room or call, not both")),
            (None, None) => return Err(ApiError::invalid("room", "room (TRTC) or call (ACS) is required")),
        }
        .map_err(|e| ApiError::invalid(if self.call.is_some() { "call" } else { "room" }, e.to_string()))?;
        let (user, field) = match (&self.user, &self.participant) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid("user", "give user or participant, not both"));
            }
            (Some(u), None) => (Some(u), "user"),
            (None, Some(p)) => (Some(p), "participant"),
            (None, None) => (None, "user"),
        };
        let users = match user {
            Some(u) => vec![UserId::parse(u).map_err(|e| ApiError::invalid(field, e.to_string()))?],
            None => Vec::new(),
        };
        let limit = match &self.limit {
            Some(l) => Some(parse_duration(l).map_err(|e| ApiError::invalid("limit", e))?),
            None => None,
        };
        let started_at = match &self.started_at {
            Some(t) => Some(Instant::parse(t).map_err(|e| ApiError::invalid("started_at", e.to_string()))?),
            None => None,
        };
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > 255)
        {
            return Err(ApiError::invalid("idempotency_key", "must be 1 to 255 bytes"));
        }
        Ok(Registration { policy: self.policy.clone(), room, users, limit, started_at })
    }
}

/// `POST /v1/sessions`
pub(super) async fn create(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> ApiResult {
    authorize(&app, &headers)?;
    let request: CreateSession = parse_body(&read_body(body).await?)?;
    let registration = request.registration()?;
    let now = app.clock.now();
    let config = app.config.current();
    // Under a budget, the user's remaining time is read and spent under one
    // lock, so two registrations at once cannot both spend it.
    let _budget_guard =
        register::lock_budget(&app.budget_lock, &config, &registration).await.map_err(ApiError::from)?;
    let mut sessions =
        register::decide(&app.store, &config, &registration, now).await.map_err(|e| match e {
            RegisterError::Store(e) => ApiError::from(e),
            RegisterError::Refused(r) => {
                let field = match r.field {
                    "users" if registration.room.kind() == crate::domain::RoomKind::Call => "participant",
                    "users" => "user",
                    "room" if request.call.is_some() => "call",
                    other => other,
                };
                ApiError::invalid(field, r.reason)
            }
        })?;
    // One participant at most in a request, so one session.
    let Some(session) = sessions.pop() else {
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, "no session was decided"));
    };
    let key = request.idempotency_key.clone();
    let registered =
        app.registrar.register(session.clone(), key.clone(), now, "registered through the API").await?;
    if let Inserted::Existing(earlier) = registered {
        // The same request again: same policy, room, participant, limit, and
        // start when one was given (a start left to "now" differs by retry).
        let limit = |started: &str, deadline: Option<&str>, extended_ms: i64| {
            let (Ok(s), Some(Ok(d))) = (Instant::parse(started), deadline.map(Instant::parse)) else {
                return None;
            };
            Some(d.millis_since(s) - extended_ms)
        };
        let same = earlier.policy == session.policy
            && earlier.room_id == session.room.id_text()
            && earlier.room_kind == session.room.kind().as_str()
            && earlier.user_id.as_deref() == session.user.as_ref().map(UserId::as_str)
            && limit(&earlier.started_at, earlier.deadline.as_deref(), earlier.extended_ms)
                == Some(session.deadline.millis_since(session.started_at))
            && (request.started_at.is_none() || earlier.started_at == session.started_at.to_string());
        if !same {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                Some("idempotency_key"),
                format!("already used for session {}, with other parameters", earlier.id),
            ));
        }
        return Ok((StatusCode::OK, axum::Json(earlier)).into_response());
    }
    // The scheduler sees every commit within its polling interval; wake it
    // at once only when the deadline is nearer than that, so a stream of
    // registrations does not keep it busy re-reading the queue.
    if session.deadline.millis_since(now) < IMMINENT_MS {
        app.wake_scheduler();
    }
    let record = SessionRecord::registered(&session, key, now);
    let mut response = (StatusCode::CREATED, axum::Json(record)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/sessions/{}", session.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn session_id(id: &str) -> Result<SessionId, ApiError> {
    id.parse().map_err(|_| ApiError::new(StatusCode::NOT_FOUND, None, format!("no session {id}")))
}

/// `GET /v1/sessions/{id}`
pub(super) async fn get_one(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&app, &headers)?;
    let record: SessionRecord = app.store.session(session_id(&id)?).await?;
    Ok(axum::Json(record).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    state: Option<String>,
    limit: Option<u32>,
    /// The `next` token of the previous page.
    after: Option<String>,
}

/// `GET /v1/sessions?state=active&limit=100&after=<next>`, earliest deadline
/// first, a page at a time: `next` is the token of the next page, absent on
/// the last one.
pub(super) async fn list(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    authorize(&app, &headers)?;
    let Query(query) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, None, e.body_text()))?;
    let state = match &query.state {
        Some(s) => Some(s.parse::<SessionState>().map_err(|e| ApiError::invalid("state", e.to_string()))?),
        None => None,
    };
    let limit = query.limit.unwrap_or(1000);
    if limit == 0 || limit > LIST_LIMIT_MAX {
        return Err(ApiError::invalid("limit", format!("limit must be 1 to {LIST_LIMIT_MAX}")));
    }
    let after =
        match &query.after {
            Some(token) => Some(SessionCursor::parse(token).ok_or_else(|| {
                ApiError::invalid("after", "after must be the next token of a previous page")
            })?),
            None => None,
        };
    let sessions = app.store.list_sessions(state, after.as_ref(), limit).await?;
    let full = sessions.len() == limit as usize;
    let next = sessions.last().filter(|_| full).map(|s| SessionCursor::after(s).token());
    let mut body = json!({ "sessions": sessions });
    if let Some(next) = next {
        body["next"] = json!(next);
    }
    Ok(axum::Json(body).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendSession {
    by: String,
}

/// `POST /v1/sessions/{id}/extend` with `{"by": "5m"}`
pub(super) async fn extend(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult {
    authorize(&app, &headers)?;
    let id = session_id(&id)?;
    let request: ExtendSession = parse_body(&read_body(body).await?)?;
    let by = parse_duration(&request.by)
        .and_then(crate::policy::extension)
        .map_err(|e| ApiError::invalid("by", e))?;
    let policy = app.store.session(id).await?.policy;
    let config = app.config.current();
    app.store
        .extend_session(id, by, config.max_extension(&policy), config.warn_before(&policy), app.clock.now())
        .await?;
    app.wake_scheduler();
    Ok(axum::Json(app.store.session(id).await?).into_response())
}

/// `POST /v1/sessions/{id}/end`: the call ended by itself.
pub(super) async fn end(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&app, &headers)?;
    let id = session_id(&id)?;
    app.store.end_session(id, app.clock.now(), "ended through the API").await?;
    app.wake_scheduler();
    Ok(axum::Json(app.store.session(id).await?).into_response())
}
