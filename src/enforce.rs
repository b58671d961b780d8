//! Enforcement: rate limit → provider call → classify → record, with retries.
//!
//! The scheduler hands over claimed sessions ([`Claimed`]); this module groups
//! them into provider calls (TRTC: one `DismissRoom` per room, `RemoveUser`
//! with up to ten users; ACS: one `TerminateCall` per call, one
//! `RemoveParticipant` per participant), and runs each call as a task:
//! record the attempt, wait for the provider action's pacer, send, record
//! the outcome, and retry retryable answers with backoff until the
//! provider's `retry.max_attempts` run out.
//!
//! Invariants:
//! - an `attempt` row is committed before every provider call, and the answer
//!   is committed after it; a crash in between leaves a session `enforcing`,
//!   which the next start re-queues (TRTC answers a repeat with `RoomNotExist`);
//! - every call, first tries and retries alike, passes its provider action's
//!   [`Pacer`](pacer::Pacer) right before it is sent, so no sliding second ever carries more
//!   than `max_requests_per_second` calls for one action; waiting calls go
//!   out earliest deadline first;
//! - calls run concurrently: a slow provider costs latency, not throughput;
//! - with several instances, a call leaves only while this instance's lease
//!   on the provider's bucket is trusted ([`Leadership::trusts`], checked
//!   right before the send), and every write about it is fenced by the
//!   term its sessions were claimed under (`writes.rs`);
//! - no call leaves before its deadline by the daemon's clock, nor by the
//!   database's when the daemon's runs ahead of it.
//!
//! The pacing itself is [`pacer`]'s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::live::Live;
use crate::domain::audit::AuditEntry;
use crate::domain::lease::SOLE_TERM;
use crate::domain::session::{Repeatability, Session};
use crate::domain::{Action, Instant, Room, SessionState};
use crate::lead::Leadership;
use crate::policy::{PolicyAction, policy_actions};
use crate::providers::{CallContext, CallReport, Classified, Target};
use crate::scheduler::Claimed;
use crate::skew::ClockOffset;
use crate::store::{Attempt, AttemptWriter, Store};

pub mod pacer;
mod stale;
pub mod unconfirmed;
mod writes;

use pacer::{PacerPlace, ProviderSlot};

/// One provider call's worth of sessions.
#[derive(Debug)]
struct Job {
    provider: String,
    target: Target,
    sessions: Vec<Session>,
    /// The policy is in shadow mode: record, do not call.
    shadow: bool,
    /// The first try's place at its action's pacer, taken at dispatch.
    place: Option<PacerPlace>,
    /// Held (for its drop) until the job ends, so claimed-but-unsettled
    /// work stays bounded.
    _permit: OwnedSemaphorePermit,
}

#[derive(Debug, Clone)]
pub struct Enforcer {
    state: Arc<EnforcerState>,
}

#[derive(Debug)]
struct EnforcerState {
    store: Store,
    /// Attempt records, group-committed where that keeps calls on time.
    attempts: AttemptWriter,
    clock: Clock,
    providers: HashMap<String, ProviderSlot>,
    /// The configuration in force: what each policy does at the deadline.
    live: Live,
    /// What each policy did when last seen, for sessions whose policy a
    /// reload removed: they are enforced as their policy last said.
    known: std::sync::Mutex<HashMap<String, PolicyAction>>,
    /// Which buckets this instance may send for.
    lead: Leadership,
    /// The database's clock against ours: a deadline is waited for by both.
    offset: ClockOffset,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Enforcer {
    pub fn new(
        store: Store,
        clock: Clock,
        providers: HashMap<String, ProviderSlot>,
        live: Live,
        lead: Leadership,
        offset: ClockOffset,
        shutdown: CancellationToken,
    ) -> Enforcer {
        let known = std::sync::Mutex::new(policy_actions(&live.current()));
        Enforcer {
            state: Arc::new(EnforcerState {
                attempts: store.attempt_writer(),
                store,
                clock,
                providers,
                live,
                known,
                lead,
                offset,
                tasks: TaskTracker::new(),
                shutdown,
            }),
        }
    }

    /// What each policy does now, and what removed ones did last.
    fn actions(&self) -> HashMap<String, PolicyAction> {
        let current = policy_actions(&self.state.live.current());
        let mut known = self.state.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        known.extend(current);
        known.clone()
    }

    /// Takes claimed sessions until the scheduler hangs up, then waits up to
    /// `grace` for calls under way to finish and be recorded.
    pub async fn run(self, mut claims: mpsc::UnboundedReceiver<Claimed>, grace: Duration) {
        while let Some(claimed) = claims.recv().await {
            self.dispatch(claimed).await;
        }
        self.state.tasks.close();
        if tokio::time::timeout(grace, self.state.tasks.wait()).await.is_err() {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "enforcement calls still under way at shutdown; they will be retried after restart"
            );
        }
    }

    async fn dispatch(&self, claimed: Claimed) {
        let Claimed { sessions, mut permit } = claimed;
        for (key, group) in group_sessions(sessions, &self.actions()) {
            let JobKey { provider, action, room, shadow } = key;
            let chunk_size = if action.targets_user() {
                self.state.providers.get(&provider).map_or(1, |p| p.provider.max_users_per_call())
            } else {
                // Every session of a room or call ends with one dismissal.
                usize::MAX
            };
            for chunk in group.chunks(chunk_size.max(1)) {
                let Some(job_permit) = permit.split(chunk.len()) else {
                    // Cannot happen: the scheduler claims no more than it holds permits for.
                    tracing::error!("enforcement permits ran short; sessions stay enforcing until restart");
                    return;
                };
                let mut users: Vec<_> = chunk.iter().filter_map(|s| s.user.clone()).collect();
                users.sort();
                users.dedup();
                let target = Target { action, room: room.clone(), users };
                // Queued now, in claim order, so that a call due later cannot
                // overtake this one while it records its attempt or wakes.
                let place = self.state.providers.get(&provider).filter(|_| !shadow).and_then(|slot| {
                    let api_action = slot.provider.api_action(action, &room)?;
                    let latest = chunk.iter().map(|s| s.deadline).max()?;
                    Some(slot.pacers.get(api_action)?.queue(latest))
                });
                let job = Job {
                    provider: provider.clone(),
                    target,
                    sessions: chunk.to_vec(),
                    shadow,
                    place,
                    _permit: job_permit,
                };
                let state = Arc::clone(&self.state);
                let ids: Vec<_> = job.sessions.iter().map(|s| s.id).collect();
                let term = job.term();
                let job_state = Arc::clone(&state);
                self.state.tasks.spawn(state.supervise(
                    term,
                    ids,
                    async move { job_state.enforce(job).await },
                ));
            }
        }
    }
}

impl Job {
    /// The term its sessions were claimed under: one claim, one bucket.
    fn term(&self) -> i64 {
        self.sessions.first().map_or(SOLE_TERM, |s| s.term)
    }
}

/// What one provider call settles: a provider, an action, a room, and
/// whether the policy is in shadow mode (a shadow session never shares a
/// call with a real one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct JobKey {
    provider: String,
    action: Action,
    room: Room,
    shadow: bool,
}

/// Groups sessions that one provider call can settle, keeping deadline order
/// (of each group's first session) so the most overdue go out first.
fn group_sessions(
    sessions: Vec<Session>,
    actions: &HashMap<String, PolicyAction>,
) -> Vec<(JobKey, Vec<Session>)> {
    let mut groups: Vec<(JobKey, Vec<Session>)> = Vec::new();
    let mut index: HashMap<JobKey, usize> = HashMap::new();
    for s in sessions {
        // A session whose policy left the configuration is enforced as what
        // its shape says: a participant's removal, or the room's end.
        let fallback = match (&s.room, s.user.is_some()) {
            (Room::Call(_), true) => Action::RemoveParticipant,
            (Room::Call(_), false) => Action::TerminateCall,
            (_, true) => Action::RemoveUser,
            (_, false) => Action::DismissRoom,
        };
        let PolicyAction { action, shadow } =
            actions.get(&s.policy).copied().unwrap_or(PolicyAction { action: fallback, shadow: false });
        // A removal without a participant cannot be enforced as such; enforce
        // what it can mean: the room. And a participant's session only ever
        // removes that participant, even if a reload made its policy end
        // whole rooms: one user's deadline must not end everyone's call.
        let action = match (action.targets_user(), s.user.is_some()) {
            (true, false) => action.whole_room(),
            (false, true) => fallback,
            _ => action,
        };
        let key = JobKey { provider: s.provider.clone(), action, room: s.room.clone(), shadow };
        match index.get(&key) {
            Some(&i) => groups[i].1.push(s),
            None => {
                index.insert(key.clone(), groups.len());
                groups.push((key, vec![s]));
            }
        }
    }
    groups
}

impl EnforcerState {
    async fn enforce(&self, mut job: Job) {
        let ids: Vec<_> = job.sessions.iter().map(|s| s.id).collect();
        let term = job.term();
        let slot = self.providers.get(&job.provider);
        let api_action = slot.and_then(|slot| slot.provider.api_action(job.target.action, &job.target.room));
        let (Some(slot), Some(api_action)) = (slot, api_action) else {
            let reason = match slot {
                None => format!("provider {:?} is not in the configuration", job.provider),
                Some(slot) => format!(
                    "provider {:?} ({}) cannot {} on room {}",
                    job.provider,
                    slot.provider.kind(),
                    job.target.action.as_str(),
                    job.target.room
                ),
            };
            tracing::error!(provider = %job.provider, "{reason}; sessions marked failed");
            let entries: Vec<_> =
                ids.iter().map(|id| AuditEntry::new("failed", *id).detail(reason.clone())).collect();
            self.persist(|| {
                self.store.record_outcome_as(
                    term,
                    &entries,
                    Some((SessionState::Failed, Some(&reason))),
                    self.clock.now(),
                )
            })
            .await;
            return;
        };
        if self.settle_if_unwanted(&job, api_action, true).await {
            return;
        }
        if job.shadow {
            self.shadow(&job, api_action).await;
            return;
        }
        let pacer = Arc::clone(&slot.pacers[api_action]);
        let previous_attempts = job.sessions.iter().map(|s| s.attempts).max().unwrap_or(0);
        // Sessions are claimed a little ahead; the call waits for the last
        // deadline of the sessions it settles.
        let latest_deadline =
            job.sessions.iter().map(|s| s.deadline).max().unwrap_or(Instant::from_millis(0));
        // One logical request for the whole enforcement: the leader's stored
        // repeatability pair if an earlier run chose one, else a new pair,
        // stored before anything is sent.
        let mut repeatability = job.sessions.first().and_then(|s| s.repeatability);
        let mut ctx = CallContext {
            operation_context: job.sessions.first().map(|s| s.id.to_string()).unwrap_or_default(),
            repeatability: None,
        };

        for try_no in 1..=slot.retry.max_attempts {
            let attempt = previous_attempts + try_no;
            // A new pair is stored with the attempt record, one commit.
            let mut new_pair = None;
            if slot.provider.uses_repeatability() {
                // An id first sent longer ago than ACS remembers is renewed.
                let r = match repeatability.filter(|r| !r.expired(self.clock.now_datetime())) {
                    Some(r) => r,
                    None => {
                        let r = Repeatability::new(self.clock.now_datetime());
                        new_pair = Some(r);
                        r
                    }
                };
                repeatability = Some(r);
                ctx.repeatability = Some(r);
            }
            let attempt_entry = AuditEntry {
                event: "attempt",
                provider: Some(job.provider.clone()),
                action: Some(api_action.to_string()),
                attempt: Some(attempt),
                provider_request_id: ctx.repeatability.map(|r| r.request_id.to_string()),
                detail: (!job.target.users.is_empty()).then(|| {
                    let users: Vec<&str> = job.target.users.iter().map(|u| u.as_str()).collect();
                    format!("room {} users {}", job.target.room, users.join(","))
                }),
                ..AuditEntry::default()
            };
            if !self
                .persist(|| {
                    self.attempts.record(Attempt {
                        term,
                        ids: ids.clone(),
                        entry: attempt_entry.clone(),
                        repeatability: new_pair,
                        now: self.clock.now(),
                    })
                })
                .await
            {
                return;
            }
            tokio::select! {
                () = self.wait_for_deadline(latest_deadline) => {}
                () = self.shutdown.cancelled() => {
                    self.release(term, &ids, true, "stopped before the deadline; the attempt was not sent").await;
                    return;
                }
            }
            slot.sending_under(term);
            let queued = std::time::Instant::now();
            // A retry queues again, behind what is due before its deadline.
            let mut place = job.place.take().unwrap_or_else(|| pacer.queue(latest_deadline));
            tokio::select! {
                () = place.admit() => {
                    drop(place);
                    crate::metrics::rate_limit_wait(&job.provider, api_action, queued.elapsed());
                }
                () = self.shutdown.cancelled() => {
                    self.release(term, &ids, true, "stopped while waiting for the rate limit; the attempt was not sent").await;
                    return;
                }
            }
            // A long backlog can make a call stale while it waits its turn.
            if try_no == 1 && self.settle_if_unwanted(&job, api_action, false).await {
                return;
            }
            // The last moment to find out that this instance no longer
            // leads the bucket (paused, cut off from the database): then
            // nothing is sent, and the rows are the next leader's.
            if !self.lead.trusts(&job.provider, term) {
                tracing::warn!(
                    provider = %job.provider, room = %job.target.room, sessions = ids.len(), term,
                    "not sent: this instance no longer trusts its lease on the bucket; the next leader resumes it"
                );
                return;
            }
            let sent_at = self.clock.now();
            let report = slot.provider.call(&job.target, &ctx).await;
            let last_try = try_no == slot.retry.max_attempts;
            let (event, final_state) = answer_outcome(
                &report.classified,
                last_try,
                attempt,
                slot.provider.confirms_later(job.target.action),
            );
            let entries: Vec<_> = job
                .sessions
                .iter()
                .map(|s| outcome_entry(s, &job.provider, api_action, attempt, &report, sent_at, event))
                .collect();
            let lateness_ms = job.sessions.first().map_or(0, |s| sent_at.millis_since(s.deadline));
            crate::metrics::provider_answer(
                &job.provider,
                api_action,
                report.classified.outcome(),
                report.latency,
                lateness_ms,
            );
            let settled = final_state.as_ref().map(|(state, _)| *state);
            let detail = final_state.and_then(|(_, d)| d);
            log_outcome(&job, api_action, attempt, &report, sent_at, event);
            if !self
                .persist(|| {
                    self.store.record_outcome_as(
                        term,
                        &entries,
                        settled.map(|state| (state, detail.as_deref())),
                        self.clock.now(),
                    )
                })
                .await
            {
                return;
            }
            if settled.is_some() {
                return;
            }
            if report.renew_repeatability {
                // The provider's repeatability window passed (a long outage):
                // resend under a new id. Safe, because a participant already
                // removed or a call already ended answers 404.
                repeatability = None;
            }
            let hint = match &report.classified {
                Classified::Retryable { wait, .. } => *wait,
                _ => None,
            };
            let backoff = slot.retry.backoff(try_no, hint, rand::random::<f64>());
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.shutdown.cancelled() => {
                    self.release(term, &ids, false, "stopped while waiting to retry").await;
                    return;
                }
            }
        }
    }

    /// Shadow mode: at the deadline, record what would have been called and
    /// settle the sessions `shadowed`, without calling or using the quota.
    async fn shadow(&self, job: &Job, api_action: &str) {
        let ids: Vec<_> = job.sessions.iter().map(|s| s.id).collect();
        let term = job.term();
        let latest = job.sessions.iter().map(|s| s.deadline).max().unwrap_or(Instant::from_millis(0));
        tokio::select! {
            () = self.wait_for_deadline(latest) => {}
            () = self.shutdown.cancelled() => {
                self.release(term, &ids, false, "stopped before the deadline (shadow mode)").await;
                return;
            }
        }
        let now = self.clock.now();
        let users: Vec<&str> = job.target.users.iter().map(|u| u.as_str()).collect();
        let detail = format!(
            "shadow mode: would have called {api_action} on room {}{}",
            job.target.room,
            if users.is_empty() { String::new() } else { format!(" for {}", users.join(",")) }
        );
        let entries: Vec<_> = job
            .sessions
            .iter()
            .map(|s| AuditEntry {
                session_id: Some(s.id),
                event: "shadow",
                provider: Some(job.provider.clone()),
                action: Some(api_action.to_string()),
                outcome: Some("shadow"),
                detail: Some(detail.clone()),
                lateness_ms: Some(now.millis_since(s.deadline)),
                ..AuditEntry::default()
            })
            .collect();
        crate::metrics::provider_answer(
            &job.provider,
            api_action,
            "shadow",
            Duration::ZERO,
            job.sessions.first().map_or(0, |s| now.millis_since(s.deadline)),
        );
        tracing::info!(provider = %job.provider, action = api_action, room = %job.target.room, "{detail}");
        self.persist(|| {
            self.store.record_outcome_as(term, &entries, Some((SessionState::Shadowed, Some(&detail))), now)
        })
        .await;
    }

    /// Returns once the clock reads `deadline` or later, and the
    /// database's clock too (as last measured) when ours runs ahead of it.
    /// Re-checks after each sleep, so a stepped wall clock cannot make a
    /// call leave early.
    async fn wait_for_deadline(&self, deadline: Instant) {
        loop {
            let until = deadline.saturating_add(self.offset.daemon_ahead());
            if self.clock.now() >= until {
                return;
            }
            self.clock.sleep_until(until).await;
        }
    }
}

/// The audit event for an answer, and the final state it settles the
/// sessions in (`None`: try again).
fn answer_outcome(
    classified: &Classified,
    last_try: bool,
    attempt: u32,
    confirms_later: bool,
) -> (&'static str, Option<(SessionState, Option<String>)>) {
    match classified {
        Classified::Success if confirms_later => ("accepted", Some((SessionState::Accepted, None))),
        Classified::Success => ("enforced", Some((SessionState::Enforced, None))),
        Classified::AlreadyEnded { code, .. } => {
            let detail = if attempt > 1 {
                format!(
                    "{code} after an earlier attempt whose answer was not recorded; that attempt likely ended it"
                )
            } else {
                code.clone()
            };
            ("already_ended", Some((SessionState::AlreadyEnded, Some(detail))))
        }
        Classified::Fatal { code, message } => {
            ("failed", Some((SessionState::Failed, Some(format!("{code}: {message}")))))
        }
        Classified::Retryable { code, message, .. } if last_try => (
            "failed",
            Some((
                SessionState::Failed,
                Some(format!("gave up after attempt {attempt}; last answer {code}: {message}")),
            )),
        ),
        Classified::Retryable { .. } => ("retry", None),
    }
}

fn outcome_entry(
    s: &Session,
    provider: &str,
    api_action: &str,
    attempt: u32,
    report: &CallReport,
    sent_at: Instant,
    event: &'static str,
) -> AuditEntry {
    AuditEntry {
        session_id: Some(s.id),
        event,
        provider: Some(provider.to_string()),
        action: Some(api_action.to_string()),
        attempt: Some(attempt),
        outcome: Some(report.classified.outcome()),
        http_status: report.http_status,
        provider_request_id: report.provider_request_id.clone(),
        error_code: report.classified.code().map(str::to_string),
        detail: report.detail(),
        latency_ms: Some(i64::try_from(report.latency.as_millis()).unwrap_or(i64::MAX)),
        lateness_ms: Some(sent_at.millis_since(s.deadline)),
    }
}

fn log_outcome(
    job: &Job,
    api_action: &str,
    attempt: u32,
    report: &CallReport,
    sent_at: Instant,
    event: &str,
) {
    let sessions: Vec<String> = job.sessions.iter().map(|s| s.id.to_string()).collect();
    let sessions = sessions.join(",");
    let lateness_ms = job.sessions.first().map_or(0, |s| sent_at.millis_since(s.deadline));
    let latency_ms = report.latency.as_millis() as u64;
    let code = report.classified.code().unwrap_or("");
    let message = report.classified.message().unwrap_or("");
    match event {
        "enforced" | "accepted" | "already_ended" => tracing::info!(
            %sessions, provider = %job.provider, action = api_action, room = %job.target.room,
            attempt, lateness_ms, latency_ms, code, "{event}"
        ),
        "retry" => tracing::warn!(
            %sessions, provider = %job.provider, action = api_action, room = %job.target.room,
            attempt, code, message, "provider call failed; will retry"
        ),
        _ => tracing::error!(
            %sessions, provider = %job.provider, action = api_action, room = %job.target.room,
            attempt, code, message, "enforcement failed"
        ),
    }
}

#[cfg(test)]
mod tests;
