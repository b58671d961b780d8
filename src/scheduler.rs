//! The scheduler: owns "what is due next".
//!
//! It keeps no list of sessions. Each turn it asks the store for the earliest
//! deadline (one lookup in the `sessions_due` index), sleeps until then or
//! until the database changes, and claims what is due, most overdue first, in
//! batches no larger than enforcement has room for. Memory does not grow with
//! the number of sessions waiting.
//!
//! It also adopts rows that another program inserted with plain SQL: fills in
//! the provider and, if missing, the deadline from the policy, or rejects the
//! row with the reason.
//!
//! With several instances on one database, it claims only the sessions of
//! the buckets this instance leads ([`Leadership::led`]), under their
//! terms, and adopts only while it holds the maintenance lease.
//!
//! Sessions are claimed [`CLAIM_LEAD`] before their deadline (more while the
//! database's write lock is contended: [`claim_lead`]), so that the claim
//! and the attempt record are committed by the time the deadline comes;
//! enforcement then holds each call until its deadline has passed by the
//! injected clock. Invariant: no provider call leaves before its deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::config::live::Live;
use crate::domain::lease::Led;
use crate::domain::session::{Adopted, Session, SessionRecord};
use crate::domain::{Instant, UserId};
use crate::lead::Leadership;
use crate::policy::adoption::adoption;
use crate::store::health::StoreRetry;
use crate::store::lock_waits::Recent;
use crate::store::{ChangeWatcher, Store, StoreError};

/// How long before its deadline a session is claimed, at least. Covers the
/// database work between claiming and sending (two synced commits), with
/// room for a slow or stalled disk, so the call still leaves on time; calls
/// are held until their deadline anyway. With [`CLAIM_WINDOW`], a session is
/// claimed up to 300 ms early, and a CLI or API `end` in that time is
/// refused as already enforcing. While writes wait long for the database's
/// lock, the lead grows (see [`claim_lead`]).
pub const CLAIM_LEAD: Duration = Duration::from_millis(200);
/// The longest lead [`claim_lead`] takes.
pub const MAX_CLAIM_LEAD: Duration = Duration::from_secs(2);
/// When the scheduler wakes to claim, it also takes what falls due within
/// this much more, so a steady stream of deadlines is claimed in batches
/// rather than one commit per deadline.
pub const CLAIM_WINDOW: Duration = Duration::from_millis(100);
/// Most sessions claimed in one statement: as many as enforcement can hold,
/// so a scheduler that fell behind (a long disk stall) catches up in a few
/// claims rather than many small ones.
pub const CLAIM_BATCH: u32 = 1024;
/// Most plain-SQL rows adopted in one turn (one transaction): a bulk insert
/// of any size is adopted in slices of a few milliseconds of writer time,
/// between which the scheduler claims what is due.
pub const ADOPT_BATCH: u32 = 256;
/// The shortest and the longest an adoption slice waits for the write lock
/// (see [`Scheduler::turn`]): a slice close to a claim tries at least once,
/// and one with nothing due waits as long as any other write would.
pub const ADOPT_PATIENCE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(5));
/// With several instances on one database, the longest the scheduler
/// sleeps without looking at the queue again: the safety net under the
/// database's change notifications.
pub const SHARED_POLL: Duration = Duration::from_secs(1);
/// How often another connection's commits are looked for.
pub const CHANGE_POLL: Duration = Duration::from_millis(50);

/// The lead while another connection holds the write lock now and then
/// (a bulk import, a CLI), whatever the waits measured: a wait shows only
/// what was left of the other transaction when the write came, so the
/// first waits of a bulk insert can be short while the next are a whole
/// transaction or two. Enough for the claim and the attempt record to each
/// wait two transactions of about 150 ms.
pub const CONTENDED_CLAIM_LEAD: Duration = Duration::from_millis(600);

/// How long before its deadline a session is claimed, given the recent
/// waits for the database's write lock: [`CLAIM_LEAD`]; at least
/// [`CONTENDED_CLAIM_LEAD`] while another connection holds the lock at
/// times; three of the longest recent waits when that is longer (the claim
/// and the attempt record each may wait once, and one more for margin); up
/// to [`MAX_CLAIM_LEAD`]. Another program that inserts rows in a tight loop
/// (a bulk import) makes each of the daemon's writes wait up to one of its
/// transactions, or two when its next one starts first; claiming earlier
/// keeps the calls on time, and they are still held until their deadline.
pub fn claim_lead(recent: Recent) -> Duration {
    let floor = if recent.contended { CONTENDED_CLAIM_LEAD } else { CLAIM_LEAD };
    recent.longest.saturating_mul(3).clamp(floor, MAX_CLAIM_LEAD)
}

/// Sessions the scheduler claimed, with the in-flight permits they hold.
#[derive(Debug)]
pub struct Claimed {
    pub sessions: Vec<Session>,
    pub permit: OwnedSemaphorePermit,
}

pub struct Scheduler {
    store: Store,
    clock: Clock,
    config: Live,
    /// Sessions claimed and not yet settled; the scheduler claims only as many
    /// as it can take permits for.
    capacity: Arc<Semaphore>,
    changed: Arc<Notify>,
    out: mpsc::UnboundedSender<Claimed>,
    lead: Leadership,
}

impl Scheduler {
    pub fn new(
        store: Store,
        clock: Clock,
        config: impl Into<Live>,
        capacity: Arc<Semaphore>,
        changed: Arc<Notify>,
        out: mpsc::UnboundedSender<Claimed>,
    ) -> Scheduler {
        Scheduler { store, clock, config: config.into(), capacity, changed, out, lead: Leadership::sole() }
    }

    /// Claims and adopts as `lead` allows (the one daemon leads everything).
    pub fn led_by(mut self, lead: Leadership) -> Scheduler {
        self.lead = lead;
        self
    }

    /// Runs until `shutdown`. Database errors are logged and retried: a locked
    /// or full database delays enforcement, it does not stop the daemon.
    /// With systemd's watchdog on, each turn pings it and no turn sleeps
    /// past the next ping, so the pings stop exactly when the loop does.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut retry = StoreRetry::new(self.store.health(), "scheduler");
        let watchdog = crate::systemd::watchdog_interval();
        while !shutdown.is_cancelled() {
            if watchdog.is_some() {
                crate::systemd::watchdog();
            }
            match self.turn(&shutdown, watchdog).await {
                Ok(()) => retry.succeeded(),
                Err(e) => {
                    let wait = retry.failed(&e);
                    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "scheduler cannot read the queue");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            }
        }
    }

    /// One step: claim what is due, adopt a slice of new rows, and sleep if
    /// there was neither (at most `max_sleep`, so the watchdog hears from
    /// the loop in time). Claims go first: under a bulk insert each write
    /// waits for the lock, and a due session must not wait behind a slice
    /// of adoption too. Only a sleep is ever cut short, never a database
    /// step.
    async fn turn(
        &self,
        shutdown: &CancellationToken,
        max_sleep: Option<Duration>,
    ) -> Result<(), StoreError> {
        let nap = || async move {
            match max_sleep {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let led = self.lead.led();
        let lead = claim_lead(self.store.lock_waits().recent());
        let next = self.store.next_deadline_for(&led).await?;
        let now = self.clock.now();
        let due = next.is_some_and(|deadline| deadline <= now.saturating_add(lead));
        // Adoption waits for the write lock only until the next claim is
        // due, so that a claim never waits behind a slice of adoption.
        let patience = match next {
            _ if due => {
                self.claim(&led, now.saturating_add(lead + CLAIM_WINDOW), shutdown, nap()).await?;
                // The claim met another program on the lock and the lead
                // grew: what the longer lead makes due is claimed first.
                if claim_lead(self.store.lock_waits().recent()) > lead {
                    return Ok(());
                }
                // Nothing more falls due within the window just claimed.
                CLAIM_WINDOW
            }
            Some(deadline) => Duration::from_millis(
                u64::try_from(deadline.saturating_sub(lead).millis_since(now)).unwrap_or(0),
            ),
            None => ADOPT_PATIENCE.1,
        };
        // Adoption is done once per deployment: by the maintenance leader.
        let more_to_adopt = self.lead.maintains()
            && self.adopt_new_rows(patience.clamp(ADOPT_PATIENCE.0, ADOPT_PATIENCE.1)).await?;
        if due || more_to_adopt {
            return Ok(());
        }
        let wake = async {
            match next {
                Some(deadline) => self.clock.sleep_until(deadline.saturating_sub(lead)).await,
                None => std::future::pending().await,
            }
        };
        // Sharing the database: a leadership that lapsed or a notification
        // lost with the listener's connection is noticed within a poll.
        let poll = async {
            match self.lead.is_sole() {
                true => std::future::pending().await,
                false => tokio::time::sleep(SHARED_POLL).await,
            }
        };
        tokio::select! {
            () = wake => {}
            () = self.changed.notified() => {}
            () = shutdown.cancelled() => {}
            () = nap() => {}
            () = poll => {}
        }
        Ok(())
    }

    /// Claims sessions of what `led` covers due by `horizon`.
    async fn claim(
        &self,
        led: &Led,
        horizon: Instant,
        shutdown: &CancellationToken,
        nap: impl std::future::Future<Output = ()>,
    ) -> Result<(), StoreError> {
        // Waiting for room in enforcement (a long backlog, a provider outage)
        // is a healthy wait: give the loop back for the watchdog meanwhile.
        let first = tokio::select! {
            permit = Arc::clone(&self.capacity).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return Ok(()),
            },
            () = shutdown.cancelled() => return Ok(()),
            () = nap => return Ok(()),
        };
        let mut permit = first;
        let more = (self.capacity.available_permits() as u32).min(CLAIM_BATCH - 1);
        if more > 0
            && let Ok(extra) = Arc::clone(&self.capacity).try_acquire_many_owned(more)
        {
            permit.merge(extra);
        }
        let claimed =
            self.store.claim_for(led, horizon, self.clock.now(), permit.num_permits() as u32).await?;
        let mut sessions = Vec::with_capacity(claimed.len());
        let mut unreadable = Vec::new();
        for result in claimed {
            match result {
                Ok(s) => sessions.push(s),
                Err(bad) => unreadable.push(bad),
            }
        }
        // The readable sessions go to enforcement first: whatever happens to
        // the bad rows, the good ones of the batch are never stranded.
        if !sessions.is_empty() {
            match permit.split(sessions.len()) {
                Some(permit) => {
                    if self.out.send(Claimed { sessions, permit }).is_err() {
                        // Enforcement has stopped (shutdown); the claimed
                        // sessions are re-queued at the next start.
                        tracing::warn!("enforcement is gone; claimed sessions wait for the next start");
                    }
                }
                None => {
                    tracing::error!("claimed more sessions than permits held; they wait for the next start")
                }
            }
        }
        for (id, reason) in unreadable {
            tracing::error!(session = %id, %reason, "malformed session row; marked failed");
            // If this fails, the row stays `enforcing` and is failed again
            // after the next start's re-queue; nothing else waits on it.
            self.store.reject(&id, &reason, self.clock.now()).await?;
        }
        Ok(())
    }

    /// Adopts one slice (up to [`ADOPT_BATCH`]) of the rows another program
    /// inserted, in one transaction, if the write lock comes within
    /// `patience`; returns whether there may be more. A row the daemon
    /// cannot read (a BLOB where text belongs, text in a number column) or
    /// cannot schedule is failed on its own, with the reason.
    async fn adopt_new_rows(&self, patience: Duration) -> Result<bool, StoreError> {
        let rows = self.store.unadopted(ADOPT_BATCH).await?;
        if rows.is_empty() {
            return Ok(false);
        }
        let full = rows.len() as u32 == ADOPT_BATCH;
        let now = self.clock.now();
        let config = self.config.current();
        let mut adopted = Vec::with_capacity(rows.len());
        let mut rejected = Vec::new();
        for row in rows {
            let row = match row {
                Ok(row) => row,
                Err((id, reason)) => {
                    tracing::warn!(session = %id, %reason, "refused a session inserted with SQL");
                    rejected.push((id, reason));
                    continue;
                }
            };
            match adoption(&config, &row) {
                Ok(mut a) => {
                    self.clip_to_budget(&config, &row, &mut a, now).await?;
                    tracing::debug!(session = %row.id, deadline = %a.deadline, "adopting a session inserted with SQL");
                    adopted.push(a);
                }
                Err(reason) => {
                    tracing::warn!(session = %row.id, %reason, "refused a session inserted with SQL");
                    rejected.push((row.id, reason));
                }
            }
        }
        match self.store.adopt_batch(&adopted, &rejected, now, patience).await? {
            // The lock stayed taken: the slice is tried again next turn.
            None => Ok(true),
            Some(n) => {
                if n > 0 {
                    tracing::info!(sessions = n, "adopted sessions inserted with SQL");
                }
                Ok(full)
            }
        }
    }
}

impl Scheduler {
    /// A plain-SQL row of a budgeted policy that left its deadline to the
    /// policy gets no more than the user's budget has left, as a session
    /// registered through the API would.
    async fn clip_to_budget(
        &self,
        config: &Config,
        r: &SessionRecord,
        a: &mut Adopted,
        now: Instant,
    ) -> Result<(), StoreError> {
        let (Some(policy), Some(user), None) = (config.policy(&r.policy), &r.user_id, &r.deadline) else {
            return Ok(());
        };
        let (Some(budget), Ok(user)) = (policy.budget, UserId::parse(user)) else {
            return Ok(());
        };
        let Ok(started) = Instant::parse(&r.started_at) else {
            return Ok(());
        };
        let standing = self.store.budget_standing(&policy.name, budget, config.time_zone, &user, now).await?;
        let (limit, _) = crate::policy::clip_to_budget(policy, policy.max_duration, Some(&standing));
        a.deadline = started.saturating_add(limit).saturating_add(a.grace);
        Ok(())
    }
}

/// Polls `PRAGMA data_version` and wakes the scheduler when anything
/// committed: the CLI, another program's SQL, or this daemon's own writes.
///
/// Take the [`ChangeWatcher`] before the scheduler's first turn: its starting
/// version is the baseline, so a row inserted while the scheduler starts is
/// seen as a change rather than folded into the baseline and missed.
pub async fn watch_changes(mut watcher: ChangeWatcher, changed: Arc<Notify>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(CHANGE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match watcher.changed().await {
            Ok(true) => changed.notify_one(),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the database's change counter"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claim_lead_grows_with_recent_lock_waits_within_bounds() {
        let ms = Duration::from_millis;
        let quiet = |longest| claim_lead(Recent { longest, contended: false });
        assert_eq!(quiet(Duration::ZERO), CLAIM_LEAD);
        assert_eq!(quiet(ms(50)), CLAIM_LEAD, "three short waits fit in the usual lead");
        assert_eq!(quiet(ms(120)), ms(360));
        assert_eq!(quiet(Duration::from_secs(5)), MAX_CLAIM_LEAD);
        assert_eq!(quiet(Duration::MAX), MAX_CLAIM_LEAD);
    }

    #[test]
    fn another_writer_on_the_lock_raises_the_lead_even_when_its_waits_were_short() {
        let ms = Duration::from_millis;
        let contended = |longest| claim_lead(Recent { longest, contended: true });
        assert_eq!(contended(ms(3)), CONTENDED_CLAIM_LEAD);
        assert_eq!(contended(ms(280)), ms(840));
        assert_eq!(contended(Duration::MAX), MAX_CLAIM_LEAD);
    }
}
