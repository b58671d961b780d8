//! Retention and the audit log's anchors: the hourly task that applies
//! `retention:`, deleting settled sessions and audit rows older than their
//! periods (the audit log behind a signed checkpoint, so the chain still
//! verifies); and, with `retention.checkpoint_key`, the task that records a
//! signed head of the chain every few minutes and logs it, so that `audit
//! verify` finds a rewritten chain or a cut-off tail behind any head.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Retention;
use crate::domain::audit::{Checkpoint, Head, checkpoint_signature};
use crate::domain::secret::Secret;
use crate::lead::Leadership;
use crate::store::{Store, StoreError};

/// How often retention runs.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The first run, this long after start: recovery and the first claims go
/// first. (Each run deletes in short transactions anyway.)
pub const FIRST_PRUNE_AFTER: Duration = Duration::from_secs(60);

/// Applies `retention:`: settled sessions and audit rows older than their
/// periods are deleted, the audit log behind a signed checkpoint. With
/// several instances, only the one leading maintenance prunes.
pub async fn prune_periodically(
    store: Store,
    clock: Clock,
    retention: Retention,
    lead: Leadership,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + FIRST_PRUNE_AFTER, PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if !lead.maintains() {
            continue;
        }
        // A stop does not wait for a long prune: it ends after the chunk in
        // hand (each chunk is its own transaction; an audit prune stopped
        // after its checkpoint deletes the rest first next time).
        tokio::select! {
            result = prune_once(&store, &clock, &retention) => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "retention pruning failed; it runs again in an hour");
                }
            }
            () = shutdown.cancelled() => {
                tracing::info!("retention pruning stopped for shutdown; it goes on at the next run");
                return;
            }
        }
    }
}

/// How long a room's or participant's last webhook event is kept: as long
/// as a session may last. Older events are refused anyway
/// (`intake::presence::MAX_EVENT_AGE`), so forgetting them lets no replay in.
pub const PRESENCE_KEPT: Duration = crate::config::MAX_SESSION_DURATION;

pub async fn prune_once(store: &Store, clock: &Clock, retention: &Retention) -> Result<(), StoreError> {
    let now = clock.now();
    let before = |d: Duration| now.saturating_sub(d);
    let n = store.prune_presence(before(PRESENCE_KEPT).millis()).await?;
    if n > 0 {
        tracing::info!(rows = n, "retention: pruned webhook history older than a week");
    }
    if let Some(keep) = retention.sessions {
        let n = store.prune_sessions(before(keep)).await?;
        if n > 0 {
            tracing::info!(sessions = n, "retention: pruned settled sessions");
        }
    }
    if let Some(keep) = retention.audit {
        let key = retention.checkpoint_key.clone();
        let sign = move |cp: &Checkpoint| key.as_ref().map(|k| checkpoint_signature(k, cp));
        if let Some(cp) = store.prune_audit(before(keep), now, sign).await? {
            tracing::info!(rows = cp.rows_pruned, checkpoint = cp.last_id, "retention: pruned the audit log");
        }
    }
    Ok(())
}

/// How often a signed head of the audit chain is recorded (when rows were
/// added since the last one).
pub const HEAD_EVERY: Duration = Duration::from_secs(300);

/// Records a signed head every [`HEAD_EVERY`], and a last one at shutdown.
pub async fn record_heads_periodically(store: Store, clock: Clock, key: Secret, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(HEAD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            () = shutdown.cancelled() => true,
        };
        if let Err(e) = record_head(&store, &clock, &key).await {
            tracing::warn!(error = %e, "cannot record the audit log's signed head; trying again later");
        }
        if stopping {
            return;
        }
    }
}

/// Records a signed head of the audit chain now (if rows were added since
/// the last one), and logs it: a copy of the head outside the database.
pub async fn record_head(store: &Store, clock: &Clock, key: &Secret) -> Result<Option<Head>, StoreError> {
    let head = store.record_audit_head(clock.now(), |at, id, hash| Head::signed(key, at, id, hash)).await?;
    if let Some(h) = &head {
        tracing::info!(row = h.last_id, hash = %h.last_hash, at = %h.at, signature = %h.signature, "audit log head");
    }
    Ok(head)
}
