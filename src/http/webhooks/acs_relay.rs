//! `webhooks.acs.forward_to`: the application keeps receiving its call's
//! callbacks while the call's callback URI points at callwarden. Each
//! verified callback is relayed unchanged (the body bytes, `Content-Type`
//! and `Authorization`, so the application can verify ACS's JWT itself),
//! concurrently with callwarden's own handling, bounded by [`RELAY_TIMEOUT`];
//! ACS is answered with the application's status.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};

/// How long the application has to answer a relayed callback. Below the
/// listener's request timeout, so ACS always gets an answer.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(5);

/// Relays ACS callbacks to the application.
#[derive(Debug, Clone)]
pub struct AcsRelay {
    http: reqwest::Client,
    url: String,
}

/// What the application answered, as ACS should hear it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relayed {
    /// The application's own status.
    Answered(StatusCode),
    /// The application did not answer in time: 504.
    TimedOut,
    /// The application could not be reached: 502.
    Unreachable,
}

impl Relayed {
    /// The status ACS gets: the application's, or a 5xx when it is down, so
    /// that a retry (ACS's, if any) reaches both.
    pub fn status(self) -> StatusCode {
        match self {
            Relayed::Answered(s) => s,
            Relayed::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            Relayed::Unreachable => StatusCode::BAD_GATEWAY,
        }
    }
}

impl AcsRelay {
    pub fn new(http: reqwest::Client, url: &str) -> AcsRelay {
        AcsRelay { http, url: url.to_string() }
    }

    /// Relays one callback; never fails, reports what happened.
    pub async fn relay(&self, headers: &HeaderMap, body: Bytes) -> Relayed {
        let mut request = self.http.post(&self.url).timeout(RELAY_TIMEOUT).body(body);
        for name in [axum::http::header::CONTENT_TYPE, axum::http::header::AUTHORIZATION] {
            if let Some(value) = headers.get(&name) {
                request = request.header(name, value.clone());
            }
        }
        let relayed = match request.send().await {
            Ok(response) => {
                let status =
                    StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                // The answer's body is not needed; read (capped) so the
                // connection can be reused.
                let _ = crate::http_client::read_capped(response).await;
                Relayed::Answered(status)
            }
            Err(e) if e.is_timeout() => Relayed::TimedOut,
            Err(_) => Relayed::Unreachable,
        };
        crate::metrics::acs_relay(match relayed {
            Relayed::Answered(s) if s.is_success() => "2xx",
            Relayed::Answered(s) if s.is_client_error() => "4xx",
            Relayed::Answered(_) => "5xx",
            Relayed::TimedOut => "timeout",
            Relayed::Unreachable => "unreachable",
        });
        // Logged at most once a minute (an application down for an hour
        // must not flood the journal); counted always.
        if !matches!(relayed, Relayed::Answered(s) if s.is_success())
            && let Some(failed) = super::REFUSALS.note("acs", "relay")
        {
            tracing::warn!(
                url = %crate::http_client::display_url(&self.url),
                answer = %relayed.status(),
                failed,
                "the application did not take relayed ACS callbacks; ACS gets its answer"
            );
        }
        relayed
    }
}
