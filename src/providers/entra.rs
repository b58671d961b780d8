//! Microsoft Entra ID tokens for ACS, for tenants that disable access keys:
//! the client-credentials flow of an app registration, or the host's
//! managed identity through the instance metadata service (IMDS).
//!
//! This file owns the token cache: a token is fetched when first needed,
//! kept, and renewed before it expires (five minutes before, or halfway
//! through a shorter life), one fetch at a time. Tokens and the client
//! secret are [`Secret`]s: they never reach a log, an error or the audit
//! log. A token endpoint that cannot be reached, or answers 5xx or 429, is
//! a retryable error; one that refuses the client (a wrong secret, an
//! unknown client or tenant) is fatal, with the endpoint's own reason.

use std::time::{Duration, Instant as StdInstant};

use serde::Deserialize;

use crate::config::{EntraFlow, EntraSettings};
use crate::domain::secret::Secret;

/// What the token is for: ACS's data plane.
pub const ACS_SCOPE: &str = "https://communication.azure.com//.default";
/// The same as an IMDS `resource`.
const ACS_RESOURCE: &str = "https://communication.azure.com/";
/// A token is renewed this long before it expires (or halfway through a
/// shorter life).
const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// Each token request's timeout.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The endpoint could not be reached or failed: try again later.
    Unavailable(String),
    /// The endpoint refused the client: a configuration error.
    Refused(String),
}

/// Fetches and caches Entra tokens for one provider.
#[derive(Debug)]
pub struct EntraTokens {
    http: reqwest::Client,
    settings: EntraSettings,
    cached: tokio::sync::Mutex<Option<(Secret, StdInstant)>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    /// Seconds; IMDS sends it as a string.
    expires_in: serde_json::Value,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: Option<String>,
    error_description: Option<String>,
}

impl EntraTokens {
    pub fn new(http: reqwest::Client, settings: &EntraSettings) -> EntraTokens {
        EntraTokens { http, settings: settings.clone(), cached: tokio::sync::Mutex::new(None) }
    }

    /// A token valid for a while yet: the cached one, or a new one.
    pub async fn token(&self) -> Result<Secret, TokenError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, renew_at)) = cached.as_ref()
            && StdInstant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = self.fetch().await?;
        let renew_in = lifetime.saturating_sub(RENEW_BEFORE).max(lifetime / 2);
        *cached = Some((token.clone(), StdInstant::now() + renew_in));
        tracing::debug!(lifetime_s = lifetime.as_secs(), "fetched a Microsoft Entra token for ACS");
        Ok(token)
    }

    /// Forgets the cached token (ACS answered 401 to it).
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }

    async fn fetch(&self) -> Result<(Secret, Duration), TokenError> {
        let request = match &self.settings.flow {
            EntraFlow::ClientSecret { tenant_id, client_id, client_secret } => {
                let url = format!("{}/{tenant_id}/oauth2/v2.0/token", self.settings.authority_host);
                self.http.post(url).form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("client_secret", client_secret.expose()),
                    ("scope", ACS_SCOPE),
                ])
            }
            EntraFlow::ManagedIdentity { client_id } => {
                let url = format!("{}/metadata/identity/oauth2/token", self.settings.imds_endpoint);
                let mut query = vec![("api-version", "2018-02-01"), ("resource", ACS_RESOURCE)];
                if let Some(id) = client_id {
                    query.push(("client_id", id.as_str()));
                }
                self.http.get(url).query(&query).header("Metadata", "true")
            }
        };
        let response = request.timeout(TOKEN_TIMEOUT).send().await.map_err(|e| {
            TokenError::Unavailable(format!("the token endpoint cannot be reached: {}", e.without_url()))
        })?;
        let status = response.status();
        let body = crate::http_client::read_capped(response).await.map_err(|e| {
            TokenError::Unavailable(format!("the token endpoint's answer broke off: {}", e.without_url()))
        })?;
        if status.is_success() {
            let answer: TokenAnswer = serde_json::from_slice(&body)
                .map_err(|_| TokenError::Unavailable("the token endpoint's answer is not a token".into()))?;
            let seconds = match &answer.expires_in {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            };
            let lifetime = Duration::from_secs(seconds.unwrap_or(0).min(24 * 3600));
            if answer.access_token.is_empty() || lifetime.is_zero() {
                return Err(TokenError::Unavailable(
                    "the token endpoint answered an empty or expired token".into(),
                ));
            }
            return Ok((Secret::new(answer.access_token), lifetime));
        }
        let reason = serde_json::from_slice::<ErrorAnswer>(&body)
            .ok()
            .map(|e| {
                let first_line =
                    |s: String| s.lines().next().unwrap_or_default().chars().take(300).collect::<String>();
                format!(
                    "{}: {}",
                    e.error.unwrap_or_else(|| "error".into()),
                    e.error_description.map(first_line).unwrap_or_default()
                )
            })
            .unwrap_or_else(|| format!("HTTP {status}"));
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            Err(TokenError::Unavailable(format!("the token endpoint answered HTTP {status} ({reason})")))
        } else {
            Err(TokenError::Refused(format!(
                "Microsoft Entra ID refused the client (HTTP {status}: {reason}); check entra's tenant_id, client_id \
                 and client secret, or the managed identity's role on the resource"
            )))
        }
    }
}
