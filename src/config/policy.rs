//! One policy, checked against the providers, and the session length
//! every duration limit shares.

use std::time::Duration;

use indexmap::IndexMap;

use super::file_ctx::FileCtx;
use super::raw::RawPolicy;
use super::{
    ConfigError, DEFAULT_STALE_AFTER, MAX_GRACE, MAX_SESSION_DURATION, Match, Policy, ProviderConfig,
    ProviderSettings, Scope,
};
use crate::budget::{Budget, Window};
use crate::domain::{Action, parse_duration};

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

impl FileCtx<'_> {
    /// One policy, checked against the providers; errors point into this
    /// file.
    pub(super) fn policy(
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
        let grace = self
            .bounded(raw.grace.as_deref(), "grace", Duration::ZERO, MAX_GRACE)
            .map_err(|r| err("grace", r))?;
        let stale_after = self
            .bounded(raw.stale_after.as_deref(), "stale_after", DEFAULT_STALE_AFTER, MAX_SESSION_DURATION)
            .map_err(|r| err("stale_after", r))?;
        if stale_after.is_zero() {
            return Err(err("stale_after", "stale_after must be positive".into()));
        }
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
            stale_after,
            budget,
            source: self.path.to_path_buf(),
        })
    }

    /// An optional duration key: `default` when absent, at most `max`.
    fn bounded(
        &self,
        text: Option<&str>,
        key: &str,
        default: Duration,
        max: Duration,
    ) -> Result<Duration, String> {
        let Some(text) = text else { return Ok(default) };
        let d = parse_duration(text).map_err(|r| format!("{key}: {r}"))?;
        if d > max {
            return Err(format!("{key} {text:?} is longer than {}", humantime::format_duration(max)));
        }
        Ok(d)
    }
}
