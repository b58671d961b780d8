//! Loading a config file: the main file's sections in order, then the
//! policy files it names, and the checks that span sections.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use indexmap::IndexMap;

use super::file_ctx::FileCtx;
use super::raw::{RawConfig, RawNotifications, RawProvider, RawRetention, RawSecret};
use super::secrets::{expand_env, read_secret_file};
use super::yaml::syntax_error;
use super::{
    Config, ConfigError, Database, MIN_SHARED_SECRET_LEN, Notifications, Policy, PostgresUrl, ProviderConfig,
    ProviderSettings, Retention,
};
use crate::domain::parse_duration;
use crate::domain::secret::Secret;

mod policies;
mod webhooks;

use policies::{DefinedAt, Policies};
use webhooks::Webhooks;

/// Parses and validates `text`; errors and warnings may still quote secrets.
/// The steps run in file order, so the first problem is the one reported;
/// each step may refuse the file or add a warning.
pub(super) fn parse_unmasked(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let ctx = FileCtx { path, text };
    let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
    let mut warnings = Vec::new();

    let database = ctx.database(&raw.database, raw.database_password_file.as_ref())?;
    if raw.database_listen.is_some() && !matches!(database, Database::Postgres(_)) {
        return Err(ctx.error(
            &["database_listen"],
            "database_listen is for a PostgreSQL database; database names a SQLite file".into(),
        ));
    }
    let providers = ctx.providers(raw.providers, &mut warnings)?;
    let Policies { policies, defined_at, sources, policy_globs } = ctx.policies(
        raw.policies,
        raw.policy_files.as_deref().unwrap_or_default(),
        &providers,
        &mut warnings,
    )?;
    let listen = ctx.listen(raw.listen.as_deref())?;
    let api_token =
        ctx.api_token(raw.api_token.as_ref(), raw.api_token_file.as_ref(), listen, &mut warnings)?;
    let Webhooks { acs_webhook, trtc_callback_key, trtc_reconnect_grace } =
        ctx.webhooks(&raw.webhooks, listen, &mut warnings)?;
    let retention = ctx.retention(raw.retention.as_ref(), &mut warnings)?;
    ctx.acs_callbacks(&providers, acs_webhook.as_ref(), listen)?;
    let notifications = ctx.notifications(raw.notifications.as_ref())?;
    warnings_need_notifications(notifications.as_ref(), &policies, &defined_at)?;
    ctx.retention_covers_budgets(&retention, &policies)?;
    let time_zone = ctx.time_zone(raw.time_zone.as_deref())?;
    Ok(Config {
        path: path.to_path_buf(),
        database,
        database_listen: raw.database_listen.unwrap_or(true),
        providers,
        policies,
        listen,
        api_token,
        acs_webhook,
        trtc_callback_key,
        trtc_reconnect_grace,
        retention,
        notifications,
        time_zone,
        sources,
        policy_globs,
        warnings,
    })
}

impl FileCtx<'_> {
    /// `database`: a file, relative to the config file's folder, or a
    /// PostgreSQL URL (with `database_password_file`, if given).
    fn database(&self, raw: &str, password_file: Option<&String>) -> Result<Database, ConfigError> {
        let database = expand_env(raw).map_err(|var| {
            self.error(&["database"], format!("database refers to ${{{var}}}, which is not set"))
        })?;
        if database.trim().is_empty() {
            return Err(self.error(&["database"], "database must name a file or a postgres:// URL".into()));
        }
        if !Database::is_postgres_url(&database) {
            if password_file.is_some() {
                return Err(self.error(
                    &["database_password_file"],
                    "database_password_file is for a PostgreSQL database; database names a SQLite file"
                        .into(),
                ));
            }
            return Ok(Database::Sqlite(self.folder().join(database.trim())));
        }
        let password = password_file
            .map(|file| {
                read_secret_file(self.folder(), file).map_err(|r| self.error(&["database_password_file"], r))
            })
            .transpose()?;
        let url = PostgresUrl::parse(&database, password)
            .map_err(|reason| self.error(&["database"], format!("database: {reason}")))?;
        Ok(Database::Postgres(url))
    }

    /// `providers`: each section in file order; at least one.
    fn providers(
        &self,
        raw: IndexMap<String, RawProvider>,
        warnings: &mut Vec<String>,
    ) -> Result<IndexMap<String, ProviderConfig>, ConfigError> {
        let mut providers: IndexMap<String, ProviderConfig> = IndexMap::new();
        for (name, raw) in raw {
            let provider = self.provider(&name, raw, warnings)?;
            // One TRTC application, one callback key: two sections of the
            // same application must not disagree on it.
            if let ProviderSettings::Trtc(t) = &provider.settings
                && let Some(other) = providers.values().find(|p| {
                    matches!(&p.settings, ProviderSettings::Trtc(o)
                        if o.sdk_app_id == t.sdk_app_id && o.callback_key != t.callback_key)
                })
            {
                return Err(self.error(
                    &["providers", &name, "callback_key"],
                    format!(
                        "provider {name:?}: providers {:?} and {name:?} are both TRTC application {} but give \
                         different callback keys (TRTC signs an application's callbacks with one key)",
                        other.name, t.sdk_app_id
                    ),
                ));
            }
            providers.insert(name, provider);
        }
        if providers.is_empty() {
            return Err(self.error(&["providers"], "at least one provider is needed".into()));
        }
        Ok(providers)
    }

    /// `listen`: the address the HTTP listener binds.
    fn listen(&self, raw: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(text) = raw else { return Ok(None) };
        let addr = text.trim().parse::<SocketAddr>().map_err(|_| {
            self.error(&["listen"], format!("listen {text:?} is not an address like 127.0.0.1:8720"))
        })?;
        Ok(Some(addr))
    }

    /// `api_token` or `api_token_file`: long enough, and useless without `listen`.
    fn api_token(
        &self,
        inline: Option<&RawSecret>,
        file: Option<&String>,
        listen: Option<SocketAddr>,
        warnings: &mut Vec<String>,
    ) -> Result<Option<Secret>, ConfigError> {
        let api_token = match (inline, file) {
            (None, None) => None,
            (inline, file) => Some(self.secret_pair(
                &[],
                "api_token",
                ("api_token", inline),
                ("api_token_file", file),
                "the session API's bearer token",
            )?),
        };
        let api_token = api_token.map(|t| self.shared_secret(&["api_token"], "api_token", t)).transpose()?;
        if api_token.is_some() && listen.is_none() {
            warnings.push("api_token is set but listen is not: the session API is not served".into());
        }
        Ok(api_token)
    }

    /// A secret shared with a peer (a bearer token, a callback key, a
    /// signing key): guessable if short, so at least
    /// [`MIN_SHARED_SECRET_LEN`] characters.
    pub(super) fn shared_secret(
        &self,
        path: &[&str],
        key: &str,
        secret: Secret,
    ) -> Result<Secret, ConfigError> {
        if secret.expose().chars().count() < MIN_SHARED_SECRET_LEN {
            return Err(self.error(
                path,
                format!(
                    "{key} must be at least {MIN_SHARED_SECRET_LEN} characters (e.g. `openssl rand -hex 32`)"
                ),
            ));
        }
        Ok(secret)
    }

    /// `retention`: the checkpoint key, then the audit and session periods.
    fn retention(
        &self,
        raw: Option<&RawRetention>,
        warnings: &mut Vec<String>,
    ) -> Result<Retention, ConfigError> {
        let Some(r) = raw else { return Ok(Retention::default()) };
        let checkpoint_key = match (&r.checkpoint_key, &r.checkpoint_key_file) {
            (None, None) => None,
            (inline, file) => Some(self.secret_pair(
                &["retention"],
                "checkpoint_key",
                ("checkpoint_key", inline.as_ref()),
                ("checkpoint_key_file", file.as_ref()),
                "the key that signs audit checkpoints",
            )?)
            .map(|k| self.shared_secret(&["retention", "checkpoint_key"], "retention.checkpoint_key", k))
            .transpose()?,
        };
        let audit = self.retention_period("audit", &r.audit)?;
        if audit.is_some() && checkpoint_key.is_none() {
            warnings.push(
                "retention.audit prunes the audit log without retention.checkpoint_key: its checkpoints are unsigned".into(),
            );
        }
        Ok(Retention { sessions: self.retention_period("sessions", &r.sessions)?, audit, checkpoint_key })
    }

    /// One `retention` period: a duration of at least a day.
    fn retention_period(
        &self,
        key: &'static str,
        v: &Option<String>,
    ) -> Result<Option<Duration>, ConfigError> {
        let Some(text) = v else { return Ok(None) };
        let d =
            parse_duration(text).map_err(|e| self.error(&["retention", key], format!("retention: {e}")))?;
        if d < Duration::from_secs(24 * 3600) {
            return Err(self.error(&["retention", key], format!("retention: {key} must be at least 1 day")));
        }
        Ok(Some(d))
    }

    /// `notifications`: an http(s) URL and the secret that signs deliveries.
    fn notifications(&self, raw: Option<&RawNotifications>) -> Result<Option<Notifications>, ConfigError> {
        let Some(n) = raw else { return Ok(None) };
        let url = expand_env(&n.url).map_err(|var| {
            self.error(
                &["notifications", "url"],
                format!("notifications.url refers to ${{{var}}}, which is not set"),
            )
        })?;
        match reqwest::Url::parse(url.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => {
                return Err(self.error(
                    &["notifications", "url"],
                    format!("notifications.url {:?} is not an http(s) URL", n.url),
                ));
            }
        }
        let secret = self.secret_pair(
            &["notifications"],
            "",
            ("secret", n.secret.as_ref()),
            ("secret_file", n.secret_file.as_ref()),
            "the key that signs each notification",
        )?;
        let secret = self.shared_secret(&["notifications", "secret"], "notifications.secret", secret)?;
        Ok(Some(Notifications { url: url.trim().to_string(), secret }))
    }

    /// `retention.sessions` must keep sessions for as long as any policy's
    /// budget window counts them.
    fn retention_covers_budgets(
        &self,
        retention: &Retention,
        policies: &IndexMap<String, Policy>,
    ) -> Result<(), ConfigError> {
        if let Some(keep) = retention.sessions
            && let Some(p) = policies.values().find(|p| p.budget.is_some_and(|b| b.window.longest() > keep))
        {
            let window = p.budget.map(|b| b.window.as_str()).unwrap_or_default();
            return Err(self.error(
                &["retention", "sessions"],
                format!(
                    "retention.sessions ({}) is shorter than policy {:?}'s budget window ({window}): sessions pruned \
                     before the window ends would stop counting against the budget",
                    humantime::format_duration(keep),
                    p.name
                ),
            ));
        }
        Ok(())
    }

    /// `time_zone`: an IANA name; UTC when absent.
    fn time_zone(&self, raw: Option<&str>) -> Result<chrono_tz::Tz, ConfigError> {
        let Some(name) = raw else { return Ok(chrono_tz::Tz::UTC) };
        name.trim().parse::<chrono_tz::Tz>().map_err(|_| {
            self.error(
                &["time_zone"],
                format!("time_zone {name:?} is not an IANA zone name like Europe/Berlin or UTC"),
            )
        })
    }
}

/// A policy with `warn_before` needs somewhere to send the warnings; the
/// error points at the first such policy, in whichever file defines it.
fn warnings_need_notifications(
    notifications: Option<&Notifications>,
    policies: &IndexMap<String, Policy>,
    defined_at: &DefinedAt,
) -> Result<(), ConfigError> {
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
    Ok(())
}
