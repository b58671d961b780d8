//! Provider callbacks, one file per provider: [`trtc`] (room callbacks,
//! signed with the callback key) and [`acs`] (CloudEvents: operation
//! outcomes and call events, authenticated by a URL token). Each has a gate
//! without I/O (authenticate, then parse the whole body), kept apart from
//! its handler so it can be fuzzed; what an event means for sessions is
//! `intake::presence`'s.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub mod acs;
pub mod trtc;

pub use acs::{AcsEvent, ResultInfo, parse_acs_events, verify_acs_callback};
pub use trtc::{TrtcEvent, parse_trtc_event, verify_trtc_callback};

/// Why a provider callback was refused before anything was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateRefusal {
    /// The credential (TRTC's `Sign`, ACS's `?token=`) is missing or wrong.
    Unauthorized,
    /// Authenticated, but not a callback this daemon understands; the reason
    /// goes back to the sender.
    Malformed(String),
}

/// The answer to a refused callback: counted and logged (a warning, with no
/// body content), 401 for a missing or wrong `credential`, 400 with the
/// reason for a body that does not parse.
fn refusal_response(source: &'static str, credential: &'static str, refusal: GateRefusal) -> Response {
    match refusal {
        GateRefusal::Unauthorized => {
            crate::metrics::webhook(source, "unauthorized");
            tracing::warn!(source, "refused a callback with a missing or wrong {credential}");
            (StatusCode::UNAUTHORIZED, format!("missing or wrong {credential}\n")).into_response()
        }
        GateRefusal::Malformed(reason) => {
            crate::metrics::webhook(source, "malformed");
            tracing::warn!(source, %reason, "refused a malformed callback");
            (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response()
        }
    }
}
