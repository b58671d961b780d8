//! The policies of a config file: its own, then those of the files its
//! `policy_files` name, and the check that every `match` can take an event.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use crate::config::file_ctx::FileCtx;
use crate::config::raw::{RawPolicy, RawPolicyFile};
use crate::config::yaml::{locate, syntax_error};
use crate::config::{ConfigError, Match, Policy, ProviderConfig};

/// Where each policy is defined: its file and line.
pub(super) type DefinedAt = HashMap<String, (PathBuf, Option<usize>)>;

/// The policies of the main file and of its policy files.
pub(super) struct Policies {
    /// In load order: the main file's, then each policy file's.
    pub(super) policies: IndexMap<String, Policy>,
    pub(super) defined_at: DefinedAt,
    /// The main file, then each policy file read.
    pub(super) sources: Vec<PathBuf>,
    /// The `policy_files` patterns, resolved against the config file's folder.
    pub(super) policy_globs: Vec<String>,
}

impl FileCtx<'_> {
    /// `policies`, then the files `policy_files` names, then the check that
    /// every `match` can take an event.
    pub(super) fn policies(
        &self,
        raw: IndexMap<String, RawPolicy>,
        patterns: &[String],
        providers: &IndexMap<String, ProviderConfig>,
        warnings: &mut Vec<String>,
    ) -> Result<Policies, ConfigError> {
        let mut loaded = Policies {
            policies: IndexMap::new(),
            defined_at: HashMap::new(),
            sources: vec![self.path.to_path_buf()],
            policy_globs: Vec::new(),
        };
        for (name, raw) in raw {
            let policy = self.policy(&name, raw, providers)?;
            let at = (self.path.to_path_buf(), locate(self.text, &["policies", &name]));
            loaded.defined_at.insert(name.clone(), at);
            loaded.policies.insert(name, policy);
        }
        for pattern in patterns {
            self.policy_files(pattern, providers, &mut loaded, warnings)?;
        }
        check_match_order(&loaded.policies, &loaded.defined_at)?;
        Ok(loaded)
    }

    /// One `policy_files` pattern: the files it matches, in sorted order,
    /// each read once.
    fn policy_files(
        &self,
        pattern: &str,
        providers: &IndexMap<String, ProviderConfig>,
        loaded: &mut Policies,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        let full = self.folder().join(pattern.trim()).to_string_lossy().into_owned();
        let bad = |reason: String| self.error(&["policy_files"], format!("policy_files: {reason}"));
        let matches =
            glob::glob(&full).map_err(|e| bad(format!("{pattern:?} is not a valid pattern: {e}")))?;
        let mut files: Vec<PathBuf> = matches.filter_map(Result::ok).filter(|p| p.is_file()).collect();
        files.sort();
        if files.is_empty() {
            warnings.push(format!("policy_files: {pattern:?} matches no file"));
        }
        for file in files {
            if loaded.sources.contains(&file) {
                continue;
            }
            load_policy_file(&file, providers, &mut loaded.policies, &mut loaded.defined_at)?;
            loaded.sources.push(file);
        }
        loaded.policy_globs.push(full);
        Ok(())
    }
}

/// Reads one of `policy_files` into `policies`. A name defined before is an
/// error naming both places.
fn load_policy_file(
    file: &Path,
    providers: &IndexMap<String, ProviderConfig>,
    policies: &mut IndexMap<String, Policy>,
    defined_at: &mut DefinedAt,
) -> Result<(), ConfigError> {
    if let Some(reason) = super::super::trust::untrusted(file) {
        return Err(ConfigError { file: file.to_path_buf(), line: None, reason });
    }
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        line: None,
        reason: format!("cannot read the policy file: {e}"),
    })?;
    let ctx = FileCtx { path: file, text: &text };
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
fn check_match_order(policies: &IndexMap<String, Policy>, defined_at: &DefinedAt) -> Result<(), ConfigError> {
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
