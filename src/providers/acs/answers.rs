//! What ACS's answers mean: the wait a 429 or 503 asks for, the subcode of
//! an error, and the classification of every answer to a removal or a
//! terminate (what is done, what is retried, what is a configuration
//! error).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::providers::Classified;

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
