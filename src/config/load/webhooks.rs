//! `webhooks:`: how provider callbacks are authenticated (ACS's token and
//! signed JWTs, TRTC's callback key), where ACS callbacks are relayed, and
//! the checks that tie them to the providers and the listener.

use std::net::SocketAddr;
use std::time::Duration;

use indexmap::IndexMap;

use crate::config::file_ctx::FileCtx;
use crate::config::raw::{RawAcsWebhook, RawWebhooks};
use crate::config::secrets::expand_env;
use crate::config::{
    AcsWebhook, ConfigError, DEFAULT_ACS_OPENID_CONFIGURATION_URL, DEFAULT_RECONNECT_GRACE,
    MAX_RECONNECT_GRACE, ProviderConfig, ProviderSettings,
};
use crate::domain::parse_duration;
use crate::domain::secret::Secret;

/// The `webhooks` section, checked.
pub(in crate::config) struct Webhooks {
    pub(in crate::config) acs_webhook: Option<AcsWebhook>,
    pub(in crate::config) trtc_callback_key: Option<Secret>,
    pub(in crate::config) trtc_reconnect_grace: Duration,
}

impl FileCtx<'_> {
    /// `webhooks`: ACS, then TRTC.
    pub(in crate::config) fn webhooks(
        &self,
        raw: &RawWebhooks,
        listen: Option<SocketAddr>,
        warnings: &mut Vec<String>,
    ) -> Result<Webhooks, ConfigError> {
        let acs_webhook = raw.acs.as_ref().map(|w| self.acs_webhook(w)).transpose()?;
        if acs_webhook.is_some() && listen.is_none() {
            warnings.push("webhooks.acs is set but listen is not: nothing will receive ACS callbacks".into());
        }
        let mut trtc_callback_key = None;
        let mut trtc_reconnect_grace = DEFAULT_RECONNECT_GRACE;
        if let Some(w) = &raw.trtc {
            let key = self.secret_pair(
                &["webhooks", "trtc"],
                "",
                ("callback_key", w.callback_key.as_ref()),
                ("callback_key_file", w.callback_key_file.as_ref()),
                "the callback key set in the TRTC console",
            )?;
            trtc_callback_key = Some(self.shared_secret(
                &["webhooks", "trtc", "callback_key"],
                "webhooks.trtc.callback_key",
                key,
            )?);
            if let Some(text) = &w.reconnect_grace {
                let at = ["webhooks", "trtc", "reconnect_grace"];
                let grace = parse_duration(text)
                    .map_err(|e| self.error(&at, format!("webhooks.trtc.reconnect_grace: {e}")))?;
                if grace > MAX_RECONNECT_GRACE {
                    return Err(self.error(&at, "webhooks.trtc.reconnect_grace must be at most 15m".into()));
                }
                trtc_reconnect_grace = grace;
            }
            if listen.is_none() {
                warnings.push(
                    "webhooks.trtc is set but listen is not: nothing will receive TRTC callbacks".into(),
                );
            }
        }
        Ok(Webhooks { acs_webhook, trtc_callback_key, trtc_reconnect_grace })
    }

    fn acs_webhook(&self, w: &RawAcsWebhook) -> Result<AcsWebhook, ConfigError> {
        let at = |key: &'static str| ["webhooks", "acs", key];
        let secret = match (&w.secret, &w.secret_file) {
            (None, None) => None,
            (inline, file) => Some(self.secret_pair(
                &["webhooks", "acs"],
                "",
                ("secret", inline.as_ref()),
                ("secret_file", file.as_ref()),
                "the token ACS callbacks carry as ?token=",
            )?)
            .map(|t| self.shared_secret(&at("secret"), "webhooks.acs.secret", t))
            .transpose()?,
        };
        // Like notifications.url, these may name environment variables.
        let expand = |key: &'static str, v: &Option<String>| -> Result<Option<String>, ConfigError> {
            v.as_deref()
                .map(|text| {
                    expand_env(text).map_err(|var| {
                        self.error(
                            &at(key),
                            format!("webhooks.acs.{key} refers to ${{{var}}}, which is not set"),
                        )
                    })
                })
                .transpose()
        };
        let jwt_audience = expand("jwt_audience", &w.jwt_audience)?;
        let forward_to = expand("forward_to", &w.forward_to)?;
        let jwt_audience = match &jwt_audience {
            Some(a) if a.trim().is_empty() || a.len() > 256 => {
                return Err(self.error(
                    &at("jwt_audience"),
                    "webhooks.acs.jwt_audience must be the ACS resource's immutable resource id".into(),
                ));
            }
            a => a.as_ref().map(|a| a.trim().to_string()),
        };
        if secret.is_none() && jwt_audience.is_none() {
            return Err(self.error(
                &["webhooks", "acs"],
                "webhooks.acs needs jwt_audience (ACS's signed callbacks) or secret/secret_file (the ?token= \
                 check), or both"
                    .into(),
            ));
        }
        let openid_configuration_url = w
            .openid_configuration_url
            .clone()
            .unwrap_or_else(|| DEFAULT_ACS_OPENID_CONFIGURATION_URL.to_string());
        let key = "webhooks.acs.openid_configuration_url";
        self.secure_url(&at("openid_configuration_url"), key, &openid_configuration_url, &[])?;
        if let Some(url) = &forward_to {
            self.secure_url(&at("forward_to"), "webhooks.acs.forward_to", url, &[])?;
        }
        let app_identities = w.app_identities.clone().unwrap_or_default();
        if let Some(bad) = app_identities.iter().find(|p| p.trim_end_matches('*').is_empty() || p.len() > 256)
        {
            return Err(self.error(
                &at("app_identities"),
                format!("webhooks.acs.app_identities: {bad:?} is not a raw id or a prefix ending in *"),
            ));
        }
        Ok(AcsWebhook { secret, jwt_audience, openid_configuration_url, forward_to, app_identities })
    }

    /// An ACS provider with `callback_url` needs `webhooks.acs` (its
    /// callbacks must be authenticated) and a listener (the first such
    /// provider is named).
    pub(in crate::config) fn acs_callbacks(
        &self,
        providers: &IndexMap<String, ProviderConfig>,
        acs_webhook: Option<&AcsWebhook>,
        listen: Option<SocketAddr>,
    ) -> Result<(), ConfigError> {
        let confirming = providers
            .values()
            .find(|p| matches!(&p.settings, ProviderSettings::Acs(a) if a.callback_url.is_some()));
        let Some(name) = confirming.map(|p| p.name.as_str()) else { return Ok(()) };
        if acs_webhook.is_none() {
            return Err(self.error(
                &["providers", name, "callback_url"],
                format!(
                    "provider {name:?}: callback_url needs webhooks.acs (jwt_audience or secret), so that callbacks \
                     can be authenticated"
                ),
            ));
        }
        if listen.is_none() {
            return Err(self.error(
                &["providers", name, "callback_url"],
                format!(
                    "provider {name:?}: callback_url needs listen, the address that receives the callbacks"
                ),
            ));
        }
        Ok(())
    }
}
