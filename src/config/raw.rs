//! The file as written: the serde shapes (`Raw*`) that the loader turns
//! into the typed model, the secret scalar [`RawSecret`] and [`ProviderKind`].

use std::fmt;

use indexmap::IndexMap;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) database: String,
    pub(super) database_password_file: Option<String>,
    pub(super) database_listen: Option<bool>,
    pub(super) listen: Option<String>,
    pub(super) api_token: Option<RawSecret>,
    pub(super) api_token_file: Option<String>,
    #[serde(default)]
    pub(super) webhooks: RawWebhooks,
    pub(super) retention: Option<RawRetention>,
    pub(super) providers: IndexMap<String, RawProvider>,
    #[serde(default)]
    pub(super) policies: IndexMap<String, RawPolicy>,
    pub(super) policy_files: Option<Vec<String>>,
    pub(super) notifications: Option<RawNotifications>,
    pub(super) time_zone: Option<String>,
}

/// A file named by `policy_files`: policies only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicyFile {
    #[serde(default)]
    pub(super) policies: IndexMap<String, RawPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotifications {
    pub(super) url: String,
    pub(super) secret: Option<RawSecret>,
    pub(super) secret_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    pub(super) per: String,
    pub(super) window: String,
    pub(super) limit: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    /// How long settled sessions are kept after they settled.
    pub(super) sessions: Option<String>,
    /// How long audit rows are kept.
    pub(super) audit: Option<String>,
    pub(super) checkpoint_key: Option<RawSecret>,
    pub(super) checkpoint_key_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhooks {
    pub(super) acs: Option<RawAcsWebhook>,
    pub(super) trtc: Option<RawTrtcWebhook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrtcWebhook {
    pub(super) callback_key: Option<RawSecret>,
    pub(super) callback_key_file: Option<String>,
    /// How long after an exit a reconnect resumes the old session.
    pub(super) reconnect_grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcsWebhook {
    pub(super) secret: Option<RawSecret>,
    pub(super) secret_file: Option<String>,
    /// The ACS resource's immutable id: the audience of its signed callbacks.
    pub(super) jwt_audience: Option<String>,
    pub(super) openid_configuration_url: Option<String>,
    /// Where every verified callback is relayed (the application).
    pub(super) forward_to: Option<String>,
    /// Raw ids (or `prefix*`) of the application's own call legs.
    pub(super) app_identities: Option<Vec<String>>,
}

/// A provider section as written. One flat struct for every kind rather
/// than an internally tagged enum: serde buffers tagged enums, which loses
/// the line of a wrong key or type. Which keys fit which kind is checked
/// after parsing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    pub(super) kind: ProviderKind,
    pub(super) sdk_app_id: Option<u64>,
    pub(super) region: Option<String>,
    pub(super) secret_id: Option<String>,
    pub(super) secret_key: Option<RawSecret>,
    pub(super) secret_key_file: Option<String>,
    /// TRTC: this application's own callback key (else `webhooks.trtc`'s).
    pub(super) callback_key: Option<RawSecret>,
    pub(super) callback_key_file: Option<String>,
    pub(super) endpoint: Option<String>,
    pub(super) access_key: Option<RawSecret>,
    pub(super) access_key_file: Option<String>,
    pub(super) entra: Option<RawEntra>,
    pub(super) api_version: Option<String>,
    pub(super) callback_url: Option<String>,
    pub(super) confirm_within: Option<String>,
    pub(super) max_requests_per_second: Option<u32>,
    pub(super) retry: Option<RawRetry>,
    pub(super) request_timeout: Option<String>,
}

/// `entra:` of an ACS provider: Microsoft Entra ID instead of an access key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEntra {
    pub(super) tenant_id: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<RawSecret>,
    pub(super) client_secret_file: Option<String>,
    pub(super) managed_identity: Option<bool>,
    pub(super) authority_host: Option<String>,
    pub(super) imds_endpoint: Option<String>,
}

/// A secret as written. Accepts any scalar (a numeric key is still a key) and,
/// unlike a plain `String`, never repeats the value in a type error.
pub(super) struct RawSecret(pub(super) String);

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

/// The serde names are [`super::TRTC_KIND`] and [`super::ACS_KIND`]
/// (attributes take only literals).
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProviderKind {
    #[serde(rename = "tencent-trtc")]
    Trtc,
    #[serde(rename = "azure-acs")]
    Acs,
}

impl ProviderKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Trtc => super::TRTC_KIND,
            ProviderKind::Acs => super::ACS_KIND,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub(super) max_attempts: Option<u32>,
    pub(super) initial_backoff: Option<String>,
    pub(super) max_backoff: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) provider: String,
    #[serde(rename = "match")]
    pub(super) matcher: Option<RawMatch>,
    pub(super) scope: Option<String>,
    pub(super) max_duration: String,
    pub(super) max_extension: Option<String>,
    pub(super) action: String,
    pub(super) mode: Option<String>,
    pub(super) warn_before: Option<Vec<String>>,
    pub(super) grace: Option<String>,
    pub(super) stale_after: Option<String>,
    pub(super) budget: Option<RawBudget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMatch {
    /// Glob on the room id (numeric rooms in decimal) or ACS call id.
    pub(super) room: Option<String>,
    /// TRTC: only events of this application (the `SdkAppId` header).
    pub(super) sdk_app_id: Option<u64>,
}
