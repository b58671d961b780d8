//! Hot reload: the configuration in force, and the task that replaces it.
//!
//! Every part of the daemon reads the configuration through [`Live`](crate::config::live::Live) when it
//! decides something (a registration, a webhook event, an adoption, an
//! enforcement), so a reload applies from the next decision on. Sessions
//! already registered keep their deadline, grace and warnings; at their
//! deadline they are enforced with their policy's action and mode as the
//! file says then, or as it said last if the policy was removed.
//!
//! A reload happens on SIGHUP (`systemctl reload`) and when the main file or
//! a policy file changes (polled every [`POLL`], so editors that replace the
//! file and new files matching `policy_files` are both seen). It is all or
//! nothing: every file must load, and the settings that take effect only at
//! start (`database`, `listen`, tokens, webhook secrets, `providers`,
//! `retention`) must be unchanged. Otherwise the running configuration
//! stays, and the refusal (file, line, reason) is logged, counted
//! (`callwarden_config_reloads_total{result="rejected"}`) and recorded in the
//! audit log, as is every reload applied.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::audit::AuditEntry;
use crate::store::Store;

/// How often the configuration files are checked for changes.
pub const POLL: Duration = Duration::from_secs(1);

/// Settings a reload cannot apply, named as in the file, that differ.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.database != new.database || old.database_listen != new.database_listen {
        changed.push("database");
    }
    if old.listen != new.listen {
        changed.push("listen");
    }
    if old.api_token != new.api_token {
        changed.push("api_token");
    }
    if old.acs_webhook != new.acs_webhook || old.trtc_callback_key != new.trtc_callback_key {
        changed.push("webhooks");
    }
    if old.providers != new.providers {
        changed.push("providers");
    }
    if old.retention != new.retention {
        changed.push("retention");
    }
    changed
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied,
    /// The files are as they were when last applied: nothing to do.
    Unchanged,
    Rejected(String),
}

/// Reads the configuration again and applies it if it is valid and
/// reloadable. `why` names the trigger for the log and the audit row.
pub async fn reload_once(
    path: &Path,
    tx: &watch::Sender<Arc<Config>>,
    store: &Store,
    clock: &Clock,
    why: &str,
) -> ReloadOutcome {
    let old = Arc::clone(&tx.borrow());
    let outcome = match Config::load(path) {
        Err(e) => ReloadOutcome::Rejected(e.to_string()),
        Ok(new) => {
            let blocked = restart_only_changes(&old, &new);
            if !blocked.is_empty() {
                ReloadOutcome::Rejected(format!(
                    "{}: {} changed; these take effect only at start: restart the daemon to apply them",
                    path.display(),
                    blocked.join(", ")
                ))
            } else if same_policies(&old, &new) {
                ReloadOutcome::Unchanged
            } else {
                let policies: Vec<&str> = new.policies.keys().map(String::as_str).collect();
                let detail = format!(
                    "{why}: {} policies from {} files: {}",
                    policies.len(),
                    new.sources.len(),
                    policies.join(", ")
                );
                for w in &new.warnings {
                    tracing::warn!(config = %path.display(), "{w}");
                }
                if let Err(e) = store.set_outcome_notifications(new.notifications.is_some()).await {
                    tracing::error!(error = %e, "reload: cannot record whether outcomes are notified");
                }
                tx.send_replace(Arc::new(new));
                tracing::info!(trigger = why, "{detail}");
                record(store, clock, "config_reloaded", detail).await;
                ReloadOutcome::Applied
            }
        }
    };
    match &outcome {
        ReloadOutcome::Applied => crate::metrics::config_reload("applied"),
        ReloadOutcome::Unchanged => {}
        ReloadOutcome::Rejected(reason) => {
            crate::metrics::config_reload("rejected");
            tracing::error!(
                trigger = why,
                "configuration reload refused; the running configuration stays: {reason}"
            );
            record(store, clock, "config_rejected", format!("{why}: {reason}")).await;
        }
    }
    outcome
}

/// Whether a reload would change nothing the daemon uses.
fn same_policies(old: &Config, new: &Config) -> bool {
    old.policies == new.policies
        && old.notifications == new.notifications
        && old.time_zone == new.time_zone
        && old.sources == new.sources
}

async fn record(store: &Store, clock: &Clock, event: &'static str, detail: String) {
    let entry = AuditEntry { event, detail: Some(detail), ..AuditEntry::default() };
    if let Err(e) = store.record_audit(&entry, clock.now()).await {
        tracing::error!(error = %e, "cannot record the reload in the audit log");
    }
}

/// The files a configuration depends on, with what identifies their version.
type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

fn fingerprint(config: &Config) -> Fingerprint {
    let mut files: Vec<PathBuf> = config.sources.clone();
    for pattern in &config.policy_globs {
        if let Ok(paths) = glob::glob(pattern) {
            files.extend(paths.filter_map(Result::ok));
        }
    }
    files.sort();
    files.dedup();
    files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
            (f, meta)
        })
        .collect()
}

/// Reloads on SIGHUP and when a configuration file changes, until `shutdown`.
pub async fn watch_config(
    path: PathBuf,
    tx: watch::Sender<Arc<Config>>,
    store: Store,
    clock: Clock,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only");
            None
        }
    };
    let mut seen = fingerprint(&Arc::clone(&tx.borrow()));
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            _ = tick.tick() => "file change",
            () = shutdown.cancelled() => return,
        };
        // Taken before reading, so a change made during the reload is seen
        // by the next check. A broken file is then reported once, not every
        // second until it is fixed.
        let current = Arc::clone(&tx.borrow());
        let now = fingerprint(&current);
        if why == "file change" && now == seen {
            continue;
        }
        seen = now;
        reload_once(&path, &tx, &store, &clock, why).await;
    }
}
