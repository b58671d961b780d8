//! Loading a config file: the main file's sections in order, then the
//! policy files it names, and the checks that span sections.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;

use super::context::Ctx;
use super::raw::{RawConfig, RawPolicyFile};
use super::secrets::expand_env;
use super::yaml::{locate, syntax_error};
use super::{Config, ConfigError, Match, Notifications, Policy, ProviderConfig, ProviderSettings, Retention};
use crate::domain::parse_duration;

/// Parses and validates `text`; errors and warnings may still quote secrets.
pub(super) fn parse_unmasked(path: &Path, text: &str) -> Result<Config, ConfigError> {
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
        let provider = ctx.provider(&name, raw, &mut warnings)?;
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
        warnings.push("webhooks.trtc is set but listen is not: nothing will receive TRTC callbacks".into());
    }
    let retention = match &raw.retention {
        None => Retention::default(),
        Some(r) => {
            let period = |key: &'static str, v: &Option<String>| -> Result<Option<Duration>, ConfigError> {
                let Some(text) = v else { return Ok(None) };
                let d = parse_duration(text)
                    .map_err(|e| ctx.error(&["retention", key], format!("retention: {e}")))?;
                if d < Duration::from_secs(24 * 3600) {
                    return Err(
                        ctx.error(&["retention", key], format!("retention: {key} must be at least 1 day"))
                    );
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
                format!(
                    "provider {name:?}: callback_url needs listen, the address that receives the callbacks"
                ),
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
