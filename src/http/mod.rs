//! The daemon's HTTP listener (`listen:` in the config): the session API
//! (`/v1/sessions`), provider webhooks and health checks.
//!
//! Every request has a body size limit and a time limit, and every
//! connection a limit on how long it may idle (see [`listener`]); shutdown
//! stops accepting and lets requests under way finish. Handlers parse what arrives
//! into typed values first and touch the store only with a request that
//! parsed and authenticated completely, so a forged or malformed request
//! changes nothing.

pub mod api;
pub mod listener;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use tokio::sync::Notify;

use crate::clock::Clock;
use crate::domain::secret::Secret;
use crate::store::Store;

/// Larger than any provider callback batch; anything bigger is refused (413).
pub const BODY_LIMIT: usize = 1024 * 1024;
/// A handler that takes longer is answered 408 and dropped.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    /// Registrations go through here, committed in groups.
    pub registrar: crate::store::Registrar,
    pub clock: Clock,
    /// The configuration in force (policies change on reload).
    pub config: crate::config::live::Live,
    /// Serializes what spends one user's budget.
    pub budget_lock: crate::intake::BudgetLock,
    /// Applies webhook presence events, group-committed.
    pub presence: crate::store::PresenceWriter,
    /// The session API's bearer token; `None` turns the API off.
    pub api_token: Option<Secret>,
    /// Wakes the scheduler at once after a change made here (it would
    /// otherwise notice within its polling interval).
    pub changed: Option<Arc<Notify>>,
    /// How ACS callbacks are verified and relayed; `None` turns the ACS
    /// webhook off.
    pub acs: Option<Arc<webhooks::AcsCallbacks>>,
    /// The keys TRTC callbacks are signed with; none turns the TRTC webhook off.
    pub trtc_callback_keys: crate::config::TrtcCallbackKeys,
}

impl AppState {
    /// The intake use cases' view of this state.
    pub fn intake(&self) -> crate::intake::Intake<'_> {
        crate::intake::Intake {
            store: &self.store,
            clock: &self.clock,
            config: &self.config,
            budget_lock: &self.budget_lock,
            presence: &self.presence,
        }
    }

    /// Wakes the scheduler now rather than at its next poll of the database.
    pub fn wake_scheduler(&self) {
        if let Some(changed) = &self.changed {
            changed.notify_one();
        }
    }
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/sessions", post(api::create).get(api::list))
        .route("/v1/sessions/{id}", get(api::get_one))
        .route("/v1/sessions/{id}/extend", post(api::extend))
        .route("/v1/sessions/{id}/end", post(api::end))
        .route_layer(axum::middleware::map_response(count_api_response));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/webhooks/acs", post(webhooks::acs_handler::handle))
        .route("/webhooks/trtc", post(webhooks::trtc::handle))
        .merge(api)
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .with_state(Arc::new(state))
}

/// The session API's OpenAPI document (docs/openapi.json).
async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("../../docs/openapi.json"))
        .into_response()
}

async fn count_api_response(response: Response) -> Response {
    crate::metrics::api_request(response.status().as_u16());
    response
}

/// Ready when the database answers and no database step of the daemon is
/// failing (a lock held elsewhere or a full disk leaves reads working).
/// The longest `/readyz` waits for the database's answer.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, String) {
    if let Some(error) = state.store.health().failing() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("database writes failing: {error}\n"));
    }
    // A server that is gone may not even refuse: answer within a bound.
    match tokio::time::timeout(READY_TIMEOUT, state.store.next_deadline()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: the database does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n".into())
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = READY_TIMEOUT.as_millis() as u64,
                "not ready: the database does not answer in time"
            );
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n".into())
        }
    }
}

/// Prometheus text format. Session counts are read from the database now;
/// the rest is what the daemon recorded.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let Some(handle) = crate::metrics::install() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "metrics recorder unavailable\n").into_response();
    };
    match state.store.state_counts().await {
        Ok(counts) => {
            for s in crate::domain::SessionState::ALL {
                let n = counts.iter().find(|(name, _)| name == s.as_str()).map_or(0, |(_, n)| *n);
                crate::metrics::sessions(s.as_str(), n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot count sessions for /metrics"),
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}

/// Serves until `shutdown`, then drains requests under way.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: CancellationToken) {
    if let Some(handle) = crate::metrics::install() {
        tokio::spawn(crate::metrics::upkeep(handle, shutdown.clone()));
    }
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(%addr, max_connections = listener::max_connections(), "http listening");
    listener::serve_connections(listener, router(state), listener::Limits::daemon(), shutdown).await;
}
