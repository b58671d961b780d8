//! What both provider clients share about the transport: classifying a
//! request that got no answer, and printing an error with its causes.

use super::Classified;

/// Timeouts and connection failures: the request may not have arrived, or
/// arrived and its answer was lost. Both actions are idempotent in effect.
pub fn transport_error(e: &reqwest::Error) -> Classified {
    let code = if e.is_timeout() {
        "Timeout"
    } else if e.is_connect() {
        "ConnectionError"
    } else {
        "TransportError"
    };
    Classified::Retryable { code: code.into(), message: error_chain(e), wait: None }
}

/// The error and its causes on one line. reqwest errors name the URL, which
/// carries no secret for either provider.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
