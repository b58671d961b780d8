//! Test configurations: the YAML files the tests start daemons and CLIs
//! with, and the keys those files hold.

use std::path::Path;

use callwarden::sandbox::{
    SANDBOX_ACS_ACCESS_KEY, SANDBOX_SDK_APP_ID, SANDBOX_SECRET_ID, SANDBOX_SECRET_KEY,
};

/// The configuration every test starts from; `secret_key` is what the daemon
/// signs with.
pub fn config_text(database: &Path, endpoint: &str, secret_key: &str) -> String {
    format!(
        "\
database: {database}
providers:
  trtc:
    kind: tencent-trtc
    sdk_app_id: {SANDBOX_SDK_APP_ID}
    region: ap-guangzhou
    secret_id: {SANDBOX_SECRET_ID}
    secret_key: {secret_key}
    endpoint: {endpoint}
    max_requests_per_second: 19
    retry: {{ max_attempts: 4, initial_backoff: 100ms, max_backoff: 1s }}
policies:
  consultation:
    provider: trtc
    max_duration: 30m
    action: dismiss_room
  paid-chat:
    provider: trtc
    max_duration: 20m
    action: remove_user
",
        database = database.display()
    )
}

/// [`config_text`]'s TRTC provider and policies, plus an ACS provider named
/// `acs` that signs with `access_key` (base64), and two ACS policies:
/// `acs-consultation` (terminate_call) and `acs-paid-chat` (remove_participant).
pub fn acs_config_text(database: &Path, endpoint: &str, access_key: &str) -> String {
    format!(
        "\
database: {database}
providers:
  trtc:
    kind: tencent-trtc
    sdk_app_id: {SANDBOX_SDK_APP_ID}
    region: ap-guangzhou
    secret_id: {SANDBOX_SECRET_ID}
    secret_key: {SANDBOX_SECRET_KEY}
    endpoint: {endpoint}
    max_requests_per_second: 19
    retry: {{ max_attempts: 4, initial_backoff: 100ms, max_backoff: 1s }}
  acs:
    kind: azure-acs
    endpoint: {endpoint}
    access_key: \"{access_key}\"
    api_version: 2024-09-15
    max_requests_per_second: 19
    retry: {{ max_attempts: 5, initial_backoff: 100ms, max_backoff: 1s }}
policies:
  consultation:
    provider: trtc
    max_duration: 30m
    action: dismiss_room
  paid-chat:
    provider: trtc
    max_duration: 20m
    action: remove_user
  acs-consultation:
    provider: acs
    max_duration: 30m
    action: terminate_call
  acs-paid-chat:
    provider: acs
    max_duration: 20m
    action: remove_participant
",
        database = database.display()
    )
}

/// The session API's bearer token in [`http_config_text`] configs.
pub const API_TOKEN: &str = "test-api-token-0123456789abcdef";
/// The TRTC callback key in [`http_config_text`] configs.
pub const TRTC_CALLBACK_KEY: &str = "TestCallbackKey0123";
/// The ACS callback secret (`?token=`) in [`http_config_text`] configs.
pub const ACS_WEBHOOK_SECRET: &str = "acs-webhook-secret-0123";

/// What the HTTP listener of a test daemon serves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Listener {
    /// Serve the session API (`api_token`).
    pub api: bool,
    /// Take TRTC callbacks (`webhooks.trtc.callback_key`).
    pub trtc: bool,
    /// Take ACS callbacks (`webhooks.acs.secret`).
    pub acs: bool,
}

impl Listener {
    pub const ALL: Listener = Listener { api: true, trtc: true, acs: true };
}

/// [`acs_config_text`] (TRTC and ACS providers on the sandbox, the four
/// policies without `match`) plus `listen` on a port the system picks
/// (read it with [`Daemon::http_url`]), the keys `listener` asks for, and
/// `extra_policies` (YAML lines indented as entries under `policies:`),
/// which come after the four in file order.
pub fn http_config_text(database: &Path, endpoint: &str, listener: Listener, extra_policies: &str) -> String {
    let mut text = acs_config_text(database, endpoint, SANDBOX_ACS_ACCESS_KEY);
    text.push_str(extra_policies);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("listen: 127.0.0.1:0\n");
    if listener.api {
        text.push_str(&format!("api_token: {API_TOKEN}\n"));
    }
    if listener.trtc || listener.acs {
        text.push_str("webhooks:\n");
    }
    if listener.trtc {
        text.push_str(&format!("  trtc:\n    callback_key: {TRTC_CALLBACK_KEY}\n"));
    }
    if listener.acs {
        text.push_str(&format!("  acs:\n    secret: {ACS_WEBHOOK_SECRET}\n"));
    }
    text
}

/// A provider's `retry:` and `request_timeout:` in a fault test's config.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub max_attempts: u32,
    pub initial_ms: u64,
    pub max_ms: u64,
    pub timeout_ms: u64,
}

impl Retry {
    /// The shortest time a session can spend in backoff before its last
    /// attempt: each wait is jittered down to half its ceiling at worst. A
    /// fault that lasts longer than this can exhaust the attempts.
    pub fn min_retry_span_ms(&self) -> u64 {
        (1..self.max_attempts)
            .map(|n| (self.initial_ms.saturating_mul(1 << (n - 1).min(20))).min(self.max_ms) / 2)
            .sum()
    }
}

/// [`http_config_text`]'s providers and policies (listener on, no API or
/// webhooks), with both providers' retry policy and request timeout
/// replaced by `retry`.
pub fn fault_config_text(database: &Path, endpoint: &str, retry: Retry) -> String {
    let text = http_config_text(database, endpoint, Listener::default(), "");
    let Retry { max_attempts, initial_ms, max_ms, timeout_ms } = retry;
    let replacement = format!(
        "retry: {{ max_attempts: {max_attempts}, initial_backoff: {initial_ms}ms, max_backoff: {max_ms}ms }}\n    \
         request_timeout: {timeout_ms}ms"
    );
    let mut out = String::new();
    for line in text.lines() {
        match line.trim_start().strip_prefix("retry: ") {
            Some(_) => out.push_str(&format!("    {replacement}\n")),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    assert_eq!(out.matches("request_timeout").count(), 2, "both providers got the retry policy:\n{out}");
    out
}
