//! The YAML configuration: parsed once, validated, and turned into typed
//! values. Every refusal names the file, the line and what to fix.
//!
//! This module owns the shape of the file (the public interface in the
//! README) and secret handling: secrets are read from the file, from
//! `${ENV}` references or from `*_file` paths, and live in [`Secret`], which
//! never prints its content. It does no network or database I/O.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;

use crate::budget::Budget;
use crate::domain::secret::Secret;
use crate::domain::{Action, RetryPolicy, RoomKind};

pub mod database;
mod entra;
mod file_ctx;
pub mod live;
mod load;
mod policy;
mod provider;
mod raw;
mod secrets;
#[cfg(test)]
mod tests;
mod trust;
mod yaml;

pub use database::{Database, PostgresUrl};
pub use policy::session_duration;
pub use secrets::expand_env;
use secrets::mask_secrets;
pub use yaml::locate;

/// Where the daemon looks when neither `--config` nor `CALLWARDEN_CONFIG` is given.
pub const DEFAULT_PATH: &str = "/etc/callwarden/callwarden.yaml";
/// A provider's published quota; configuring more is refused.
pub const PROVIDER_QUOTA_PER_SECOND: u32 = 20;
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 19;
/// Longer than any call a time limit is meant for; a typo like `30d` for `30m`.
pub const MAX_SESSION_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest secret shared with a peer (the API token, callback keys and
/// tokens, the notification and checkpoint keys): shorter ones can be guessed.
pub const MIN_SHARED_SECRET_LEN: usize = 16;
/// The `kind:` of a Tencent TRTC provider (also the name metrics and
/// messages use).
pub const TRTC_KIND: &str = "tencent-trtc";
/// The `kind:` of an Azure Communication Services provider.
pub const ACS_KIND: &str = "azure-acs";
pub const DEFAULT_TRTC_ENDPOINT: &str = "https://trtc.tencentcloudapi.com";
/// TRTC regions a `region:` may name.
pub const TRTC_REGIONS: [&str; 3] = ["ap-beijing", "ap-guangzhou", "ap-singapore"];
/// The Call Automation API version sent when `api_version` is not set.
pub const DEFAULT_ACS_API_VERSION: &str = "2024-09-15";
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `grace` a policy may give after its deadline.
pub const MAX_GRACE: Duration = Duration::from_secs(3600);
/// `stale_after` when a policy does not set it: long enough to ride out a
/// restart, a failover or a provider outage within the default retries
/// (90 to 190 s), short enough that a reused room (a doctor's fixed room)
/// has rarely passed to the next booking.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(600);

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
    /// Where the state lives: a SQLite file (relative paths are taken from
    /// the config file's folder, so the daemon and the CLI always agree on
    /// it) or a PostgreSQL URL.
    pub database: Database,
    /// `database_listen`: whether the daemon `LISTEN`s for the database's
    /// change notifications (PostgreSQL; default true). Off behind a
    /// transaction-mode pooler, where a session cannot listen: new work is
    /// then found by the scheduler's 1 s poll.
    pub database_listen: bool,
    pub providers: IndexMap<String, ProviderConfig>,
    /// In file order, which later decides webhook matching.
    pub policies: IndexMap<String, Policy>,
    /// Where the HTTP listener (webhooks, health) binds; none when absent.
    pub listen: Option<std::net::SocketAddr>,
    /// The bearer token the session API requires; the API is off without it.
    pub api_token: Option<Secret>,
    /// `webhooks.acs`: how ACS callbacks are authenticated and relayed.
    pub acs_webhook: Option<AcsWebhook>,
    /// The key TRTC signs its room callbacks with (the console's callback key).
    pub trtc_callback_key: Option<Secret>,
    /// `webhooks.trtc.reconnect_grace`: a participant who re-enters this
    /// soon after a timed-out exit (or re-enters with a reconnect reason),
    /// or a room re-created this soon after it emptied, resumes the session
    /// the exit ended, with its deadline.
    pub trtc_reconnect_grace: Duration,
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

/// ACS's OpenID configuration, which names its callback tokens' issuer and
/// signing keys: the default of `webhooks.acs.openid_configuration_url`.
pub const DEFAULT_ACS_OPENID_CONFIGURATION_URL: &str =
    "https://acscallautomation.communication.azure.com/calling/.well-known/acsopenidconfiguration";

/// The default of `webhooks.trtc.reconnect_grace`.
pub const DEFAULT_RECONNECT_GRACE: Duration = Duration::from_secs(60);
/// The most `webhooks.trtc.reconnect_grace` may be: longer, and a
/// participant who left for good would resume an old session on a later visit.
pub const MAX_RECONNECT_GRACE: Duration = Duration::from_secs(15 * 60);

/// `webhooks.acs`: at least one of `secret` (the `?token=` check) and
/// `jwt_audience` (ACS's signed tokens) is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcsWebhook {
    /// What callbacks must carry as `?token=`.
    pub secret: Option<Secret>,
    /// The ACS resource's immutable id; with it, every callback must carry
    /// a valid `Authorization: Bearer` JWT signed by ACS.
    pub jwt_audience: Option<String>,
    /// Where the issuer and signing keys are published.
    pub openid_configuration_url: String,
    /// The application's callback endpoint, which gets every verified
    /// callback relayed unchanged.
    pub forward_to: Option<String>,
    /// The application's own legs in a call's roster (exact raw ids, or a
    /// prefix ending in `*`): never timed as participants.
    pub app_identities: Vec<String>,
}

impl AcsWebhook {
    /// Whether `raw_id` is one of the application's own legs.
    pub fn is_app_identity(&self, raw_id: &str) -> bool {
        self.app_identities.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => raw_id.starts_with(prefix),
            None => raw_id == p,
        })
    }
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
            ProviderSettings::Trtc(_) => TRTC_KIND,
            ProviderSettings::Acs(_) => ACS_KIND,
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
    /// The application's own callback key; `None`: `webhooks.trtc`'s.
    pub callback_key: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcsSettings {
    /// `https://<resource>.communication.azure.com`, or a sandbox.
    pub endpoint: String,
    /// How requests are authenticated: the access key, or Entra ID.
    pub auth: AcsAuth,
    pub api_version: String,
    /// Where ACS reports outcomes (`operationCallbackUri`); without it,
    /// an accepted request is recorded as enforced without confirmation.
    pub callback_url: Option<String>,
    /// How long an accepted removal waits for its outcome report before it
    /// is settled `enforced` as unconfirmed (an audit row `unconfirmed`).
    pub confirm_within: Duration,
}

/// How an ACS provider authenticates its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcsAuth {
    /// HMAC-SHA256 with the resource's access key (base64, as the portal
    /// shows it; decoded only when signing).
    AccessKey(Secret),
    /// A bearer token from Microsoft Entra ID (tenants that disable access
    /// keys with `disableLocalAuth`).
    Entra(EntraSettings),
}

/// `entra:` of an ACS provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraSettings {
    pub flow: EntraFlow,
    /// The token endpoint's host: `https://login.microsoftonline.com`, a
    /// sovereign cloud's, or a sandbox's.
    pub authority_host: String,
    /// The instance metadata service (managed identities).
    pub imds_endpoint: String,
}

/// How a token is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntraFlow {
    /// An app registration's client credentials.
    ClientSecret { tenant_id: String, client_id: String, client_secret: Secret },
    /// The host's managed identity (a user-assigned one names its client id).
    ManagedIdentity { client_id: Option<String> },
}

/// The default `entra.authority_host`.
pub const DEFAULT_ENTRA_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// The default `entra.imds_endpoint`: Azure's instance metadata service.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";

impl AcsSettings {
    /// `confirm_within` when not set: ACS reports an outcome within seconds;
    /// ten minutes rides out a proxy restart or a burst of retried deliveries.
    pub const DEFAULT_CONFIRM_WITHIN: Duration = Duration::from_secs(600);
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
    /// A session whose deadline passed longer ago than this when it is about
    /// to be enforced is not enforced (`expired`): its room may be someone
    /// else's call by now.
    pub stale_after: Duration,
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

/// The keys TRTC room callbacks are verified with: an application's own
/// (`providers.<name>.callback_key`), else `webhooks.trtc.callback_key`.
/// TRTC sets one callback key per application (SDKAppID) in its console,
/// and the `SdkAppId` header that names the application is not signed: with
/// one key per application, a callback signed for one cannot be passed off
/// as another's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrtcCallbackKeys {
    shared: Option<Secret>,
    by_app: std::collections::BTreeMap<u64, Secret>,
}

impl TrtcCallbackKeys {
    /// The key callbacks of application `sdk_app_id` are signed with.
    pub fn for_app(&self, sdk_app_id: u64) -> Option<&Secret> {
        self.by_app.get(&sdk_app_id).or(self.shared.as_ref())
    }

    /// Whether there is no key at all (the TRTC webhook is off).
    pub fn is_empty(&self) -> bool {
        self.shared.is_none() && self.by_app.is_empty()
    }
}

impl Config {
    /// The TRTC callback keys of this configuration.
    pub fn trtc_callback_keys(&self) -> TrtcCallbackKeys {
        let by_app = self
            .providers
            .values()
            .filter_map(|p| match &p.settings {
                ProviderSettings::Trtc(t) => t.callback_key.clone().map(|key| (t.sdk_app_id, key)),
                ProviderSettings::Acs(_) => None,
            })
            .collect();
        TrtcCallbackKeys { shared: self.trtc_callback_key.clone(), by_app }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if let Some(reason) = trust::untrusted(path) {
            return Err(ConfigError { file: path.to_path_buf(), line: None, reason });
        }
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
        match load::parse_unmasked(path, text) {
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
