//! `POST /webhooks/acs`: verifies a callback (the `?token=` secret, ACS's
//! signed JWT, or both, as configured), applies what concerns callwarden,
//! and relays it to the application when `forward_to` is set.
//!
//! Operation callbacks settle removals the provider had accepted
//! (`RemoveParticipantSucceeded` → `enforced`, audit `confirmed`;
//! `RemoveParticipantFailed` → `already_ended` when its subcode says the
//! participant or call is gone, else `failed` with ACS's result code;
//! `CallDisconnected` → every accepted session of that call `enforced`).
//! Call events (`CallConnected`, `ParticipantsUpdated`, `CallDisconnected`)
//! are presence, applied through `intake::presence`; the application's own
//! legs are left out of a roster. Duplicates and late events are harmless:
//! a session already settled is left alone.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::acs::{AcsEvent, parse_acs_events, token_matches};
use super::acs_jwt::{AcsJwtVerifier, JwtRefusal};
use super::acs_relay::{AcsRelay, Relayed};
use super::{GateRefusal, refusal_response};
use crate::config::AcsWebhook;
use crate::domain::audit::AuditEntry;
use crate::domain::{Room, SessionState, UserId};
use crate::http::AppState;
use crate::intake::presence::{self, Cause, PresenceEvent, RosterOrder};
use crate::policy::Presence;
use crate::providers::acs::GONE_SUBCODES;
use crate::store::StoreError;

/// The ACS webhook as configured: how callbacks are verified, where they
/// are relayed, which legs are the application's own.
#[derive(Debug)]
pub struct AcsCallbacks {
    pub config: AcsWebhook,
    jwt: Option<AcsJwtVerifier>,
    relay: Option<AcsRelay>,
}

impl AcsCallbacks {
    pub fn new(http: reqwest::Client, config: &AcsWebhook) -> AcsCallbacks {
        AcsCallbacks {
            jwt: config
                .jwt_audience
                .as_deref()
                .map(|aud| AcsJwtVerifier::new(http.clone(), &config.openid_configuration_url, aud)),
            relay: config.forward_to.as_deref().map(|url| AcsRelay::new(http, url)),
            config: config.clone(),
        }
    }

    /// Fetches ACS's signing keys ahead of the first callback.
    pub async fn prefetch_keys(&self) {
        if let Some(jwt) = &self.jwt {
            jwt.prefetch().await;
        }
    }
}

/// What callwarden's own handling of a verified callback came to.
enum Handled {
    Applied {
        changed: u32,
        ignored: u32,
        skipped: u32,
    },
    /// Not a CloudEvents batch at all.
    Malformed(String),
    /// The database refused: ACS (or its retry) must try again.
    Unavailable,
}

/// `POST /webhooks/acs`.
pub(in crate::http) async fn handle(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(acs) = state.acs.clone() else {
        return (StatusCode::NOT_FOUND, "the ACS webhook is not configured\n").into_response();
    };
    // Both credentials travel in the head: the body is read only for a
    // caller that has them.
    if let Some(secret) = &acs.config.secret
        && !token_matches(query.as_deref(), secret.expose())
    {
        return refusal_response("acs", "token", GateRefusal::Unauthorized);
    }
    if let Some(jwt) = &acs.jwt {
        let authorization = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        match jwt.verify(authorization).await {
            Ok(()) => {}
            Err(JwtRefusal::Invalid(reason)) => {
                tracing::debug!(%reason, "ACS callback JWT refused");
                return refusal_response("acs", "JWT", GateRefusal::Unauthorized);
            }
            Err(JwtRefusal::KeysUnavailable(reason)) => {
                crate::metrics::webhook("acs", "keys_unavailable");
                return (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response();
            }
        }
    }
    let Ok(body) = axum::body::to_bytes(body, crate::http::BODY_LIMIT).await else {
        return refusal_response(
            "acs",
            "token",
            GateRefusal::Malformed("the body is incomplete or too large".into()),
        );
    };
    // Relayed while callwarden handles it, so neither waits for the other.
    let own = handle_events(&state, &acs, &body);
    let (handled, relayed) = match &acs.relay {
        Some(relay) => {
            let (handled, relayed) = tokio::join!(own, relay.relay(&headers, body.clone()));
            (handled, Some(relayed))
        }
        None => (own.await, None),
    };
    answer(handled, relayed)
}

fn answer(handled: Handled, relayed: Option<Relayed>) -> Response {
    let relayed_status = relayed.map(Relayed::status);
    match handled {
        Handled::Unavailable => {
            crate::metrics::webhook("acs", "unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
        }
        Handled::Malformed(reason) => match relayed_status {
            // The application may understand what callwarden does not.
            Some(status) => {
                crate::metrics::webhook("acs", "malformed");
                tracing::debug!(%reason, "a relayed ACS callback callwarden cannot read");
                (status, axum::Json(json!({ "error": reason, "relayed": status.as_u16() }))).into_response()
            }
            None => refusal_response("acs", "token", GateRefusal::Malformed(reason)),
        },
        Handled::Applied { changed, ignored, skipped } => {
            crate::metrics::webhook("acs", "accepted");
            let mut body = json!({ "changed": changed, "ignored": ignored, "skipped": skipped });
            let status = match relayed_status {
                Some(status) => {
                    body["relayed"] = json!(status.as_u16());
                    status
                }
                None => StatusCode::OK,
            };
            (status, axum::Json(body)).into_response()
        }
    }
}

async fn handle_events(state: &AppState, acs: &AcsCallbacks, body: &Bytes) -> Handled {
    let events = match parse_acs_events(body) {
        Ok(events) => events,
        Err(reason) => return Handled::Malformed(reason),
    };
    let (mut changed, mut ignored, mut skipped) = (0u32, 0u32, 0u32);
    for event in events {
        let event = match event {
            Ok(event) => event,
            Err(reason) => {
                // Authenticated, so a refusal would gain nothing: the other
                // events are applied and the batch acknowledged.
                crate::metrics::acs_event_skipped();
                tracing::warn!(%reason, "an ACS event that cannot be acted on; skipped");
                skipped += 1;
                continue;
            }
        };
        match apply_acs_event(state, acs, &event).await {
            Ok(0) => {
                tracing::debug!(?event, "ACS event changes nothing here");
                ignored += 1;
            }
            Ok(n) => {
                // Participant ids (phone numbers among them) only at debug.
                tracing::info!(kind = event.kind(), call = event.call(), sessions = n, "ACS event applied");
                tracing::debug!(?event, "ACS event applied");
                changed += n;
            }
            // Events already applied are no-ops when the delivery comes again.
            Err(e) => {
                tracing::error!(error = %e, "cannot record an ACS event; answering 503 so that a retry applies it");
                return Handled::Unavailable;
            }
        }
    }
    if changed > 0 {
        state.wake_scheduler();
    }
    Handled::Applied { changed, ignored, skipped }
}

/// The configured ACS providers' names, in file order.
fn acs_providers(state: &AppState) -> Vec<String> {
    state
        .config
        .current()
        .providers
        .values()
        .filter(|p| matches!(p.settings, crate::config::ProviderSettings::Acs(_)))
        .map(|p| p.name.clone())
        .collect()
}

/// Applies one ACS event; returns how many sessions it changed.
async fn apply_acs_event(state: &AppState, acs: &AcsCallbacks, event: &AcsEvent) -> Result<u32, StoreError> {
    let now = state.clock.now();
    match event {
        AcsEvent::RemoveParticipant { succeeded, session: Some(id), call, result } => {
            // A subcode saying the participant or call is gone: the goal holds.
            let gone = result
                .sub_code
                .and_then(|s| u32::try_from(s).ok())
                .is_some_and(|s| GONE_SUBCODES.contains(&s));
            let (state_to, entry) = if *succeeded {
                let e = AuditEntry::new("confirmed", *id)
                    .detail(format!("RemoveParticipantSucceeded on call {call}"));
                (SessionState::Enforced, e)
            } else {
                let code =
                    format!("{}/{}", result.code.unwrap_or_default(), result.sub_code.unwrap_or_default());
                let (settled, event, why) = if gone {
                    (SessionState::AlreadyEnded, "already_ended", "the participant or call was already gone")
                } else {
                    (SessionState::Failed, "failed", "the removal failed")
                };
                let e = AuditEntry {
                    error_code: Some(code),
                    ..AuditEntry::new(event, *id).detail(format!(
                        "RemoveParticipantFailed on call {call} ({why}): {}",
                        result.describe()
                    ))
                };
                (settled, e)
            };
            Ok(u32::from(state.store.confirm_session(*id, state_to, &entry, now).await?))
        }
        AcsEvent::RemoveParticipant { session: None, .. } | AcsEvent::Other(_) => Ok(0),
        AcsEvent::CallDisconnected { call, at } => {
            // Ordered against CallConnected by the provider's clock, not ours.
            let at = at.unwrap_or(now);
            let entry = AuditEntry {
                event: "confirmed",
                detail: Some(format!("CallDisconnected: call {call} ended")),
                ..AuditEntry::default()
            };
            let confirmed = state.store.confirm_call(call, &entry, now).await?;
            let mut changed = u32::try_from(confirmed).unwrap_or(u32::MAX);
            changed = changed.saturating_add(room_event(state, call, &Presence::RoomClosed, at).await?);
            Ok(changed)
        }
        AcsEvent::CallConnected { call, at } => {
            room_event(state, call, &Presence::RoomOpened, at.unwrap_or(now)).await
        }
        AcsEvent::ParticipantsUpdated { call, sequence, participants, at } => {
            let room = Room::Call(call.clone());
            let at = at.unwrap_or(now);
            // The roster lists the application's own leg too: never timed.
            let participants: Vec<UserId> =
                participants.iter().filter(|p| !acs.config.is_app_identity(p.as_str())).cloned().collect();
            let order = match sequence {
                Some(n) => RosterOrder::Sequence(*n),
                None => RosterOrder::Time,
            };
            let mut changed = 0;
            for provider in acs_providers(state) {
                changed += presence::apply_roster(state.intake(), &provider, &room, order, &participants, at)
                    .await?;
            }
            Ok(changed)
        }
    }
}

/// A call opened or closed, for every ACS provider.
async fn room_event(
    state: &AppState,
    call: &str,
    presence: &Presence,
    at: crate::domain::Instant,
) -> Result<u32, StoreError> {
    let room = Room::Call(call.to_string());
    let mut changed = 0;
    for provider in acs_providers(state) {
        let event = PresenceEvent {
            provider: &provider,
            sdk_app_id: None,
            room: &room,
            presence,
            at,
            cause: Cause::Plain,
            note: None,
        };
        changed += presence::record_and_apply(state.intake(), &event).await?;
    }
    Ok(changed)
}
