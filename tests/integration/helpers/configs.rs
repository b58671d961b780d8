//! Test configurations: one small YAML builder, [`ConfigYaml`], the four
//! configs the tests start from as thin calls of it, and the keys and retry
//! settings those files hold.

use std::path::Path;

use callwarden::sandbox::{
    SANDBOX_ACS_ACCESS_KEY, SANDBOX_SDK_APP_ID, SANDBOX_SECRET_ID, SANDBOX_SECRET_KEY,
};

/// The session API's bearer token in [`http_config_text`] configs.
pub const API_TOKEN: &str = "test-api-token-0123456789abcdef";
/// The TRTC callback key in [`http_config_text`] configs.
pub const TRTC_CALLBACK_KEY: &str = "TestCallbackKey0123";
/// The ACS callback secret (`?token=`) in [`http_config_text`] configs.
pub const ACS_WEBHOOK_SECRET: &str = "acs-webhook-secret-0123";

/// A provider endpoint nothing listens on, for configs whose provider is
/// never called.
pub const NOWHERE: &str = "http://127.0.0.1:9";

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

/// A test config, written out by [`ConfigYaml::text`]. It starts as a TRTC
/// provider named `trtc` on `endpoint` that signs with the sandbox's key,
/// and the standard policies `consultation` (dismiss_room, 30m) and
/// `paid-chat` (remove_user, 20m); the methods change it.
#[derive(Debug, Clone)]
pub struct ConfigYaml {
    database: String,
    endpoint: String,
    trtc_secret_key: String,
    /// The ACS provider's key; without one there is no ACS provider.
    acs_access_key: Option<String>,
    /// Both providers' retry policy and request timeout, when not the default.
    retry: Option<Retry>,
    standard_policies: bool,
    /// Policy entries after the standard ones.
    more_policies: String,
    listener: Option<Listener>,
}

impl ConfigYaml {
    pub fn new(database: &Path, endpoint: &str) -> ConfigYaml {
        ConfigYaml {
            database: database.display().to_string(),
            endpoint: endpoint.to_string(),
            trtc_secret_key: SANDBOX_SECRET_KEY.to_string(),
            acs_access_key: None,
            retry: None,
            standard_policies: true,
            more_policies: String::new(),
            listener: None,
        }
    }

    /// The TRTC provider signs with `secret_key`.
    pub fn trtc_secret_key(mut self, secret_key: &str) -> ConfigYaml {
        self.trtc_secret_key = secret_key.to_string();
        self
    }

    /// An ACS provider named `acs` that signs with `access_key` (base64), and
    /// two more standard policies: `acs-consultation` (terminate_call, 30m)
    /// and `acs-paid-chat` (remove_participant, 20m).
    pub fn acs(mut self, access_key: &str) -> ConfigYaml {
        self.acs_access_key = Some(access_key.to_string());
        self
    }

    /// Every provider retries and times out as `retry` says.
    pub fn retry(mut self, retry: Retry) -> ConfigYaml {
        self.retry = Some(retry);
        self
    }

    /// More policies: YAML lines indented as entries under `policies:`,
    /// after the standard ones in file order.
    pub fn policies(mut self, entries: &str) -> ConfigYaml {
        self.more_policies.push_str(entries);
        self
    }

    /// Leaves the standard policies out: only [`ConfigYaml::policies`] remain.
    pub fn without_standard_policies(mut self) -> ConfigYaml {
        self.standard_policies = false;
        self
    }

    /// `listen` on a port the system picks (read it with
    /// [`Daemon::http_url`](super::Daemon::http_url)), and the keys
    /// `listener` asks for.
    pub fn listen(mut self, listener: Listener) -> ConfigYaml {
        self.listener = Some(listener);
        self
    }

    pub fn text(&self) -> String {
        let (database, endpoint) = (&self.database, &self.endpoint);
        let mut text = format!(
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
{retry}",
            secret_key = self.trtc_secret_key,
            retry = self.retry_lines(4),
        );
        if let Some(access_key) = &self.acs_access_key {
            text.push_str(&format!(
                "  acs:
    kind: azure-acs
    endpoint: {endpoint}
    access_key: \"{access_key}\"
    api_version: 2024-09-15
    max_requests_per_second: 19
{retry}",
                retry = self.retry_lines(5),
            ));
        }
        text.push_str("policies:\n");
        if self.standard_policies {
            text.push_str(&policy("consultation", "trtc", "30m", "dismiss_room"));
            text.push_str(&policy("paid-chat", "trtc", "20m", "remove_user"));
            if self.acs_access_key.is_some() {
                text.push_str(&policy("acs-consultation", "acs", "30m", "terminate_call"));
                text.push_str(&policy("acs-paid-chat", "acs", "20m", "remove_participant"));
            }
        }
        text.push_str(&self.more_policies);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        if let Some(listener) = self.listener {
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
        }
        text
    }

    /// A provider's `retry:` line, and `request_timeout:` when set; without
    /// [`ConfigYaml::retry`], `default_attempts` with short backoffs.
    fn retry_lines(&self, default_attempts: u32) -> String {
        match self.retry {
            None => format!(
                "    retry: {{ max_attempts: {default_attempts}, initial_backoff: 100ms, max_backoff: 1s }}\n"
            ),
            Some(Retry { max_attempts, initial_ms, max_ms, timeout_ms }) => format!(
                "    retry: {{ max_attempts: {max_attempts}, initial_backoff: {initial_ms}ms, max_backoff: {max_ms}ms }}\n    \
                 request_timeout: {timeout_ms}ms\n"
            ),
        }
    }
}

fn policy(name: &str, provider: &str, max_duration: &str, action: &str) -> String {
    format!("  {name}:\n    provider: {provider}\n    max_duration: {max_duration}\n    action: {action}\n")
}

/// The configuration every test starts from; `secret_key` is what the daemon
/// signs with.
pub fn config_text(database: &Path, endpoint: &str, secret_key: &str) -> String {
    ConfigYaml::new(database, endpoint).trtc_secret_key(secret_key).text()
}

/// [`config_text`]'s TRTC provider and policies, plus an ACS provider named
/// `acs` that signs with `access_key` (base64), and two ACS policies:
/// `acs-consultation` (terminate_call) and `acs-paid-chat` (remove_participant).
pub fn acs_config_text(database: &Path, endpoint: &str, access_key: &str) -> String {
    ConfigYaml::new(database, endpoint).acs(access_key).text()
}

/// [`acs_config_text`] (TRTC and ACS providers on the sandbox, the four
/// policies without `match`) plus `listen` on a port the system picks
/// (read it with [`Daemon::http_url`](super::Daemon::http_url)), the keys
/// `listener` asks for, and `extra_policies` (YAML lines indented as entries
/// under `policies:`), which come after the four in file order.
pub fn http_config_text(database: &Path, endpoint: &str, listener: Listener, extra_policies: &str) -> String {
    ConfigYaml::new(database, endpoint)
        .acs(SANDBOX_ACS_ACCESS_KEY)
        .policies(extra_policies)
        .listen(listener)
        .text()
}

/// [`http_config_text`]'s providers and policies (listener on, no API or
/// webhooks), with both providers' retry policy and request timeout
/// replaced by `retry`.
pub fn fault_config_text(database: &Path, endpoint: &str, retry: Retry) -> String {
    ConfigYaml::new(database, endpoint)
        .acs(SANDBOX_ACS_ACCESS_KEY)
        .retry(retry)
        .listen(Listener::default())
        .text()
}
