//! Leadership: which quota buckets this instance enforces, and whether it
//! may still trust that.
//!
//! On an embedded database (SQLite) the one daemon leads everything
//! ([`Leadership::sole`]); its lock file keeps a second one out. On a
//! database several daemons share (PostgreSQL), each bucket (a provider of
//! the configuration: one leader holds all of its actions' quotas) and the
//! once-per-deployment work ([`MAINTENANCE`]) has a lease row in the
//! database, kept by [`keep_leases`]: taken when free or expired, renewed
//! every [`RENEW_EVERY`] for [`LEASE_TTL`], given up at a clean stop. Lease
//! times are the database server's, so no instance's clock decides who
//! leads.
//!
//! A leader trusts a lease only until [`TRUST_MARGIN`] before it could
//! expire, counted from the start of the renewal that extended it, on this
//! host's monotonic clock (which keeps running while a process is paused):
//! `renewal start + LEASE_TTL − TRUST_MARGIN`. Every provider call checks
//! that trust right before it is sent ([`Leadership::trusts`]); a leader
//! that lost it stops sending at once. Its sessions stay `enforcing` under
//! its term until the next leader (perhaps itself, under a new term) takes
//! the bucket over and re-stamps them (`Store::take_over`), so every write
//! the old leader still tries is fenced off in the database.
//!
//! With TTL 3 s, a round every 0.25 s and a 1 s margin: a leader killed is
//! replaced within the TTL plus one follower round (about 3.3 s); one that
//! stops cleanly gives its leases up and is replaced within one round; and
//! a leader stops sending at least a second (one quota window) before its
//! lease can pass to another, so no second carries both leaders' calls. A
//! renewal survives three failed or slow rounds before trust runs out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as Monotonic};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::domain::lease::{Led, MAINTENANCE};
use crate::skew::ClockOffset;
use crate::store::postgres::LeaseConn;
use crate::store::{Store, StoreError};

/// How long a lease lasts after its last renewal, by the database's clock.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// How often leases are renewed, and free ones asked for (± 20 %).
pub const RENEW_EVERY: Duration = Duration::from_millis(250);
/// How long before a lease could expire its holder stops trusting it.
pub const TRUST_MARGIN: Duration = Duration::from_secs(1);
/// How often a leader takes over, again, what older terms left
/// `enforcing` in its buckets: rows a paused leader held locked when the
/// lease was granted are passed over then, and taken on a later sweep.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long after its deadline a session that no instance leads (its
/// provider is in no running instance's configuration) waits before the
/// maintenance leader fails it: several lease lifetimes, so a bucket
/// between two leaders, or an instance being restarted with a new
/// configuration, is not taken for gone.
pub const UNLED_AFTER: Duration = Duration::from_secs(30);
/// How often the maintenance leader looks for such sessions.
pub const UNLED_SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Most such sessions failed in one transaction.
const UNLED_BATCH: u32 = 256;

/// What this instance leads. Cheap to clone; every clone sees the same.
#[derive(Debug, Clone)]
pub struct Leadership {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The one daemon on its database: leads everything, always.
    sole: bool,
    /// This instance's name in the lease rows.
    holder: String,
    held: Mutex<HashMap<String, Held>>,
    /// Told when a lease is granted, so the scheduler looks at once.
    gained: Arc<Notify>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    term: i64,
    trusted_until: Monotonic,
}

impl Leadership {
    /// The one daemon on an embedded database.
    pub fn sole() -> Leadership {
        Leadership::new(true, instance_id(), Arc::new(Notify::new()))
    }

    /// One of several instances: leads what [`keep_leases`] wins. `gained`
    /// is notified whenever a lease is granted.
    pub fn shared(holder: String, gained: Arc<Notify>) -> Leadership {
        Leadership::new(false, holder, gained)
    }

    fn new(sole: bool, holder: String, gained: Arc<Notify>) -> Leadership {
        Leadership { inner: Arc::new(Inner { sole, holder, held: Mutex::new(HashMap::new()), gained }) }
    }

    /// This instance's name, as the lease rows and the logs show it.
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    /// Whether this is the one daemon on an embedded database.
    pub fn is_sole(&self) -> bool {
        self.inner.sole
    }

    /// What may be claimed now: the buckets whose lease is trusted, each
    /// under its term (everything, for the one daemon).
    pub fn led(&self) -> Led {
        if self.inner.sole {
            return Led::Sole;
        }
        let now = Monotonic::now();
        let mut held: Vec<(String, i64)> = self
            .lock()
            .iter()
            .filter(|(bucket, h)| bucket.as_str() != MAINTENANCE && now < h.trusted_until)
            .map(|(bucket, h)| (bucket.clone(), h.term))
            .collect();
        held.sort();
        Led::Buckets(held)
    }

    /// Whether a call for a session of `bucket` claimed under `term` may be
    /// sent now: the lease is still this instance's under that term, and
    /// trusted by the monotonic clock.
    pub fn trusts(&self, bucket: &str, term: i64) -> bool {
        self.inner.sole
            || self.lock().get(bucket).is_some_and(|h| h.term == term && Monotonic::now() < h.trusted_until)
    }

    /// Whether this instance does the once-per-deployment work now.
    pub fn maintains(&self) -> bool {
        self.inner.sole || self.lock().get(MAINTENANCE).is_some_and(|h| Monotonic::now() < h.trusted_until)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.inner.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn held(&self, bucket: &str) -> Option<Held> {
        self.lock().get(bucket).copied()
    }

    fn set(&self, bucket: &str, held: Option<Held>) {
        let mut map = self.lock();
        let granted = held.is_some_and(|h| map.get(bucket).is_none_or(|old| old.term != h.term));
        match held {
            Some(h) => map.insert(bucket.to_string(), h),
            None => map.remove(bucket),
        };
        drop(map);
        crate::metrics::leading(bucket, held.is_some(), granted);
        if granted {
            self.inner.gained.notify_one();
        }
    }

    /// Stops trusting every lease (a clean stop, before giving them up).
    fn forget_all(&self) {
        let buckets: Vec<String> = self.lock().keys().cloned().collect();
        for bucket in buckets {
            self.set(&bucket, None);
        }
    }

    /// One round over every bucket: renew what is held and trusted, ask
    /// for the rest. An error of the lease connection is returned (the
    /// caller connects again); trust then runs out on its own.
    async fn round(
        &self,
        conn: &mut LeaseConn,
        store: &Store,
        clock: &Clock,
        offset: &ClockOffset,
        buckets: &[String],
    ) -> Result<(), StoreError> {
        let holder = self.holder().to_string();
        for bucket in buckets {
            let started = Monotonic::now();
            let trusted_until = started + LEASE_TTL - TRUST_MARGIN;
            match self.held(bucket) {
                Some(h) if started < h.trusted_until && offset.fit_to_lead() => {
                    if conn.renew(bucket, &holder, h.term, LEASE_TTL).await? {
                        self.set(bucket, Some(Held { term: h.term, trusted_until }));
                    } else {
                        tracing::warn!(bucket = %bucket, term = h.term, "lost the lease: it expired or another instance holds it; stopped enforcing the bucket");
                        self.set(bucket, None);
                    }
                }
                held => {
                    if let Some(h) = held {
                        let why = if offset.fit_to_lead() {
                            "its renewal came too late"
                        } else {
                            "the clock offset to the database is above the bound"
                        };
                        tracing::warn!(bucket = %bucket, term = h.term, "stopped trusting the lease ({why}); stopped enforcing the bucket");
                        self.set(bucket, None);
                    }
                    if !offset.fit_to_lead() {
                        continue;
                    }
                    let Some(term) = conn.acquire(bucket, &holder, LEASE_TTL).await? else { continue };
                    self.take_over(store, clock, bucket, term, trusted_until).await;
                }
            }
        }
        Ok(())
    }

    /// A lease just granted: the bucket's work left under older terms goes
    /// back to the queue under `term` before anything is claimed, then the
    /// lease is trusted.
    async fn take_over(
        &self,
        store: &Store,
        clock: &Clock,
        bucket: &str,
        term: i64,
        trusted_until: Monotonic,
    ) {
        let taken = if bucket == MAINTENANCE {
            Ok(0)
        } else {
            store
                .take_over(
                    bucket,
                    term,
                    clock.now(),
                    "taken over from a leader that stopped or lost its lease; resuming",
                )
                .await
        };
        match taken {
            Ok(resumed) if Monotonic::now() < trusted_until => {
                self.set(bucket, Some(Held { term, trusted_until }));
                tracing::info!(bucket = %bucket, term, resumed, holder = %self.holder(), "leading the bucket");
            }
            // Too slow to trust; the next round takes it afresh.
            Ok(_) => {}
            Err(e) => tracing::warn!(bucket = %bucket, error = %e, "cannot take the bucket over yet"),
        }
    }
}

/// Keeps this instance's leases on `buckets` and [`MAINTENANCE`] until
/// `stop`, then gives them up. Runs on a connection of its own, made again
/// when lost. Refuses to lead while the database's clock is further off
/// than [`crate::skew::REFUSE_TO_LEAD_ABOVE`]. Returns at once on an
/// embedded database.
pub async fn keep_leases(
    lead: Leadership,
    store: Store,
    clock: Clock,
    offset: ClockOffset,
    buckets: Vec<String>,
    stop: CancellationToken,
) {
    let configured = buckets.clone();
    let mut all = buckets;
    all.push(MAINTENANCE.to_string());
    let mut conn: Option<LeaseConn> = None;
    let mut failing = false;
    let mut swept = Monotonic::now();
    let mut sweeping: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut unled_swept = Monotonic::now();
    // A failing lease connection is a failing database step: `/readyz`
    // says so on every instance, leaders and followers alike.
    let mut outage = None;
    loop {
        if conn.is_none() {
            match store.lease_connection().await {
                Ok(None) => return,
                Ok(Some(c)) => conn = Some(c),
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot connect for the leases; trying every round");
                        failing = true;
                    }
                    store.health().failed(&mut outage, "leases", &e);
                }
            }
        }
        if let Some(c) = conn.as_mut() {
            match lead.round(c, &store, &clock, &offset, &all).await {
                Ok(()) => {
                    failing = false;
                    outage = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lost the lease connection; connecting again (leadership lapses if this lasts)");
                    store.health().failed(&mut outage, "leases", &e);
                    conn = None;
                    failing = true;
                }
            }
        }
        if swept.elapsed() >= SWEEP_EVERY {
            swept = Monotonic::now();
            sweep(&lead, &store, &clock, &mut sweeping);
        }
        if unled_swept.elapsed() >= UNLED_SWEEP_EVERY && lead.maintains() {
            unled_swept = Monotonic::now();
            fail_unled(&store, &clock, &configured, &mut sweeping);
        }
        let jitter = RENEW_EVERY.mul_f64(0.8 + 0.4 * rand::random::<f64>());
        tokio::select! {
            () = tokio::time::sleep(jitter) => {}
            () = stop.cancelled() => break,
        }
    }
    lead.forget_all();
    if let Some(mut c) = conn {
        match c.resign(lead.holder()).await {
            Ok(n) => tracing::info!(leases = n, "gave up the leases"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot give up the leases; they expire in {} s", LEASE_TTL.as_secs())
            }
        }
        c.close().await;
    }
}

/// Takes over, in a task of its own per bucket (the lease loop never waits
/// for the pool), what older terms left `enforcing` in the buckets this
/// instance leads; one sweep per bucket at a time.
fn sweep(
    lead: &Leadership,
    store: &Store,
    clock: &Clock,
    sweeping: &mut HashMap<String, tokio::task::JoinHandle<()>>,
) {
    let crate::domain::lease::Led::Buckets(held) = lead.led() else { return };
    sweeping.retain(|_, task| !task.is_finished());
    for (bucket, term) in held {
        if sweeping.contains_key(&bucket) {
            continue;
        }
        let (store, now, name) = (store.clone(), clock.now(), bucket.clone());
        let task = tokio::spawn(async move {
            let why = "taken over from a leader that stopped or lost its lease; resuming";
            match store.take_over(&name, term, now, why).await {
                Ok(0) => {}
                Ok(resumed) => {
                    tracing::info!(bucket = %name, term, resumed, "took over work a previous leader left")
                }
                Err(e) => tracing::debug!(bucket = %name, error = %e, "cannot sweep the bucket yet"),
            }
        });
        sweeping.insert(bucket, task);
    }
}

/// As the maintenance leader: fails, in a task of its own (one at a time),
/// the sessions overdue by [`UNLED_AFTER`] whose provider no running
/// instance has in its configuration, so none would ever claim them (the
/// one daemon of an embedded database fails them at their deadline).
fn fail_unled(
    store: &Store,
    clock: &Clock,
    configured: &[String],
    sweeping: &mut HashMap<String, tokio::task::JoinHandle<()>>,
) {
    sweeping.retain(|_, task| !task.is_finished());
    if sweeping.contains_key(MAINTENANCE) {
        return;
    }
    let (store, now, configured) = (store.clone(), clock.now(), configured.to_vec());
    let task = tokio::spawn(async move {
        let overdue = now.saturating_sub(UNLED_AFTER);
        loop {
            match store.fail_unled(&configured, overdue, now, UNLED_BATCH).await {
                Ok(0) => return,
                Ok(n) => tracing::error!(
                    sessions = n,
                    "failed sessions of a provider that no running instance has in its configuration"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for sessions no instance leads yet");
                    return;
                }
            }
        }
    });
    sweeping.insert(MAINTENANCE.to_string(), task);
}

/// This instance's name in the lease rows: host, process and a random
/// part (a restarted process is a new holder).
pub fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_string());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &random[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sole_daemon_leads_everything_and_a_shared_one_nothing_until_granted() {
        let sole = Leadership::sole();
        assert_eq!(sole.led(), Led::Sole);
        assert!(sole.trusts("trtc", 0) && sole.maintains());

        let shared = Leadership::shared("a".into(), Arc::new(Notify::new()));
        assert_eq!(shared.led(), Led::Buckets(vec![]));
        assert!(!shared.trusts("trtc", 1) && !shared.maintains());
        let later = Monotonic::now() + Duration::from_secs(60);
        shared.set("trtc", Some(Held { term: 4, trusted_until: later }));
        shared.set(MAINTENANCE, Some(Held { term: 5, trusted_until: later }));
        assert_eq!(shared.led(), Led::Buckets(vec![("trtc".into(), 4)]), "maintenance is not a bucket");
        assert!(shared.trusts("trtc", 4) && shared.maintains());
        assert!(!shared.trusts("trtc", 3), "an older term is not trusted");
    }

    #[test]
    fn a_lease_past_its_trust_is_neither_claimed_under_nor_sent_under() {
        let shared = Leadership::shared("a".into(), Arc::new(Notify::new()));
        let past = Monotonic::now() - Duration::from_millis(1);
        shared.set("trtc", Some(Held { term: 4, trusted_until: past }));
        shared.set(MAINTENANCE, Some(Held { term: 5, trusted_until: past }));
        assert_eq!(shared.led(), Led::Buckets(vec![]));
        assert!(!shared.trusts("trtc", 4));
        assert!(!shared.maintains());
    }

    #[test]
    fn a_grant_wakes_whoever_waits_for_one() {
        let gained = Arc::new(Notify::new());
        let shared = Leadership::shared("a".into(), Arc::clone(&gained));
        let later = Monotonic::now() + Duration::from_secs(60);
        shared.set("trtc", Some(Held { term: 1, trusted_until: later }));
        let woken = gained.notified();
        tokio::pin!(woken);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(std::future::Future::poll(woken.as_mut(), &mut cx).is_ready(), "the grant left a permit");
    }
}
