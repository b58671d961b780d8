//! Provider callbacks: [`trtc`] (room callbacks, signed with the callback
//! key) and ACS (CloudEvents: operation outcomes and call events), whose
//! parts are [`acs`] (parsing and the `?token=` gate), [`acs_jwt`] (ACS's
//! signed tokens and their keys), [`acs_relay`] (the relay to the
//! application) and [`acs_handler`] (the endpoint and what each event
//! does). Each provider has a gate without I/O (authenticate, then parse),
//! kept apart from its handler so it can be fuzzed; what an event means for
//! sessions is `intake::presence`'s.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub mod acs;
pub mod acs_handler;
pub mod acs_jwt;
pub mod acs_relay;
pub mod trtc;

pub use acs::{AcsEvent, ParsedEvent, ResultInfo, parse_acs_events, verify_acs_callback};
pub use acs_handler::AcsCallbacks;
pub use trtc::{TrtcEvent, parse_trtc_event, verify_trtc_callback};

/// Why a provider callback was refused before anything was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateRefusal {
    /// The credential (TRTC's `Sign`, ACS's `?token=` or JWT) is missing or wrong.
    Unauthorized,
    /// Authenticated, but not a callback this daemon understands; the reason
    /// goes back to the sender.
    Malformed(String),
}

/// The answer to a refused callback: 401 for a missing or wrong
/// `credential`, 400 with the reason for a body that does not parse.
/// Counted always (`callwarden_webhook_requests_total`), logged sparingly:
/// a flood of forged requests must not push real errors out of journald's
/// rate limit.
fn refusal_response(source: &'static str, credential: &'static str, refusal: GateRefusal) -> Response {
    match refusal {
        GateRefusal::Unauthorized => {
            crate::metrics::webhook(source, "unauthorized");
            if let Some(refused) = REFUSALS.note(source, "unauthorized") {
                tracing::warn!(source, refused, "refused callbacks with a missing or wrong {credential}");
            }
            (StatusCode::UNAUTHORIZED, format!("missing or wrong {credential}\n")).into_response()
        }
        GateRefusal::Malformed(reason) => {
            crate::metrics::webhook(source, "malformed");
            if let Some(refused) = REFUSALS.note(source, "malformed") {
                tracing::warn!(source, refused, %reason, "refused malformed callbacks; the last one");
            }
            (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response()
        }
    }
}

/// How often a kind of refusal is logged, at most.
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

static REFUSALS: RefusalLog = RefusalLog(std::sync::Mutex::new(Vec::new()));

/// Counts refusals per source and kind, and says when to log them: the
/// first at once, then at most once per [`REFUSAL_LOG_EVERY`] with how
/// many there were since.
struct RefusalLog(std::sync::Mutex<Vec<RefusalCount>>);

/// A source and kind of refusal, when it was last logged, and how many
/// since.
type RefusalCount = ((&'static str, &'static str), std::time::Instant, u64);

impl RefusalLog {
    /// Counts one refusal; `Some(n)` when it is time to log the `n` since
    /// the last line.
    fn note(&self, source: &'static str, kind: &'static str) -> Option<u64> {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match seen.iter_mut().find(|(key, _, _)| *key == (source, kind)) {
            None => {
                seen.push(((source, kind), now, 0));
                Some(1)
            }
            Some((_, logged, since)) => {
                *since += 1;
                if now.duration_since(*logged) < REFUSAL_LOG_EVERY {
                    return None;
                }
                let n = *since;
                (*logged, *since) = (now, 0);
                Some(n)
            }
        }
    }
}
