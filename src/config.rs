//! The YAML configuration: parsed once, validated, and turned into typed
//! values. Every refusal names the file, the line and what to fix.
//!
//! This module owns the shape of the file (the public interface in the
//! README) and secret handling: secrets are read from the file, from
//! `${ENV}` references or from `*_file` paths, and live in [`Secret`], which
//! never prints its content. It does no network or database I/O.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use indexmap::IndexMap;
use serde::Deserialize;

use crate::budget::{Budget, Window};
use crate::domain::secret::Secret;
use crate::domain::{Action, RetryPolicy, RoomKind, parse_duration};

pub mod live;

/// Where the daemon looks when neither `--config` nor `CALLWARDEN_CONFIG` is given.
pub const DEFAULT_PATH: &str = "/etc/callwarden/callwarden.yaml";
/// A provider's published quota; configuring more is refused.
pub const PROVIDER_QUOTA_PER_SECOND: u32 = 20;
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 19;
/// Longer than any call a time limit is meant for; a typo like `30d` for `30m`.
pub const MAX_SESSION_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_TRTC_ENDPOINT: &str = "https://trtc.tencentcloudapi.com";
/// TRTC regions a `region:` may name.
pub const TRTC_REGIONS: [&str; 4] = ["ap-beijing", "ap-guangzhou", "ap-mumbai", "ap-singapore"];
/// The Call Automation API version sent when `api_version` is not set.
pub const DEFAULT_ACS_API_VERSION: &str = "2024-09-15";
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `grace` a policy may give after its deadline.
pub const MAX_GRACE: Duration = Duration::from_secs(3600);

/// A refused configuration: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {reason}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from.
    pub path: PathBuf,
    /// The SQLite file; relative paths are taken from the config file's
    /// folder, so the daemon and the CLI always agree on it.
    pub database: PathBuf,
    pub providers: IndexMap<String, ProviderConfig>,
    /// In file order, which later decides webhook matching.
    pub policies: IndexMap<String, Policy>,
    /// Where the HTTP listener (webhooks, health) binds; none when absent.
    pub listen: Option<std::net::SocketAddr>,
    /// The bearer token the session API requires; the API is off without it.
    pub api_token: Option<Secret>,
    /// The secret ACS callbacks must carry as `?token=`.
    pub acs_webhook_secret: Option<Secret>,
    /// The key TRTC signs its room callbacks with (the console's callback key).
    pub trtc_callback_key: Option<Secret>,
    /// What the daemon prunes, and how it signs audit checkpoints.
    pub retention: Retention,
    /// Where warnings and outcome events are POSTed; none when absent.
    pub notifications: Option<Notifications>,
    /// The zone whose calendar budget windows follow (`time_zone`, IANA name).
    pub time_zone: chrono_tz::Tz,
    /// The files this configuration was read from: the main file, then each
    /// policy file in load order. A reload re-reads them all.
    pub sources: Vec<PathBuf>,
    /// `policy_files` patterns, resolved against the config file's folder;
    /// a file that newly matches one is picked up by the next reload.
    pub policy_globs: Vec<String>,
    /// Accepted but suspicious settings, for the operator to see at start.
    pub warnings: Vec<String>,
}

/// `notifications:`: the app's endpoint for warnings and outcome events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifications {
    pub url: String,
    /// Signs every delivery (HMAC-SHA256); see README "Notifications".
    pub secret: Secret,
}

/// `retention:`. Nothing is pruned when a period is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    pub sessions: Option<Duration>,
    pub audit: Option<Duration>,
    /// Signs the checkpoints that pruning leaves, so a checkpoint cannot be
    /// forged by someone with only database access.
    pub checkpoint_key: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    pub name: String,
    pub max_requests_per_second: u32,
    pub retry: RetryPolicy,
    pub request_timeout: Duration,
    pub settings: ProviderSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderSettings {
    Trtc(TrtcSettings),
    Acs(AcsSettings),
}

impl ProviderSettings {
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderSettings::Trtc(_) => "tencent-trtc",
            ProviderSettings::Acs(_) => "azure-acs",
        }
    }

    /// The policy actions this kind of provider can carry out.
    pub fn actions(&self) -> [Action; 2] {
        match self {
            ProviderSettings::Trtc(_) => [Action::DismissRoom, Action::RemoveUser],
            ProviderSettings::Acs(_) => [Action::TerminateCall, Action::RemoveParticipant],
        }
    }

    /// The room kinds this kind of provider's sessions name.
    pub fn room_kinds(&self) -> &'static [RoomKind] {
        match self {
            ProviderSettings::Trtc(_) => &[RoomKind::Numeric, RoomKind::String],
            ProviderSettings::Acs(_) => &[RoomKind::Call],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrtcSettings {
    pub sdk_app_id: u64,
    pub region: String,
    pub secret_id: String,
    pub secret_key: Secret,
    pub endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcsSettings {
    /// `https://<resource>.communication.azure.com`, or a sandbox.
    pub endpoint: String,
    /// Base64, as the portal shows it; decoded only when signing.
    pub access_key: Secret,
    pub api_version: String,
    /// Where ACS reports outcomes (`operationCallbackUri`); without it,
    /// an accepted request is recorded as enforced without confirmation.
    pub callback_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub provider: String,
    /// Which webhook events this policy takes; `None`: explicit registration only.
    pub matcher: Option<Match>,
    /// One session per room, or one per participant.
    pub scope: Scope,
    pub max_duration: Duration,
    /// The most a session may be extended in all; unlimited when absent.
    pub max_extension: Option<Duration>,
    pub action: Action,
    /// `shadow`: everything happens and is recorded except the provider call.
    pub shadow: bool,
    /// Notifications this long before the deadline, longest first.
    pub warn_before: Vec<Duration>,
    /// How long after the deadline enforcement waits.
    pub grace: Duration,
    /// A cap on each user's time under this policy per calendar window.
    pub budget: Option<Budget>,
    /// The file that defines the policy.
    pub source: PathBuf,
}

/// What a webhook event must fit for a policy to take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// Glob (`*`, `?`) on the room id text; any room when absent.
    pub room: Option<String>,
    pub sdk_app_id: Option<u64>,
}

impl Match {
    pub fn fits(&self, room_id: &str, sdk_app_id: Option<u64>) -> bool {
        let room_fits =
            self.room.as_deref().is_none_or(|glob| wildmatch::WildMatch::new(glob).matches(room_id));
        let app_fits = self.sdk_app_id.is_none_or(|want| sdk_app_id == Some(want));
        room_fits && app_fits
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The room or call has the clock; the action ends it for everyone.
    Room,
    /// Each participant has their own clock, started when they enter.
    Participant,
}

// ---- the file as written -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    database: String,
    listen: Option<String>,
    api_token: Option<RawSecret>,
    api_token_file: Option<String>,
    #[serde(default)]
    webhooks: RawWebhooks,
    retention: Option<RawRetention>,
    providers: IndexMap<String, RawProvider>,
    #[serde(default)]
    policies: IndexMap<String, RawPolicy>,
    policy_files: Option<Vec<String>>,
    notifications: Option<RawNotifications>,
    time_zone: Option<String>,
}

/// A file named by `policy_files`: policies only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicyFile {
    #[serde(default)]
    policies: IndexMap<String, RawPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotifications {
    url: String,
    secret: Option<RawSecret>,
    secret_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    per: String,
    window: String,
    limit: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    /// How long settled sessions are kept after they settled.
    sessions: Option<String>,
    /// How long audit rows are kept.
    audit: Option<String>,
    checkpoint_key: Option<RawSecret>,
    checkpoint_key_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    acs: Option<RawAcsWebhook>,
    trtc: Option<RawTrtcWebhook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrtcWebhook {
    callback_key: Option<RawSecret>,
    callback_key_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcsWebhook {
    secret: Option<RawSecret>,
    secret_file: Option<String>,
}

/// A provider section as written. One flat struct for every kind rather
/// than an internally tagged enum: serde buffers tagged enums, which loses
/// the line of a wrong key or type. Which keys fit which kind is checked
/// after parsing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    kind: ProviderKind,
    sdk_app_id: Option<u64>,
    region: Option<String>,
    secret_id: Option<String>,
    secret_key: Option<RawSecret>,
    secret_key_file: Option<String>,
    endpoint: Option<String>,
    access_key: Option<RawSecret>,
    access_key_file: Option<String>,
    api_version: Option<String>,
    callback_url: Option<String>,
    max_requests_per_second: Option<u32>,
    retry: Option<RawRetry>,
    request_timeout: Option<String>,
}

/// A secret as written. Accepts any scalar (a numeric key is still a key) and,
/// unlike a plain `String`, never repeats the value in a type error.
struct RawSecret(String);

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string (the secret, or \"${ENV_VAR}\")")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSecret, E> {
                Ok(RawSecret(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawSecret, E> {
                Ok(RawSecret(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawSecret, E> {
                Ok(RawSecret(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<RawSecret, E> {
                Err(E::custom("a secret written as a decimal number loses digits; quote it"))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<RawSecret, E> {
                Err(E::custom("a secret must be a string; quote it"))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
enum ProviderKind {
    #[serde(rename = "tencent-trtc")]
    Trtc,
    #[serde(rename = "azure-acs")]
    Acs,
}

impl ProviderKind {
    fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Trtc => "tencent-trtc",
            ProviderKind::Acs => "azure-acs",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<u32>,
    initial_backoff: Option<String>,
    max_backoff: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    provider: String,
    #[serde(rename = "match")]
    matcher: Option<RawMatch>,
    scope: Option<String>,
    max_duration: String,
    max_extension: Option<String>,
    action: String,
    mode: Option<String>,
    warn_before: Option<Vec<String>>,
    grace: Option<String>,
    budget: Option<RawBudget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    /// Glob on the room id (numeric rooms in decimal) or ACS call id.
    room: Option<String>,
    /// TRTC: only events of this application (the `SdkAppId` header).
    sdk_app_id: Option<u64>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            reason: format!("cannot read the file: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Validates config text as if it had been read from `path`. No error or
    /// warning repeats a value written at a secret key (see [`mask_secrets`]).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        match Config::parse_unmasked(path, text) {
            Ok(mut config) => {
                config.warnings = config.warnings.into_iter().map(|w| mask_secrets(text, w)).collect();
                Ok(config)
            }
            Err(mut e) => {
                e.reason = mask_secrets(text, e.reason);
                Err(e)
            }
        }
    }

    fn parse_unmasked(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let ctx = Ctx { path, text };
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
        let mut warnings = Vec::new();

        let database = expand_env(&raw.database).map_err(|var| {
            ctx.error(&["database"], format!("database refers to ${{{var}}}, which is not set"))
        })?;
        if database.trim().is_empty() {
            return Err(ctx.error(&["database"], "database must name a file".into()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let database = base.join(database.trim());

        let mut providers = IndexMap::new();
        for (name, raw) in raw.providers {
            let provider = match raw.kind {
                ProviderKind::Trtc | ProviderKind::Acs => ctx.provider(&name, raw, &mut warnings)?,
            };
            providers.insert(name, provider);
        }
        if providers.is_empty() {
            return Err(ctx.error(&["providers"], "at least one provider is needed".into()));
        }

        let mut policies = IndexMap::new();
        let mut defined_at = std::collections::HashMap::new();
        for (name, raw) in raw.policies {
            let policy = ctx.policy(&name, raw, &providers)?;
            defined_at.insert(name.clone(), (path.to_path_buf(), locate(text, &["policies", &name])));
            policies.insert(name, policy);
        }
        let mut sources = vec![path.to_path_buf()];
        let mut policy_globs = Vec::new();
        for pattern in raw.policy_files.iter().flatten() {
            let full = base.join(pattern.trim()).to_string_lossy().into_owned();
            let bad = |reason: String| ctx.error(&["policy_files"], format!("policy_files: {reason}"));
            let matches =
                glob::glob(&full).map_err(|e| bad(format!("{pattern:?} is not a valid pattern: {e}")))?;
            let mut files: Vec<PathBuf> = matches.filter_map(Result::ok).filter(|p| p.is_file()).collect();
            files.sort();
            if files.is_empty() {
                warnings.push(format!("policy_files: {pattern:?} matches no file"));
            }
            for file in files {
                if sources.contains(&file) {
                    continue;
                }
                load_policy_file(&file, &providers, &mut policies, &mut defined_at)?;
                sources.push(file);
            }
            policy_globs.push(full);
        }
        check_match_order(&policies, &defined_at)?;

        let listen = match &raw.listen {
            None => None,
            Some(text) => Some(text.trim().parse::<std::net::SocketAddr>().map_err(|_| {
                ctx.error(&["listen"], format!("listen {text:?} is not an address like 127.0.0.1:8720"))
            })?),
        };
        let api_token = match (&raw.api_token, &raw.api_token_file) {
            (None, None) => None,
            (inline, file) => Some(ctx.secret_pair(
                &[],
                "api_token",
                ("api_token", inline.as_ref()),
                ("api_token_file", file.as_ref()),
                "the session API's bearer token",
            )?),
        };
        if let Some(token) = &api_token
            && token.expose().len() < 16
        {
            return Err(ctx.error(&["api_token"], "api_token must be at least 16 characters".into()));
        }
        if api_token.is_some() && listen.is_none() {
            warnings.push("api_token is set but listen is not: the session API is not served".into());
        }
        let acs_webhook_secret = match &raw.webhooks.acs {
            None => None,
            Some(w) => Some(ctx.secret_pair(
                &["webhooks", "acs"],
                "",
                ("secret", w.secret.as_ref()),
                ("secret_file", w.secret_file.as_ref()),
                "the token ACS callbacks carry as ?token=",
            )?),
        };
        let trtc_callback_key = match &raw.webhooks.trtc {
            None => None,
            Some(w) => Some(ctx.secret_pair(
                &["webhooks", "trtc"],
                "",
                ("callback_key", w.callback_key.as_ref()),
                ("callback_key_file", w.callback_key_file.as_ref()),
                "the callback key set in the TRTC console",
            )?),
        };
        if trtc_callback_key.is_some() && listen.is_none() {
            warnings
                .push("webhooks.trtc is set but listen is not: nothing will receive TRTC callbacks".into());
        }
        let retention = match &raw.retention {
            None => Retention::default(),
            Some(r) => {
                let period = |key: &'static str,
                              v: &Option<String>|
                 -> Result<Option<Duration>, ConfigError> {
                    let Some(text) = v else { return Ok(None) };
                    let d = parse_duration(text)
                        .map_err(|e| ctx.error(&["retention", key], format!("retention: {e}")))?;
                    if d < Duration::from_secs(24 * 3600) {
                        return Err(ctx
                            .error(&["retention", key], format!("retention: {key} must be at least 1 day")));
                    }
                    Ok(Some(d))
                };
                let checkpoint_key = match (&r.checkpoint_key, &r.checkpoint_key_file) {
                    (None, None) => None,
                    (inline, file) => Some(ctx.secret_pair(
                        &["retention"],
                        "checkpoint_key",
                        ("checkpoint_key", inline.as_ref()),
                        ("checkpoint_key_file", file.as_ref()),
                        "the key that signs audit checkpoints",
                    )?),
                };
                let audit = period("audit", &r.audit)?;
                if audit.is_some() && checkpoint_key.is_none() {
                    warnings.push(
                        "retention.audit prunes the audit log without retention.checkpoint_key: its checkpoints are unsigned".into(),
                    );
                }
                Retention { sessions: period("sessions", &r.sessions)?, audit, checkpoint_key }
            }
        };
        let confirming: Vec<&str> = providers
            .values()
            .filter(|p| matches!(&p.settings, ProviderSettings::Acs(a) if a.callback_url.is_some()))
            .map(|p| p.name.as_str())
            .collect();
        if let Some(name) = confirming.first() {
            if acs_webhook_secret.is_none() {
                return Err(ctx.error(
                    &["providers", name, "callback_url"],
                    format!(
                        "provider {name:?}: callback_url needs webhooks.acs.secret, so that callbacks can be authenticated"
                    ),
                ));
            }
            if listen.is_none() {
                return Err(ctx.error(
                    &["providers", name, "callback_url"],
                    format!("provider {name:?}: callback_url needs listen, the address that receives the callbacks"),
                ));
            }
        }
        if acs_webhook_secret.is_some() && listen.is_none() {
            warnings.push("webhooks.acs is set but listen is not: nothing will receive ACS callbacks".into());
        }
        let notifications = match &raw.notifications {
            None => None,
            Some(n) => {
                let url = expand_env(&n.url).map_err(|var| {
                    ctx.error(
                        &["notifications", "url"],
                        format!("notifications.url refers to ${{{var}}}, which is not set"),
                    )
                })?;
                match reqwest::Url::parse(url.trim()) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                    _ => {
                        return Err(ctx.error(
                            &["notifications", "url"],
                            format!("notifications.url {:?} is not an http(s) URL", n.url),
                        ));
                    }
                }
                let secret = ctx.secret_pair(
                    &["notifications"],
                    "",
                    ("secret", n.secret.as_ref()),
                    ("secret_file", n.secret_file.as_ref()),
                    "the key that signs each notification",
                )?;
                Some(Notifications { url: url.trim().to_string(), secret })
            }
        };
        if notifications.is_none()
            && let Some(p) = policies.values().find(|p| !p.warn_before.is_empty())
        {
            let (file, line) = defined_at.get(&p.name).cloned().unwrap_or((p.source.clone(), None));
            return Err(ConfigError {
                file,
                line,
                reason: format!(
                    "policy {:?}: warn_before needs notifications.url, where the warnings go",
                    p.name
                ),
            });
        }
        if let Some(keep) = retention.sessions
            && let Some(p) = policies.values().find(|p| p.budget.is_some_and(|b| b.window.longest() > keep))
        {
            let window = p.budget.map(|b| b.window.as_str()).unwrap_or_default();
            return Err(ctx.error(
                &["retention", "sessions"],
                format!(
                    "retention.sessions ({}) is shorter than policy {:?}'s budget window ({window}): sessions pruned \
                     before the window ends would stop counting against the budget",
                    humantime::format_duration(keep),
                    p.name
                ),
            ));
        }
        let time_zone = match &raw.time_zone {
            None => chrono_tz::Tz::UTC,
            Some(name) => name.trim().parse::<chrono_tz::Tz>().map_err(|_| {
                ctx.error(
                    &["time_zone"],
                    format!("time_zone {name:?} is not an IANA zone name like Europe/Berlin or UTC"),
                )
            })?,
        };
        Ok(Config {
            path: path.to_path_buf(),
            database,
            providers,
            policies,
            listen,
            api_token,
            acs_webhook_secret,
            trtc_callback_key,
            retention,
            notifications,
            time_zone,
            sources,
            policy_globs,
            warnings,
        })
    }

    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.get(name)
    }

    /// The warning points of a session's policy (none if the policy is gone).
    pub fn warn_before(&self, policy: &str) -> &[Duration] {
        self.policy(policy).map_or(&[], |p| p.warn_before.as_slice())
    }

    /// The extension limit of a session's policy (none if the policy is gone).
    pub fn max_extension(&self, policy: &str) -> Option<Duration> {
        self.policy(policy).and_then(|p| p.max_extension)
    }
}

/// Reads one of `policy_files` into `policies`. A name defined before is an
/// error naming both places.
fn load_policy_file(
    file: &Path,
    providers: &IndexMap<String, ProviderConfig>,
    policies: &mut IndexMap<String, Policy>,
    defined_at: &mut std::collections::HashMap<String, (PathBuf, Option<usize>)>,
) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        line: None,
        reason: format!("cannot read the policy file: {e}"),
    })?;
    let ctx = Ctx { path: file, text: &text };
    let raw: RawPolicyFile = serde_yaml::from_str(&text).map_err(|e| syntax_error(file, &text, &e))?;
    for (name, raw) in raw.policies {
        let line = locate(&text, &["policies", &name]);
        if let Some((first, first_line)) = defined_at.get(&name) {
            let at = |f: &Path, l: &Option<usize>| {
                format!("{}{}", f.display(), l.map(|l| format!(":{l}")).unwrap_or_default())
            };
            return Err(ConfigError {
                file: file.to_path_buf(),
                line,
                reason: format!(
                    "policy {name:?} is defined twice: at {} and at {}",
                    at(first, first_line),
                    at(file, &line)
                ),
            });
        }
        let policy = ctx.policy(&name, raw, providers)?;
        defined_at.insert(name.clone(), (file.to_path_buf(), line));
        policies.insert(name, policy);
    }
    Ok(())
}

/// Refuses a policy whose `match` can never take a webhook event, because an
/// earlier policy of the same provider takes every event it would: the same
/// match, or one that fits every room (no room glob, or `*`) of the same or
/// any application.
fn check_match_order(
    policies: &IndexMap<String, Policy>,
    defined_at: &std::collections::HashMap<String, (PathBuf, Option<usize>)>,
) -> Result<(), ConfigError> {
    let place = |name: &str| defined_at.get(name).cloned().unwrap_or_default();
    let matching: Vec<(&Policy, &Match)> =
        policies.values().filter_map(|p| p.matcher.as_ref().map(|m| (p, m))).collect();
    for (i, (later, lm)) in matching.iter().enumerate() {
        for (earlier, em) in &matching[..i] {
            if earlier.provider != later.provider {
                continue;
            }
            let app_covers = em.sdk_app_id.is_none() || em.sdk_app_id == lm.sdk_app_id;
            let room_covers = matches!(em.room.as_deref(), None | Some("*")) || em.room == lm.room;
            if app_covers && room_covers {
                let (file, line) = place(&later.name);
                let (efile, eline) = place(&earlier.name);
                return Err(ConfigError {
                    file,
                    line,
                    reason: format!(
                        "policy {:?}: its match can never take a webhook event: policy {:?} ({}{}) comes first and matches everything it would",
                        later.name,
                        earlier.name,
                        efile.display(),
                        eline.map(|l| format!(":{l}")).unwrap_or_default()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// A session's length: positive, and not absurd.
pub fn session_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > MAX_SESSION_DURATION {
        return Err(format!(
            "{s:?} is longer than the {} a session may last",
            humantime::format_duration(MAX_SESSION_DURATION)
        ));
    }
    Ok(d)
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    /// One policy, checked against the providers; errors point into this
    /// context's file.
    fn policy(
        &self,
        name: &str,
        raw: RawPolicy,
        providers: &IndexMap<String, ProviderConfig>,
    ) -> Result<Policy, ConfigError> {
        let ctx = self;
        let name = name.to_string();
        let at = |key: &'static str| [String::from("policies"), name.clone(), key.to_string()];
        let err = |key: &'static str, reason: String| {
            let path = at(key);
            let refs: Vec<&str> = path.iter().map(String::as_str).collect();
            ctx.error(&refs, format!("policy {name:?}: {reason}"))
        };
        if !providers.contains_key(&raw.provider) {
            let known: Vec<&str> = providers.keys().map(String::as_str).collect();
            return Err(err(
                "provider",
                format!("unknown provider {:?} (configured: {})", raw.provider, known.join(", ")),
            ));
        }
        let max_duration = session_duration(&raw.max_duration)
            .map_err(|r| err("max_duration", format!("max_duration: {r}")))?;
        let action: Action = raw.action.parse().map_err(|e| err("action", format!("{e}")))?;
        let settings = &providers[&raw.provider].settings;
        if !settings.actions().contains(&action) {
            let fits: Vec<&str> = settings.actions().iter().map(|a| a.as_str()).collect();
            return Err(err(
                "action",
                format!(
                    "action {} does not fit provider {:?} of kind {} (use {})",
                    action.as_str(),
                    raw.provider,
                    settings.kind(),
                    fits.join(" or ")
                ),
            ));
        }
        let scope = match raw.scope.as_deref() {
            None if action.targets_user() => Scope::Participant,
            None => Scope::Room,
            Some("room") => Scope::Room,
            Some("participant") => Scope::Participant,
            Some(other) => {
                return Err(err("scope", format!("unknown scope {other:?} (expected room or participant)")));
            }
        };
        if (scope == Scope::Participant) != action.targets_user() {
            return Err(err(
                "scope",
                format!(
                    "scope {} does not fit action {}: a room scope ends the room, a participant scope removes the participant",
                    if scope == Scope::Room { "room" } else { "participant" },
                    action.as_str()
                ),
            ));
        }
        let matcher = match raw.matcher {
            None => None,
            Some(m) => {
                if m.sdk_app_id.is_some() && !matches!(settings, ProviderSettings::Trtc(_)) {
                    return Err(err("match", "match.sdk_app_id applies to TRTC providers only".into()));
                }
                if let (Some(want), ProviderSettings::Trtc(t)) = (m.sdk_app_id, settings)
                    && want != t.sdk_app_id
                {
                    return Err(err(
                        "match",
                        format!("match.sdk_app_id {want} is not provider {:?}'s sdk_app_id", raw.provider),
                    ));
                }
                Some(Match { room: m.room, sdk_app_id: m.sdk_app_id })
            }
        };
        let max_extension = match &raw.max_extension {
            Some(text) => Some(
                session_duration(text).map_err(|r| err("max_extension", format!("max_extension: {r}")))?,
            ),
            None => None,
        };
        let shadow = match raw.mode.as_deref() {
            None | Some("enforce") => false,
            Some("shadow") => true,
            Some(other) => {
                return Err(err("mode", format!("unknown mode {other:?} (expected enforce or shadow)")));
            }
        };
        let mut warn_before = Vec::new();
        for text in raw.warn_before.iter().flatten() {
            let d = parse_duration(text).map_err(|r| err("warn_before", format!("warn_before: {r}")))?;
            if d >= max_duration {
                return Err(err(
                    "warn_before",
                    format!(
                        "warn_before {text:?} is not shorter than max_duration ({}): it would fire at the start",
                        humantime::format_duration(max_duration)
                    ),
                ));
            }
            warn_before.push(d);
        }
        warn_before.sort_unstable_by(|a, b| b.cmp(a));
        warn_before.dedup();
        let grace = match &raw.grace {
            None => Duration::ZERO,
            Some(text) => {
                let d = parse_duration(text).map_err(|r| err("grace", format!("grace: {r}")))?;
                if d > MAX_GRACE {
                    return Err(err(
                        "grace",
                        format!("grace {text:?} is longer than {}", humantime::format_duration(MAX_GRACE)),
                    ));
                }
                d
            }
        };
        let budget = match raw.budget {
            None => None,
            Some(b) => {
                if b.per != "user" {
                    return Err(err("budget", format!("budget.per {:?} is not supported (use user)", b.per)));
                }
                if scope != Scope::Participant {
                    return Err(err(
                        "budget",
                        "a budget counts each user's time, so it needs scope participant".into(),
                    ));
                }
                let window: Window = b.window.parse().map_err(|r| err("budget", format!("budget: {r}")))?;
                let limit =
                    parse_duration(&b.limit).map_err(|r| err("budget", format!("budget.limit: {r}")))?;
                Some(Budget { window, limit })
            }
        };
        Ok(Policy {
            name: name.clone(),
            provider: raw.provider,
            matcher,
            scope,
            max_duration,
            max_extension,
            action,
            shadow,
            warn_before,
            grace,
            budget,
            source: self.path.to_path_buf(),
        })
    }

    fn error(&self, key_path: &[&str], reason: String) -> ConfigError {
        ConfigError { file: self.path.to_path_buf(), line: locate(self.text, key_path), reason }
    }

    /// A provider section: the settings every kind shares, then its kind's own.
    fn provider(
        &self,
        name: &str,
        raw: RawProvider,
        warnings: &mut Vec<String>,
    ) -> Result<ProviderConfig, ConfigError> {
        let err = |key: &str, reason: String| {
            self.error(&["providers", name, key], format!("provider {name:?}: {reason}"))
        };
        let foreign: &[(&str, bool)] = match raw.kind {
            ProviderKind::Trtc => &[
                ("access_key", raw.access_key.is_some()),
                ("access_key_file", raw.access_key_file.is_some()),
                ("api_version", raw.api_version.is_some()),
                ("callback_url", raw.callback_url.is_some()),
            ],
            ProviderKind::Acs => &[
                ("sdk_app_id", raw.sdk_app_id.is_some()),
                ("region", raw.region.is_some()),
                ("secret_id", raw.secret_id.is_some()),
                ("secret_key", raw.secret_key.is_some()),
                ("secret_key_file", raw.secret_key_file.is_some()),
            ],
        };
        if let Some((key, _)) = foreign.iter().find(|(_, present)| *present) {
            return Err(err(key, format!("{key} does not apply to kind {}", raw.kind.as_str())));
        }
        let max_requests_per_second = raw.max_requests_per_second.unwrap_or(DEFAULT_REQUESTS_PER_SECOND);
        if max_requests_per_second == 0 || max_requests_per_second > PROVIDER_QUOTA_PER_SECOND {
            return Err(err(
                "max_requests_per_second",
                format!(
                    "max_requests_per_second must be 1 to {PROVIDER_QUOTA_PER_SECOND} (the provider's quota), not {max_requests_per_second}"
                ),
            ));
        }
        if max_requests_per_second == PROVIDER_QUOTA_PER_SECOND {
            warnings.push(format!(
                "provider {name:?}: max_requests_per_second {max_requests_per_second} equals the provider's quota; \
                 network jitter can then put {} requests in one second (the default 19 leaves a margin)",
                max_requests_per_second + 1
            ));
        }
        let mut retry = RetryPolicy::default();
        if let Some(r) = &raw.retry {
            let retry_err = |key: &str, reason: String| {
                self.error(&["providers", name, "retry", key], format!("provider {name:?}: retry: {reason}"))
            };
            if let Some(n) = r.max_attempts {
                if !(1..=100).contains(&n) {
                    return Err(retry_err("max_attempts", format!("max_attempts must be 1 to 100, not {n}")));
                }
                retry.max_attempts = n;
            }
            if let Some(s) = &r.initial_backoff {
                retry.initial_backoff = parse_duration(s).map_err(|e| retry_err("initial_backoff", e))?;
            }
            if let Some(s) = &r.max_backoff {
                retry.max_backoff = parse_duration(s).map_err(|e| retry_err("max_backoff", e))?;
            }
            if retry.max_backoff < retry.initial_backoff {
                return Err(retry_err("max_backoff", "max_backoff is shorter than initial_backoff".into()));
            }
        }
        let request_timeout = match &raw.request_timeout {
            Some(s) => parse_duration(s).map_err(|e| err("request_timeout", e))?,
            None => DEFAULT_REQUEST_TIMEOUT,
        };
        let settings = match raw.kind {
            ProviderKind::Trtc => ProviderSettings::Trtc(self.trtc(name, raw, warnings)?),
            ProviderKind::Acs => ProviderSettings::Acs(self.acs(name, raw, warnings)?),
        };
        Ok(ProviderConfig {
            name: name.to_string(),
            max_requests_per_second,
            retry,
            request_timeout,
            settings,
        })
    }

    /// A provider's secret given inline (`key`) or in a file (`key_file`), exactly one.
    fn secret(
        &self,
        name: &str,
        inline: (&str, Option<&RawSecret>),
        file: (&str, Option<&String>),
        what: &str,
    ) -> Result<Secret, ConfigError> {
        self.secret_pair(&["providers", name], "kind", inline, file, what).map_err(|mut e| {
            e.reason = format!("provider {name:?}: {}", e.reason);
            e
        })
    }

    /// A secret under `section`, given inline (`key`) or in a file (`key_file`),
    /// exactly one. When both are missing the error points at `anchor`.
    fn secret_pair(
        &self,
        section: &[&str],
        anchor: &str,
        (key, inline): (&str, Option<&RawSecret>),
        (file_key, file): (&str, Option<&String>),
        what: &str,
    ) -> Result<Secret, ConfigError> {
        let err = |k: &str, reason: String| {
            let mut path = section.to_vec();
            path.push(k);
            self.error(&path, reason)
        };
        match (inline, file) {
            (Some(_), Some(_)) => Err(err(key, format!("give {key} or {file_key}, not both"))),
            (None, None) => Err(err(anchor, format!("{key} or {file_key} is required ({what})"))),
            (Some(value), None) => resolve_secret(&value.0).map_err(|r| err(key, r)),
            (None, Some(path)) => {
                let base = self.path.parent().unwrap_or(Path::new("."));
                read_secret_file(base, path).map_err(|r| err(file_key, r))
            }
        }
    }

    fn endpoint(&self, name: &str, endpoint: &str) -> Result<(), ConfigError> {
        match reqwest::Url::parse(endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
            _ => Err(self.error(
                &["providers", name, "endpoint"],
                format!("provider {name:?}: endpoint {endpoint:?} is not an http(s) URL"),
            )),
        }
    }

    fn trtc(
        &self,
        name: &str,
        t: RawProvider,
        warnings: &mut Vec<String>,
    ) -> Result<TrtcSettings, ConfigError> {
        let err = |key: &str, reason: String| {
            self.error(&["providers", name, key], format!("provider {name:?}: {reason}"))
        };
        let required = |key: &str, what: &str| err("kind", format!("{key} is required ({what})"));
        let sdk_app_id = t.sdk_app_id.ok_or_else(|| required("sdk_app_id", "the application's SDKAppID"))?;
        let region = t.region.clone().ok_or_else(|| required("region", "e.g. ap-guangzhou"))?;
        let secret_id = t.secret_id.clone().ok_or_else(|| required("secret_id", "the API key's SecretId"))?;
        let secret_key = self.secret(
            name,
            ("secret_key", t.secret_key.as_ref()),
            ("secret_key_file", t.secret_key_file.as_ref()),
            "the TRTC API key's SecretKey",
        )?;
        let secret_id = expand_env(&secret_id)
            .map_err(|var| err("secret_id", format!("secret_id refers to ${{{var}}}, which is not set")))?;
        if secret_id.trim().is_empty() {
            return Err(err("secret_id", "secret_id is empty".into()));
        }
        if sdk_app_id == 0 {
            return Err(err("sdk_app_id", "sdk_app_id must be the application's SDKAppID".into()));
        }
        if !TRTC_REGIONS.contains(&region.as_str()) {
            warnings.push(format!(
                "provider {name:?}: region {:?} is not one the TRTC room APIs are documented to serve ({})",
                region,
                TRTC_REGIONS.join(", ")
            ));
        }
        let endpoint = t.endpoint.unwrap_or_else(|| DEFAULT_TRTC_ENDPOINT.to_string());
        self.endpoint(name, &endpoint)?;
        Ok(TrtcSettings { sdk_app_id, region, secret_id, secret_key, endpoint })
    }

    fn acs(
        &self,
        name: &str,
        a: RawProvider,
        warnings: &mut Vec<String>,
    ) -> Result<AcsSettings, ConfigError> {
        let err = |key: &str, reason: String| {
            self.error(&["providers", name, key], format!("provider {name:?}: {reason}"))
        };
        let endpoint = a.endpoint.clone().ok_or_else(|| {
            err("kind", "endpoint is required (https://<resource>.communication.azure.com)".into())
        })?;
        self.endpoint(name, &endpoint)?;
        let access_key = self.secret(
            name,
            ("access_key", a.access_key.as_ref()),
            ("access_key_file", a.access_key_file.as_ref()),
            "the resource's access key, base64 as the Azure portal shows it",
        )?;
        if base64::engine::general_purpose::STANDARD.decode(access_key.expose().trim()).is_err() {
            let key = if a.access_key.is_some() { "access_key" } else { "access_key_file" };
            return Err(err(
                key,
                "the access key is not base64 (copy it as the Azure portal shows it)".into(),
            ));
        }
        let api_version = a.api_version.clone().unwrap_or_else(|| DEFAULT_ACS_API_VERSION.to_string());
        let valid_version =
            api_version.len() == 10 && chrono::NaiveDate::parse_from_str(&api_version, "%Y-%m-%d").is_ok();
        if !valid_version {
            return Err(err(
                "api_version",
                format!("api_version {api_version:?} is not a date like 2024-09-15"),
            ));
        }
        let callback_url = match &a.callback_url {
            None => None,
            Some(url) => match reqwest::Url::parse(url) {
                Ok(u) if u.scheme() == "https" => Some(url.clone()),
                Ok(u) if u.scheme() == "http" => {
                    // On loopback (a sandbox, a local proxy) plain http is expected.
                    let loopback = matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
                    if !loopback {
                        warnings.push(format!(
                        "provider {name:?}: callback_url {url:?} is plain http; ACS delivers callbacks only over https"
                    ));
                    }
                    Some(url.clone())
                }
                _ => return Err(err("callback_url", format!("callback_url {url:?} is not an http(s) URL"))),
            },
        };
        Ok(AcsSettings { endpoint, access_key, api_version, callback_url })
    }
}

/// Replaces every `${NAME}` with the environment variable's value; the error
/// is the name of the first one that is unset.
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => return Err(name.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn resolve_secret(value: &str) -> Result<Secret, String> {
    let v = expand_env(value).map_err(|var| format!("secret refers to ${{{var}}}, which is not set"))?;
    if v.trim().is_empty() {
        return Err("secret is empty".into());
    }
    Ok(Secret::new(v.trim()))
}

fn read_secret_file(base: &Path, file: &str) -> Result<Secret, String> {
    let name = expand_env(file).map_err(|var| format!("path refers to ${{{var}}}, which is not set"))?;
    let path = base.join(name);
    let content = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    if content.trim().is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(Secret::new(content.trim()))
}

/// Keys whose values are secrets, inline (the `*_file` keys hold paths).
const SECRET_KEYS: [&str; 6] =
    ["secret_key", "access_key", "api_token", "callback_key", "secret", "checkpoint_key"];
/// Shorter values are left alone: masking `1` or `test` would garble
/// messages, and no provider issues keys that short.
const MIN_MASKED_LEN: usize = 6;

/// Replaces every value written at a secret key in `text` with `****` in
/// `message`. Parsing alone cannot keep secrets out of messages: a secret
/// line indented one level off makes serde_yaml quote its value in a type
/// error, and a stray `|` or an unclosed quote folds the line into another
/// key's value, which a check or warning then repeats. So the text itself is
/// searched for secret keys, block or flow style, in any position, and what
/// follows them is masked, raw and as `{:?}` escapes it.
fn mask_secrets(text: &str, mut message: String) -> String {
    let lines = yaml_lines(text);
    let mut values: Vec<String> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        for key in SECRET_KEYS {
            let pattern = format!("{key}:");
            for (at, _) in line.match_indices(&pattern) {
                let starts_key = line[..at].chars().next_back().is_none_or(|c| " \t{,-?\"'".contains(c));
                if !starts_key {
                    continue;
                }
                let rest = line[at + pattern.len()..].trim();
                let entry = rest.split([',', '}']).next().unwrap_or(rest).trim();
                values.push(rest.to_string());
                // An unbalanced quote is where a folded value starts or ends.
                values.push(rest.trim_matches(['\'', '"']).to_string());
                // The value as YAML reads it (quotes, tags and flow
                // collections undone), as a type error would quote it.
                for candidate in [rest, entry] {
                    if let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(candidate) {
                        scalars(&value, &mut values);
                    }
                }
                // A block scalar (`|`, `>-`, ...): the secret is on the
                // following, deeper-indented lines.
                if rest.starts_with(['|', '>']) {
                    let indent = line.len() - line.trim_start().len();
                    let body: Vec<&str> = lines[i + 1..]
                        .iter()
                        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                        .map(|l| l.trim())
                        .collect();
                    values.extend(body.iter().map(|l| l.to_string()));
                }
            }
        }
    }
    // `${NAME}` names a variable; the error that it is unset must say which.
    let reference = |v: &str| v.starts_with("${") && v.ends_with('}') && v.matches("${").count() == 1;
    values.retain(|v| v.len() >= MIN_MASKED_LEN && !reference(v));
    // Longest first, so a value containing another is masked whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for value in values {
        let escaped = format!("{value:?}");
        let escaped = &escaped[1..escaped.len() - 1];
        message = message.replace(&value, "****").replace(escaped, "****");
    }
    message
}

/// Every scalar in a YAML value, as text.
fn scalars(value: &serde_yaml::Value, out: &mut Vec<String>) {
    match value {
        serde_yaml::Value::String(s) => out.push(s.clone()),
        serde_yaml::Value::Number(n) => out.push(n.to_string()),
        serde_yaml::Value::Sequence(items) => items.iter().for_each(|v| scalars(v, out)),
        serde_yaml::Value::Mapping(map) => map.iter().for_each(|(k, v)| {
            scalars(k, out);
            scalars(v, out);
        }),
        serde_yaml::Value::Tagged(tagged) => scalars(&tagged.value, out),
        serde_yaml::Value::Null | serde_yaml::Value::Bool(_) => {}
    }
}

/// A serde_yaml error as a [`ConfigError`]. serde_yaml reports an unknown key
/// inside a tagged section (a provider) at the section's first line; the key
/// itself is found by name from there, so the operator sees the exact line.
fn syntax_error(path: &Path, text: &str, e: &serde_yaml::Error) -> ConfigError {
    let mut line = e.location().map(|l| l.line());
    let mut reason = e.to_string();
    if let Some(l) = e.location() {
        let suffix = format!(" at line {} column {}", l.line(), l.column());
        if let Some(stripped) = reason.strip_suffix(&suffix) {
            reason = stripped.to_string();
        }
    }
    let unknown = reason
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(key, _)| key.to_string());
    if let (Some(key), Some(from)) = (unknown, line) {
        let found = yaml_lines(text)
            .into_iter()
            .enumerate()
            .skip(from.saturating_sub(1))
            .find(|(_, l)| l.trim_start().starts_with(&format!("{key}:")));
        if let Some((i, _)) = found {
            line = Some(i + 1);
        }
    }
    ConfigError { file: path.to_path_buf(), line, reason }
}

/// The lines of `text` as YAML counts them, which is what serde_yaml's
/// positions refer to: CR LF, LF and a lone CR each end a line, and so do
/// NEL, LS and PS. (`str::lines` splits at LF only, so in a file with old
/// Mac line ends every key looked up by line was lost.)
fn yaml_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}') {
            lines.push(&text[start..i]);
            start = i + c.len_utf8();
            if c == '\r' && chars.next_if(|&(_, next)| next == '\n').is_some() {
                start += 1;
            }
        }
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// Finds the 1-based line of a key path (`["policies", "x", "provider"]`) in
/// block-style YAML, falling back to the deepest ancestor found. serde_yaml
/// reports positions only for syntax and type errors; cross-field checks use
/// this to point at the offending line all the same.
pub fn locate(text: &str, key_path: &[&str]) -> Option<usize> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut best: Option<(usize, usize)> = None; // (depth matched, line)
    for (i, line) in yaml_lines(text).into_iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        let key = key.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
        while stack.last().is_some_and(|(ind, _)| *ind >= indent) {
            stack.pop();
        }
        stack.push((indent, key));
        let depth = stack.len();
        if depth <= key_path.len()
            && stack.iter().zip(key_path).all(|((_, k), want)| k == want)
            && best.is_none_or(|(d, _)| depth > d)
        {
            best = Some((depth, i + 1));
            if depth == key_path.len() {
                break;
            }
        }
    }
    best.map(|(_, line)| line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
database: cw.db
providers:
  trtc:
    kind: tencent-trtc
    sdk_app_id: 1400000001
    region: ap-guangzhou
    secret_id: AKIDtest
    secret_key: not-a-real-key
policies:
  consultation:
    provider: trtc
    max_duration: 30m
    action: dismiss_room
";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/cw/test.yaml"), text)
    }

    #[test]
    fn a_good_file_loads_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.database, PathBuf::from("/etc/cw/cw.db"));
        let p = &c.providers["trtc"];
        assert_eq!(p.max_requests_per_second, 19);
        assert_eq!(p.retry, RetryPolicy::default());
        let ProviderSettings::Trtc(t) = &p.settings else { panic!("a TRTC provider") };
        assert_eq!(t.endpoint, DEFAULT_TRTC_ENDPOINT);
        assert_eq!(format!("{:?}", t.secret_key), "Secret(****)");
        assert_eq!(c.policies["consultation"].max_duration, Duration::from_secs(1800));
    }

    fn refused(text: &str) -> ConfigError {
        parse(text).expect_err("config should be refused")
    }

    #[test]
    fn errors_point_at_the_offending_line() {
        let e = refused(&GOOD.replace("provider: trtc", "provider: nope"));
        assert_eq!(e.line, Some(11), "{e}");
        assert!(e.to_string().contains("unknown provider \"nope\""), "{e}");
        let e = refused(&GOOD.replace("30m", "0s"));
        assert_eq!(e.line, Some(12), "{e}");
        let e = refused(&GOOD.replace("30m", "400d"));
        assert!(e.reason.contains("longer than"), "{e}");
        let e = refused(&GOOD.replace("action: dismiss_room", "action: explode"));
        assert_eq!(e.line, Some(13), "{e}");
        let e = refused(&GOOD.replace("    region:", "    colour: red\n    region:"));
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.reason.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn quota_above_the_providers_is_refused() {
        let e = refused(
            &GOOD.replace("region: ap-guangzhou", "region: ap-guangzhou\n    max_requests_per_second: 21"),
        );
        assert!(e.reason.contains("1 to 20"), "{e}");
        assert_eq!(e.line, Some(7));
    }

    #[test]
    fn missing_secrets_are_refused_without_echoing_values() {
        let e = refused(&GOOD.replace("    secret_key: not-a-real-key\n", ""));
        assert!(e.reason.contains("secret_key or secret_key_file is required"), "{e}");
        let e = refused(&GOOD.replace("not-a-real-key", "\"${CALLWARDEN_TEST_SURELY_UNSET}\""));
        assert!(e.reason.contains("CALLWARDEN_TEST_SURELY_UNSET"), "{e}");
        let e = refused(&GOOD.replace("secret_key: not-a-real-key", "secret_key_file: /nonexistent/key"));
        assert!(e.reason.contains("cannot read secret file"), "{e}");
        let e = refused(&GOOD.replace("ap-guangzhou", "[1, 2]"));
        assert!(!e.to_string().contains("not-a-real-key"), "{e}");
        let e = refused(&GOOD.replace("not-a-real-key", "12345.678"));
        assert!(!e.to_string().contains("12345"), "{e}");
        let e = refused(&GOOD.replace("not-a-real-key", "[s3cr3t]"));
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        let c = parse(&GOOD.replace("not-a-real-key", "1234567")).unwrap();
        let ProviderSettings::Trtc(t) = &c.providers["trtc"].settings else { panic!("a TRTC provider") };
        assert_eq!(t.secret_key.expose(), "1234567");
    }

    #[test]
    fn a_misplaced_or_swallowed_secret_is_masked() {
        // One level too shallow: serde_yaml would quote it in a type error.
        let e = refused(&GOOD.replace("    secret_key: not-a-real-key", "  secret_key: not-a-real-key"));
        assert!(e.reason.contains("invalid type"), "{e}");
        assert!(!e.to_string().contains("not-a-real-key"), "{e}");
        // A stray `|` turns the section into one string, secret included.
        let e = refused(&GOOD.replace("providers:", "providers: |"));
        assert!(e.reason.contains("****"), "{e}");
        assert!(!e.to_string().contains("not-a-real-key"), "{e}");
        // An unclosed quote folds the next line into another key's value,
        // which the check then repeats.
        let e = refused(&format!("{GOOD}listen: '127.0.0.1:8720\n  api_token: a-long-enough-api-token'\n"));
        assert!(e.reason.contains("listen \"127.0.0.1:8720 api_token: ****\""), "{e}");
        // Ordinary values are still quoted.
        let e = refused(&GOOD.replace("1400000001", "\"my-app\""));
        assert!(e.reason.contains("\"my-app\""), "{e}");
    }

    #[test]
    fn unknown_regions_warn_but_load() {
        let c = parse(&GOOD.replace("ap-guangzhou", "eu-frankfurt")).unwrap();
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn lines_are_counted_as_yaml_counts_them() {
        assert_eq!(yaml_lines("a\nb\r\nc\rd\u{2028}e\n"), ["a", "b", "c", "d", "e"]);
        assert_eq!(yaml_lines("a\n\nb"), ["a", "", "b"]);
        // Old Mac line ends: every check still finds its line.
        let e = refused(&GOOD.replace("provider: trtc", "provider: nope").replace('\n', "\r"));
        assert_eq!(e.line, Some(11), "{e}");
        let e = refused(&GOOD.replace("    region:", "    colour: red\n    region:").replace('\n', "\r"));
        assert_eq!(e.line, Some(6), "{e}");
    }

    #[test]
    fn locate_walks_block_yaml() {
        assert_eq!(locate(GOOD, &["policies", "consultation", "action"]), Some(13));
        assert_eq!(locate(GOOD, &["providers", "trtc", "nothing"]), Some(3));
        assert_eq!(locate(GOOD, &["elsewhere"]), None);
    }

    #[test]
    fn policy_files_load_in_sorted_order_and_a_name_defined_twice_names_both_places() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("policies.d");
        std::fs::create_dir(&d).unwrap();
        let policy = |name: &str, room: &str| {
            format!(
                "policies:\n  {name}:\n    provider: trtc\n    match: {{ room: '{room}' }}\n    max_duration: 5m\n    action: dismiss_room\n"
            )
        };
        std::fs::write(d.join("20-b.yaml"), policy("second", "b-*")).unwrap();
        std::fs::write(d.join("10-a.yaml"), policy("first", "a-*")).unwrap();
        std::fs::write(d.join("notes.txt"), "not a policy file").unwrap();
        let main = dir.path().join("callwarden.yaml");
        let text = GOOD.to_string() + "policy_files: [policies.d/*.yaml]\n";
        std::fs::write(&main, &text).unwrap();
        let c = Config::load(&main).unwrap();
        let names: Vec<&str> = c.policies.keys().map(String::as_str).collect();
        assert_eq!(names, ["consultation", "first", "second"], "main file first, then files in sorted order");
        assert_eq!(c.sources, [main.clone(), d.join("10-a.yaml"), d.join("20-b.yaml")]);
        assert_eq!(c.policies["second"].source, d.join("20-b.yaml"));

        std::fs::write(d.join("30-c.yaml"), "# a comment\n".to_string() + &policy("first", "x")).unwrap();
        let e = Config::load(&main).unwrap_err();
        assert_eq!((e.file.clone(), e.line), (d.join("30-c.yaml"), Some(3)));
        let first = format!("{}:2", d.join("10-a.yaml").display());
        assert!(e.reason.contains("defined twice") && e.reason.contains(&first), "{e}");

        // An error inside a policy file points into that file.
        std::fs::write(d.join("30-c.yaml"), "policies:\n  third:\n    provider: nope\n").unwrap();
        let e = Config::load(&main).unwrap_err();
        assert_eq!(e.file, d.join("30-c.yaml"));
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn notifications_keep_their_secret_out_of_debug_output() {
        let text = GOOD.to_string()
            + "notifications: { url: 'https://app.example.com/hook', secret: hush-hush-value }\n";
        let c = parse(&text).unwrap();
        let n = c.notifications.as_ref().unwrap();
        assert_eq!(n.secret.expose(), "hush-hush-value");
        assert!(!format!("{c:?}").contains("hush-hush"));
        assert_eq!(c.time_zone, chrono_tz::Tz::UTC);
    }
}
