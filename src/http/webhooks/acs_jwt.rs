//! ACS's signed callbacks. Every Call Automation callback carries
//! `Authorization: Bearer <JWT>`: RS256, issued by ACS, with the ACS
//! resource's immutable id as its audience, living five minutes. The keys
//! are published at the `jwks_uri` of ACS's OpenID configuration.
//!
//! This file owns that check and the key cache: the configuration and keys
//! are fetched at start and at most hourly after, and again when a token
//! names a key id the cache does not hold, but never more often than once
//! per [`REFETCH_COOLDOWN`], so a flood of forged key ids cannot make the
//! daemon hammer Azure. The signature, algorithm, issuer, audience and
//! lifetime are checked by `jsonwebtoken`; nothing here is hand-written
//! RSA.

use std::collections::HashMap;
use std::time::{Duration, Instant as StdInstant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

pub use crate::providers::acs::ACS_CALLBACK_ISSUER as ACS_ISSUER;
/// Clock difference tolerated on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(60);
/// ACS tokens live five minutes: one that claims to live much longer was
/// not minted for a callback.
pub const MAX_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// The shortest time between two fetches of the keys.
pub const REFETCH_COOLDOWN: Duration = Duration::from_secs(30);
/// Cached keys are refreshed after this long (on the next callback).
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// The most keys kept from one key set; the rest are ignored.
const MAX_KEYS: usize = 32;
/// Each fetch's timeout.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a callback's token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtRefusal {
    /// Missing, malformed, forged, expired or not for us: 401.
    Invalid(String),
    /// No key could be fetched yet, so nothing can be verified: 503, so
    /// that a retry (ACS's, if any) may find the keys.
    KeysUnavailable(String),
}

/// Verifies the bearer tokens of ACS callbacks; cheap to share.
#[derive(Debug)]
pub struct AcsJwtVerifier {
    http: reqwest::Client,
    openid_url: String,
    audience: String,
    cache: tokio::sync::Mutex<KeyCache>,
}

#[derive(Debug, Default)]
struct KeyCache {
    issuer: Option<String>,
    keys: HashMap<String, DecodingKey>,
    fetched: Option<StdInstant>,
    last_attempt: Option<StdInstant>,
}

#[derive(Deserialize)]
struct OpenIdConfiguration {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct Claims {
    exp: u64,
}

impl AcsJwtVerifier {
    pub fn new(http: reqwest::Client, openid_url: &str, audience: &str) -> AcsJwtVerifier {
        AcsJwtVerifier {
            http,
            openid_url: openid_url.to_string(),
            audience: audience.to_string(),
            cache: tokio::sync::Mutex::new(KeyCache::default()),
        }
    }

    /// Fetches the keys now, so the first callback does not wait for them;
    /// a failure is logged and retried when a callback needs the keys.
    pub async fn prefetch(&self) {
        let mut cache = self.cache.lock().await;
        if cache.keys.is_empty() {
            self.refresh(&mut cache).await;
        }
    }

    /// Checks an `Authorization` header's bearer token.
    pub async fn verify(&self, authorization: Option<&str>) -> Result<(), JwtRefusal> {
        let invalid = |m: &str| JwtRefusal::Invalid(m.to_string());
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| invalid("no Authorization: Bearer token"))?;
        if token.len() > 16 * 1024 {
            return Err(invalid("the token is too long"));
        }
        let header = decode_header(token).map_err(|e| JwtRefusal::Invalid(format!("token header: {e}")))?;
        if header.alg != Algorithm::RS256 {
            return Err(JwtRefusal::Invalid(format!("algorithm {:?} is not RS256", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| invalid("the token names no key (kid)"))?;
        if kid.is_empty() || kid.len() > 256 {
            return Err(invalid("the token's key id is empty or too long"));
        }
        let (key, issuer) = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_nbf = true;
        let data = decode::<Claims>(token, &key, &validation)
            .map_err(|e| JwtRefusal::Invalid(format!("token: {e}")))?;
        let now = jsonwebtoken::get_current_timestamp();
        if data.claims.exp > now.saturating_add((MAX_LIFETIME + LEEWAY).as_secs()) {
            return Err(invalid("the token lives longer than ACS's five minutes"));
        }
        Ok(())
    }

    /// The key named `kid` and the issuer, fetching the key set when it is
    /// stale or lacks the key, within the cooldown.
    async fn key(&self, kid: &str) -> Result<(DecodingKey, String), JwtRefusal> {
        let mut cache = self.cache.lock().await;
        let stale = cache.fetched.is_none_or(|t| t.elapsed() > KEYS_MAX_AGE);
        let cooled = cache.last_attempt.is_none_or(|t| t.elapsed() >= REFETCH_COOLDOWN);
        if (stale || !cache.keys.contains_key(kid)) && cooled {
            if !stale {
                crate::metrics::acs_jwt_keys("unknown_kid");
            }
            self.refresh(&mut cache).await;
        }
        let Some(issuer) = cache.issuer.clone() else {
            return Err(JwtRefusal::KeysUnavailable("ACS's signing keys could not be fetched yet".into()));
        };
        match cache.keys.get(kid) {
            Some(key) => Ok((key.clone(), issuer)),
            None => Err(JwtRefusal::Invalid("the token's key id is not one of ACS's keys".into())),
        }
    }

    /// Fetches the configuration and key set; on failure keeps what the
    /// cache holds (a failed hourly refresh does not lose the keys).
    async fn refresh(&self, cache: &mut KeyCache) {
        cache.last_attempt = Some(StdInstant::now());
        match self.fetch().await {
            Ok((issuer, keys)) => {
                tracing::info!(keys = keys.len(), "fetched ACS's callback signing keys");
                crate::metrics::acs_jwt_keys("fetched");
                cache.issuer = Some(issuer);
                cache.keys = keys;
                cache.fetched = Some(StdInstant::now());
            }
            Err(e) => {
                crate::metrics::acs_jwt_keys("fetch_failed");
                tracing::warn!(
                    error = %e,
                    url = %crate::http_client::display_url(&self.openid_url),
                    kept = cache.keys.len(),
                    "cannot fetch ACS's callback signing keys; callbacks signed by other keys are refused"
                );
            }
        }
    }

    async fn fetch(&self) -> Result<(String, HashMap<String, DecodingKey>), String> {
        let config: OpenIdConfiguration = self.get_json(&self.openid_url).await?;
        let jwks_url = reqwest::Url::parse(&config.jwks_uri).map_err(|e| format!("jwks_uri: {e}"))?;
        if jwks_url.scheme() != "https" && !crate::http_client::is_loopback(&jwks_url) {
            return Err("jwks_uri is not https".into());
        }
        let set: JwkSet = self.get_json(jwks_url.as_str()).await?;
        let keys: HashMap<String, DecodingKey> = set
            .keys
            .iter()
            .filter(|k| matches!(k.algorithm, AlgorithmParameters::RSA(_)))
            .filter_map(|k| Some((k.common.key_id.clone()?, DecodingKey::from_jwk(k).ok()?)))
            .take(MAX_KEYS)
            .collect();
        if keys.is_empty() {
            return Err("the key set holds no RSA key with a key id".into());
        }
        Ok((config.issuer, keys))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let response = self.http.get(url).timeout(FETCH_TIMEOUT).send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = crate::http_client::read_capped(response).await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{} answered HTTP {status}", crate::http_client::display_url(url)));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{}: {e}", crate::http_client::display_url(url)))
    }
}
