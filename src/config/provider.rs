//! Provider sections: the settings every kind shares, each kind's own,
//! and the secrets they are given.

use base64::Engine as _;

use super::file_ctx::FileCtx;
use super::raw::{ProviderKind, RawProvider, RawSecret};
use super::secrets::{expand_env, read_secret_file, resolve_secret};
use super::{
    AcsAuth, AcsSettings, ConfigError, DEFAULT_ACS_API_VERSION, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_REQUESTS_PER_SECOND, DEFAULT_TRTC_ENDPOINT, PROVIDER_QUOTA_PER_SECOND, ProviderConfig,
    ProviderSettings, TRTC_REGIONS, TrtcSettings,
};
use crate::domain::secret::Secret;
use crate::domain::{RetryPolicy, parse_duration};

impl FileCtx<'_> {
    /// A provider section: the settings every kind shares, then its kind's own.
    pub(super) fn provider(
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
                ("entra", raw.entra.is_some()),
                ("api_version", raw.api_version.is_some()),
                ("callback_url", raw.callback_url.is_some()),
            ],
            ProviderKind::Acs => &[
                ("sdk_app_id", raw.sdk_app_id.is_some()),
                ("region", raw.region.is_some()),
                ("secret_id", raw.secret_id.is_some()),
                ("secret_key", raw.secret_key.is_some()),
                ("secret_key_file", raw.secret_key_file.is_some()),
                ("callback_key", raw.callback_key.is_some()),
                ("callback_key_file", raw.callback_key_file.is_some()),
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
    pub(super) fn secret_pair(
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
            (None, Some(path)) => read_secret_file(self.folder(), path).map_err(|r| err(file_key, r)),
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
        let callback_key = match (&t.callback_key, &t.callback_key_file) {
            (None, None) => None,
            (inline, file) => {
                let key = self.secret(
                    name,
                    ("callback_key", inline.as_ref()),
                    ("callback_key_file", file.as_ref()),
                    "the callback key set in the TRTC console for this application",
                )?;
                Some(self.shared_secret(
                    &["providers", name, "callback_key"],
                    &format!("provider {name:?}: callback_key"),
                    key,
                )?)
            }
        };
        let secret_id = expand_env(&secret_id)
            .map_err(|var| err("secret_id", format!("secret_id refers to ${{{var}}}, which is not set")))?;
        if secret_id.trim().is_empty() {
            return Err(err("secret_id", "secret_id is empty".into()));
        }
        if sdk_app_id == 0 {
            return Err(err("sdk_app_id", "sdk_app_id must be the application's SDKAppID".into()));
        }
        if t.confirm_within.is_some() {
            return Err(err("confirm_within", "confirm_within applies to ACS providers only".into()));
        }
        if !TRTC_REGIONS.contains(&region.as_str()) {
            warnings.push(format!(
                "provider {name:?}: region {:?} is not one the TRTC room APIs are documented to serve ({})",
                region,
                TRTC_REGIONS.join(", ")
            ));
        }
        let endpoint = t.endpoint.unwrap_or_else(|| DEFAULT_TRTC_ENDPOINT.to_string());
        self.secure_url(
            &["providers", name, "endpoint"],
            &format!("provider {name:?}: endpoint"),
            &endpoint,
            &[],
        )?;
        Ok(TrtcSettings { sdk_app_id, region, secret_id, secret_key, endpoint, callback_key })
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
        self.secure_url(
            &["providers", name, "endpoint"],
            &format!("provider {name:?}: endpoint"),
            &endpoint,
            &[],
        )?;
        let has_key = a.access_key.is_some() || a.access_key_file.is_some();
        let auth = match &a.entra {
            Some(_) if has_key => {
                return Err(err("entra", "give access_key/access_key_file or entra, not both".into()));
            }
            Some(entra) => AcsAuth::Entra(self.entra(name, entra)?),
            None => {
                let access_key = self.secret(
                    name,
                    ("access_key", a.access_key.as_ref()),
                    ("access_key_file", a.access_key_file.as_ref()),
                    "the resource's access key, base64 as the Azure portal shows it; or entra (Microsoft Entra ID)",
                )?;
                if base64::engine::general_purpose::STANDARD.decode(access_key.expose().trim()).is_err() {
                    let key = if a.access_key.is_some() { "access_key" } else { "access_key_file" };
                    return Err(err(
                        key,
                        "the access key is not base64 (copy it as the Azure portal shows it)".into(),
                    ));
                }
                AcsAuth::AccessKey(access_key)
            }
        };
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
                    if !crate::http_client::is_loopback(&u) {
                        warnings.push(format!(
                        "provider {name:?}: callback_url {url:?} is plain http; ACS delivers callbacks only over https"
                    ));
                    }
                    Some(url.clone())
                }
                _ => return Err(err("callback_url", format!("callback_url {url:?} is not an http(s) URL"))),
            },
        };
        let confirm_within = match &a.confirm_within {
            None => AcsSettings::DEFAULT_CONFIRM_WITHIN,
            Some(text) => {
                let d = parse_duration(text).map_err(|r| err("confirm_within", r))?;
                if !(std::time::Duration::from_secs(60)..=std::time::Duration::from_secs(24 * 3600))
                    .contains(&d)
                {
                    return Err(err("confirm_within", format!("confirm_within {text:?} must be 1m to 24h")));
                }
                d
            }
        };
        Ok(AcsSettings { endpoint, auth, api_version, callback_url, confirm_within })
    }
}
