//! Whether a call is still wanted when it is about to go.
//!
//! - A session whose deadline passed longer ago than its policy's
//!   `stale_after` is not enforced: it settles `expired`, with how late it
//!   was. Rooms are reused (a doctor's fixed room, `consult-42`): after an
//!   outage, a dismissal hours late can end someone else's call.
//! - A room the provider's webhooks reported closed after the session
//!   started has ended already: the session settles `already_ended`, with
//!   no call.
//!
//! Checked before a job records its first attempt (so stale work after an
//! outage never takes the provider's quota) and again once the pacer admits
//! the call (a long backlog can make a call stale while it waits).

use super::{EnforcerState, Job};
use crate::config::DEFAULT_STALE_AFTER;
use crate::domain::audit::AuditEntry;
use crate::domain::{Instant, SessionState};

/// Why a job's sessions are settled without a call.
enum Unwanted {
    /// Every session is later than its policy's `stale_after`.
    Stale,
    /// The room closed (by the provider's report) at this time (ms), after
    /// every session started.
    Closed(i64),
}

impl EnforcerState {
    /// Settles the job's sessions without a call if it is no longer wanted;
    /// returns whether it did. `api_action` names the call it would have
    /// been; `room_history`: also read the room's webhook history (a read
    /// of the database, so not right before a send).
    pub(super) async fn settle_if_unwanted(&self, job: &Job, api_action: &str, room_history: bool) -> bool {
        let now = self.clock.now();
        let Some(why) = self.unwanted(job, now, room_history).await else { return false };
        let (state, event, detail) = match why {
            Unwanted::Stale => {
                let late = job.sessions.iter().map(|s| now.millis_since(s.deadline)).min().unwrap_or(0);
                (
                    SessionState::Expired,
                    "expired",
                    format!(
                        "not sent: {api_action} on room {} would have been {} late, more than its policy's stale_after",
                        job.target.room,
                        humantime::format_duration(std::time::Duration::from_millis(late.max(0) as u64))
                    ),
                )
            }
            Unwanted::Closed(at) => (
                SessionState::AlreadyEnded,
                "already_ended",
                format!(
                    "not sent: the provider reported room {} closed at {} (webhook), after the session started",
                    job.target.room,
                    Instant::from_millis(at)
                ),
            ),
        };
        let entries: Vec<AuditEntry> = job
            .sessions
            .iter()
            .map(|s| AuditEntry {
                provider: Some(job.provider.clone()),
                action: Some(api_action.to_string()),
                outcome: Some(state.as_str()),
                lateness_ms: Some(now.millis_since(s.deadline)),
                ..AuditEntry::new(event, s.id).detail(detail.clone())
            })
            .collect();
        tracing::warn!(provider = %job.provider, room = %job.target.room, sessions = job.sessions.len(), "{detail}");
        crate::metrics::provider_answer(
            &job.provider,
            api_action,
            state.as_str(),
            std::time::Duration::ZERO,
            0,
        );
        let term = job.term();
        self.persist(|| self.store.record_outcome_as(term, &entries, Some((state, Some(&detail))), now))
            .await;
        true
    }

    async fn unwanted(&self, job: &Job, now: Instant, room_history: bool) -> Option<Unwanted> {
        let config = self.live.current();
        let stale = job.sessions.iter().all(|s| {
            let limit = config.policy(&s.policy).map_or(DEFAULT_STALE_AFTER, |p| p.stale_after);
            now.millis_since(s.deadline) > crate::domain::duration_millis_ceil(limit)
        });
        if stale {
            return Some(Unwanted::Stale);
        }
        if !room_history {
            return None;
        }
        let started = job.sessions.iter().map(|s| s.started_at).max()?;
        match self.store.last_event(&job.provider, &job.target.room, "").await {
            Ok(Some((at, event))) if event == "closed" && at >= started.millis() => {
                Some(Unwanted::Closed(at))
            }
            Ok(_) => None,
            // Not knowing is no reason to skip a call that is due.
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the room's webhook history; calling anyway");
                None
            }
        }
    }
}
