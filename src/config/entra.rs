//! `entra:` of an ACS provider: Microsoft Entra ID instead of an access key,
//! with an app registration's client secret or the host's managed identity.

use super::file_ctx::FileCtx;
use super::raw::RawEntra;
use super::{ConfigError, DEFAULT_ENTRA_AUTHORITY_HOST, DEFAULT_IMDS_ENDPOINT, EntraFlow, EntraSettings};

impl FileCtx<'_> {
    pub(super) fn entra(&self, name: &str, e: &RawEntra) -> Result<EntraSettings, ConfigError> {
        let err = |key: &str, reason: String| {
            self.error(&["providers", name, "entra", key], format!("provider {name:?}: entra: {reason}"))
        };
        let id = |key: &str, v: &Option<String>| -> Result<Option<String>, ConfigError> {
            match v.as_deref().map(str::trim) {
                None => Ok(None),
                Some(s)
                    if s.is_empty()
                        || s.len() > 256
                        || s.chars().any(|c| c.is_whitespace() || c.is_control()) =>
                {
                    Err(err(key, format!("{key} must be an id (a GUID or a domain name)")))
                }
                Some(s) => Ok(Some(s.to_string())),
            }
        };
        let tenant_id = id("tenant_id", &e.tenant_id)?;
        let client_id = id("client_id", &e.client_id)?;
        let has_secret = e.client_secret.is_some() || e.client_secret_file.is_some();
        let flow = match (e.managed_identity.unwrap_or(false), has_secret) {
            (true, true) => {
                return Err(err(
                    "managed_identity",
                    "give client_secret/client_secret_file or managed_identity: true, not both".into(),
                ));
            }
            (true, false) => EntraFlow::ManagedIdentity { client_id },
            (false, false) => {
                return Err(err(
                    "client_secret",
                    "client_secret or client_secret_file is required (client credentials), or managed_identity: true"
                        .into(),
                ));
            }
            (false, true) => {
                let client_secret = self.secret_pair(
                    &["providers", name, "entra"],
                    "client_secret",
                    ("client_secret", e.client_secret.as_ref()),
                    ("client_secret_file", e.client_secret_file.as_ref()),
                    "the app registration's client secret",
                )?;
                EntraFlow::ClientSecret {
                    tenant_id: tenant_id.ok_or_else(|| err("tenant_id", "tenant_id is required".into()))?,
                    client_id: client_id.ok_or_else(|| err("client_id", "client_id is required".into()))?,
                    client_secret,
                }
            }
        };
        let service = |key: &str, url: Option<&str>, default: &str| -> Result<String, ConfigError> {
            let Some(url) = url else { return Ok(default.to_string()) };
            let what = format!("provider {name:?}: entra: {key}");
            // Azure's instance metadata service is plain http on a link-local address.
            self.secure_url(&["providers", name, "entra", key], &what, url, &["169.254.169.254"])?;
            Ok(url.trim_end_matches('/').to_string())
        };
        let authority_host =
            service("authority_host", e.authority_host.as_deref(), DEFAULT_ENTRA_AUTHORITY_HOST)?;
        let imds_endpoint = service("imds_endpoint", e.imds_endpoint.as_deref(), DEFAULT_IMDS_ENDPOINT)?;
        Ok(EntraSettings { flow, authority_host, imds_endpoint })
    }
}
