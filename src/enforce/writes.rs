//! The enforcement's own writes, and how they fail: each retried until the
//! database comes back, each fenced by the term its sessions were claimed
//! under (a write about sessions another instance took over is not made,
//! and the job ends), and a panicked job's sessions settled rather than
//! left `enforcing`.

use std::sync::Arc;

use super::EnforcerState;
use crate::domain::audit::AuditEntry;
use crate::domain::{SessionId, SessionState};
use crate::store::StoreError;
use crate::store::health::StoreRetry;

impl EnforcerState {
    /// Runs a job's `work` in a task of its own. A panic is a bug; if one
    /// happens anyway, the job's sessions (`ids`) are settled failed instead
    /// of staying `enforcing` until a restart.
    pub(super) async fn supervise(
        self: Arc<Self>,
        term: i64,
        ids: Vec<SessionId>,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        if let Err(e) = tokio::spawn(work).await
            && e.is_panic()
        {
            self.fail_after_panic(term, &ids).await;
        }
    }

    /// Settles the sessions of a job whose task panicked: `failed`, with the
    /// reason, so nothing stays `enforcing` until a restart.
    async fn fail_after_panic(&self, term: i64, ids: &[SessionId]) {
        let reason = "the enforcement task panicked (a bug: see the log); the call may not have been made";
        tracing::error!(sessions = ids.len(), "{reason}");
        let entries: Vec<_> = ids.iter().map(|id| AuditEntry::new("failed", *id).detail(reason)).collect();
        self.persist(|| {
            self.store.record_outcome_as(
                term,
                &entries,
                Some((SessionState::Failed, Some(reason))),
                self.clock.now(),
            )
        })
        .await;
    }

    /// Puts sessions back in the queue when shutdown interrupts them between
    /// calls, so a stopped daemon leaves nothing `enforcing`.
    pub(super) async fn release(&self, term: i64, ids: &[SessionId], unsent: bool, why: &str) {
        match self.store.release_as(term, ids, unsent, self.clock.now(), why).await {
            Ok(()) => {}
            Err(StoreError::Fenced { .. }) => {
                tracing::info!(
                    sessions = ids.len(),
                    "sessions not handed back: another instance has taken them over"
                )
            }
            Err(e) => tracing::warn!(
                error = %e,
                "could not hand sessions back at shutdown; the next start (or leader) re-queues them"
            ),
        }
    }

    /// Runs a store write until it succeeds, backing off while the database is
    /// unavailable (locked, disk full). Gives up at shutdown, leaving the
    /// sessions `enforcing` for the next start (or leader) to re-queue, and
    /// at once when the write is fenced off: another instance took the
    /// sessions over, and the job ends without another word from this one.
    /// Returns whether the write happened.
    pub(super) async fn persist<F, Fut>(&self, mut write: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        let mut retry = StoreRetry::new(self.store.health(), "enforcement");
        loop {
            match write().await {
                Ok(()) => return true,
                Err(e @ StoreError::Fenced { .. }) => {
                    tracing::warn!(error = %e, "lost the sessions to another instance; leaving them to it");
                    return false;
                }
                Err(e) => {
                    let wait = retry.failed(&e);
                    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot write enforcement record");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.shutdown.cancelled() => return false,
                    }
                }
            }
        }
    }
}
