//! The notifier: delivers the outbox (warnings before a deadline, and
//! enforcement outcomes) to the app's `notifications.url`.
//!
//! It runs beside enforcement and shares nothing with it but the database:
//! its own task, its own HTTP client, its own timeouts. A receiver that is
//! slow, down or failing delays only its own notifications.
//!
//! Delivery is at least once: a notification is claimed with a lease, sent,
//! and recorded; a crash in between sends it again after the lease. Each
//! POST carries `Callwarden-Delivery` (the same on every attempt) for the
//! receiver to drop repeats, and `Callwarden-Signature: t=UNIX,v1=HEX`, the
//! HMAC-SHA256 of `"{t}.{body}"` under `notifications.secret`. Failures are
//! retried with exponential backoff up to [`MAX_ATTEMPTS`]; a warning is
//! abandoned once its session stops running or its booked time is over,
//! since it would no longer be true. Deliveries and failures are recorded
//! in the audit log (`notified`, `notification_failed`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Notifications;
use crate::config::live::Live;
use crate::domain::Instant;
use crate::domain::session::SessionRecord;
use crate::store::health::StoreRetry;
use crate::store::{Notification, Store, StoreError};

/// How long a claimed notification stays hidden; a delivery that has not
/// been recorded by then (a crash) is due again.
pub const LEASE: Duration = Duration::from_secs(60);
/// How long the receiver has to answer one delivery.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts before a notification is given up (about 8.5 minutes of retries).
pub const MAX_ATTEMPTS: u32 = 10;
/// The first retry's delay; each next one doubles, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Deliveries under way at once; no more are claimed than can start, so a
/// claimed notification is sent well within its lease.
const CONCURRENCY: usize = 8;
/// The longest the notifier sleeps before looking for new due rows (a
/// registration does not wake it).
const POLL: Duration = Duration::from_millis(200);

pub const SIGNATURE_HEADER: &str = "Callwarden-Signature";
pub const DELIVERY_HEADER: &str = "Callwarden-Delivery";
pub const EVENT_HEADER: &str = "Callwarden-Event";

/// The signature header's value for `body` sent at `unix_seconds`.
pub fn signature(secret: &str, unix_seconds: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={unix_seconds},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The delay before attempt `attempt + 1`, after `attempt` failed.
pub fn backoff(attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
    (FIRST_BACKOFF * factor).min(MAX_BACKOFF)
}

pub struct Notifier {
    store: Store,
    clock: Clock,
    live: Live,
    http: reqwest::Client,
}

impl Notifier {
    pub fn new(store: Store, clock: Clock, live: Live) -> Notifier {
        // A client of its own (its own pool), built like the providers' one;
        // each delivery carries DELIVERY_TIMEOUT.
        Notifier { store, clock, live, http: crate::http_client::http_client() }
    }

    /// Delivers due notifications until `shutdown`. Database errors are
    /// logged and retried; they never reach enforcement.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        let mut retry = StoreRetry::new(this.store.health(), "notifier");
        while !shutdown.is_cancelled() {
            let nap = match this.turn(&slots).await {
                Ok(nap) => {
                    retry.succeeded();
                    nap
                }
                Err(e) => {
                    let wait = retry.failed(&e);
                    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "notifier cannot read the outbox");
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(nap) => {}
                () = shutdown.cancelled() => {}
            }
        }
        // Deliveries under way finish (each within DELIVERY_TIMEOUT).
        let _ = slots.acquire_many(CONCURRENCY as u32).await;
    }

    /// Claims and starts what is due; returns how long to sleep.
    async fn turn(self: &Arc<Self>, slots: &Arc<Semaphore>) -> Result<Duration, StoreError> {
        let config = self.live.current();
        let Some(target) = config.notifications.clone() else {
            return Ok(Duration::from_secs(1));
        };
        let free = slots.available_permits();
        if free == 0 {
            return Ok(Duration::from_millis(20));
        }
        let now = self.clock.now();
        match self.store.next_notification_due().await? {
            Some(due) if due <= now => {}
            Some(due) => return Ok(POLL.min(due.duration_from(now))),
            None => return Ok(POLL),
        }
        let claimed = self.store.claim_notifications(now, LEASE, free as u32).await?;
        // One session's notifications go out in order, one at a time.
        let mut by_session: BTreeMap<String, Vec<Notification>> = BTreeMap::new();
        for n in claimed {
            by_session.entry(n.session_id.clone()).or_default().push(n);
        }
        for (_, list) in by_session {
            let Ok(permit) = Arc::clone(slots).acquire_owned().await else { break };
            let this = Arc::clone(self);
            let target = target.clone();
            tokio::spawn(async move {
                for n in list {
                    if let Err(e) = this.deliver(&target, &n).await {
                        tracing::error!(error = %e, delivery = %n.delivery_id, "cannot record a notification's delivery; it will be sent again");
                    }
                }
                drop(permit);
            });
        }
        Ok(Duration::ZERO)
    }

    async fn deliver(&self, target: &Notifications, n: &Notification) -> Result<(), StoreError> {
        let now = self.clock.now();
        let booked_end = n.session.as_ref().and_then(SessionRecord::booked_end);
        if n.event == "warning" {
            let running = n.session.as_ref().is_some_and(|s| s.state == "active");
            if !running || booked_end.is_none_or(|end| end <= now) {
                crate::metrics::notification(&n.event, "obsolete");
                return self.store.notification_obsolete(n, now).await;
            }
        }
        let body = payload(n, booked_end, now).to_string();
        let sent = self
            .http
            .post(&target.url)
            .timeout(DELIVERY_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature(target.secret.expose(), now.millis() / 1000, body.as_bytes()))
            .header(DELIVERY_HEADER, &n.delivery_id)
            .header(EVENT_HEADER, &n.event)
            .body(body)
            .send()
            .await;
        let error = match sent {
            Ok(r) if r.status().is_success() => {
                crate::metrics::notification(&n.event, "delivered");
                tracing::debug!(delivery = %n.delivery_id, event = %n.event, "notification delivered");
                return self.store.notification_delivered(n, r.status().as_u16(), self.clock.now()).await;
            }
            Ok(r) => format!("the receiver answered HTTP {}", r.status().as_u16()),
            // Without the URL: it is the operator's, and may carry a token.
            Err(e) => format!("cannot deliver: {}", e.without_url()),
        };
        let now = self.clock.now();
        let next = now.saturating_add(backoff(n.attempts));
        let too_late = n.event == "warning" && booked_end.is_none_or(|end| next >= end);
        if n.attempts >= MAX_ATTEMPTS || too_late {
            crate::metrics::notification(&n.event, "failed");
            tracing::warn!(delivery = %n.delivery_id, event = %n.event, attempts = n.attempts, "giving up on a notification: {error}");
            let why = if too_late { format!("{error}; the booked time is over") } else { error };
            self.store.notification_failed(n, &why, now).await
        } else {
            crate::metrics::notification(&n.event, "retry");
            tracing::info!(delivery = %n.delivery_id, event = %n.event, attempt = n.attempts, %next, "notification not delivered; will retry: {error}");
            self.store.notification_retry(n, next, &error, now).await
        }
    }
}

/// The JSON body of a delivery.
fn payload(n: &Notification, booked_end: Option<Instant>, now: Instant) -> serde_json::Value {
    let session = n.session.as_ref().map(|s| {
        json!({
            "id": s.id,
            "policy": s.policy,
            "provider": s.provider,
            "room_id": s.room_id,
            "room_kind": s.room_kind,
            "user_id": s.user_id,
            "started_at": s.started_at,
            "ends_at": booked_end.map(|e| e.to_string()),
            "deadline": s.deadline,
            "grace_ms": s.grace_ms,
            "extended_ms": s.extended_ms,
            "state": s.state,
        })
    });
    let mut body = json!({
        "delivery_id": n.delivery_id,
        "event": n.event,
        "attempt": n.attempts,
        "sent_at": now.to_string(),
        "session_id": n.session_id,
        "session": session,
    });
    if n.event == "warning" {
        body["warn_before_ms"] = json!(n.warn_before_ms);
        body["remaining_ms"] = json!(booked_end.map(|e| e.millis() - now.millis()));
    } else {
        body["detail"] = json!(n.detail);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_time_and_body() {
        let a = signature("k", 1_700_000_000, b"{}");
        assert!(a.starts_with("t=1700000000,v1="));
        assert_eq!(a.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(a, signature("k", 1_700_000_001, b"{}"));
        assert_ne!(a, signature("k", 1_700_000_000, b"{ }"));
        assert_ne!(a, signature("j", 1_700_000_000, b"{}"));
        // Known answer, from Python: hmac.new(b"key", b"1.x", hashlib.sha256).hexdigest()
        assert_eq!(
            signature("key", 1, b"x"),
            "t=1,v1=fc4913c41a7bf793267e2a384f3261c9436ec2cd097bd745e7b0d99113f510ec"
        );
    }

    #[test]
    fn retries_back_off_exponentially_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(30), MAX_BACKOFF);
        let total: Duration = (1..MAX_ATTEMPTS).map(backoff).sum();
        assert_eq!(total, Duration::from_secs(511), "1 + 2 + 4 + ... + 256 seconds");
    }
}
