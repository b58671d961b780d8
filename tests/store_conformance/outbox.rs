//! The notification outbox: warnings armed with their session (and moved by
//! an extension), claimed under a lease in due order, and settled as
//! delivered, failed, obsolete or retried, each settlement audited once.

use std::time::Duration;

use callwarden::domain::Instant;
use callwarden::domain::SessionState;
use callwarden::domain::audit::AuditEntry;
use callwarden::domain::session::NewSession;
use callwarden::store::{Notification, Store};

use super::support::*;

const LEASE: Duration = Duration::from_secs(30);

/// A session due at `at(30)` with two minutes' grace (its booked time ends
/// at `at(28)`), warned `warn_before` ahead of that.
fn warned(room: u32, warn_before: &[u64]) -> NewSession {
    NewSession {
        grace: mins(2),
        warn_before: warn_before.iter().map(|m| mins(*m)).collect(),
        ..session(room, at(30))
    }
}

async fn claim(store: &Store, now: Instant, limit: u32) -> Vec<Notification> {
    store.claim_notifications(now, LEASE, limit).await.unwrap()
}

async fn claim_one(store: &Store, now: Instant) -> Notification {
    let mut got = claim(store, now, 10).await;
    assert_eq!(got.len(), 1, "{got:?}");
    got.remove(0)
}

fn plus_ms(t: Instant, ms: i64) -> Instant {
    Instant::from_millis(t.millis() + ms)
}

conformance! {
    async fn warnings_are_armed_at_registration_and_fall_due_before_the_booked_end(db) {
        // 40 minutes before the booked end is already past: not armed.
        let s = register(&db.store, vec![warned(1, &[5, 1, 40])], at(0)).await.remove(0);
        assert_eq!(db.store.next_notification_due().await.unwrap(), Some(at(23)));
        assert!(claim(&db.store, plus_ms(at(23), -1), 10).await.is_empty());
        let n = claim_one(&db.store, at(23)).await;
        assert_eq!((n.event.as_str(), n.warn_before_ms, n.detail.as_deref(), n.attempts), ("warning", Some(300_000), None, 1));
        assert_eq!(n.session_id, s.id.to_string());
        let about = n.session.as_ref().unwrap();
        assert_eq!((about.id.clone(), about.state.as_str()), (s.id.to_string(), "active"));
        db.store.notification_delivered(&n, 200, at(23)).await.unwrap();
        assert_eq!(db.store.next_notification_due().await.unwrap(), Some(at(27)));
        assert_eq!(claim_one(&db.store, at(27)).await.warn_before_ms, Some(60_000));
    }

    async fn claim_notifications_takes_the_earliest_due_first_up_to_the_limit(db) {
        register(&db.store, vec![warned(1, &[1, 10, 5])], at(0)).await;
        let first = claim(&db.store, at(28), 2).await;
        assert_eq!(first.iter().map(|n| n.warn_before_ms).collect::<Vec<_>>(), [Some(600_000), Some(300_000)]);
        let rest = claim(&db.store, at(28), 2).await;
        assert_eq!(rest.iter().map(|n| n.warn_before_ms).collect::<Vec<_>>(), [Some(60_000)]);
        let ids: std::collections::HashSet<_> = first.iter().chain(&rest).map(|n| n.delivery_id.clone()).collect();
        assert_eq!(ids.len(), 3, "each has its own delivery id");
    }

    async fn notifications_are_claimed_under_a_lease(db) {
        register(&db.store, vec![warned(1, &[5])], at(0)).await;
        let n = claim_one(&db.store, at(23)).await;
        assert!(claim(&db.store, at(23), 10).await.is_empty(), "hidden while leased");
        let lease_end = at(23).saturating_add(LEASE);
        assert_eq!(db.store.next_notification_due().await.unwrap(), Some(lease_end));
        assert!(claim(&db.store, plus_ms(lease_end, -1), 10).await.is_empty());
        // Never acknowledged (a crash mid-delivery): due again, same delivery id.
        let again = claim_one(&db.store, lease_end).await;
        assert_eq!((again.id, again.delivery_id.clone(), again.attempts), (n.id, n.delivery_id.clone(), 2));
    }

    async fn a_delivered_notification_is_settled_and_audited_once(db) {
        let s = register(&db.store, vec![warned(1, &[5])], at(0)).await.remove(0);
        let n = claim_one(&db.store, at(23)).await;
        db.store.notification_delivered(&n, 204, at(24)).await.unwrap();
        assert_eq!(db.store.next_notification_due().await.unwrap(), None);
        let audit = audit_of(&db.store, s.id).await;
        let last = audit.last().unwrap();
        assert_eq!((last.event.as_str(), last.http_status, last.attempt), ("notified", Some(204), Some(1)));
        assert_eq!(last.detail, Some(format!("warning 5m before the deadline; delivery {}; attempt 1", n.delivery_id)));
        assert_eq!(last.at, at(24).to_string());

        // Settled: later reports about it change nothing.
        db.store.notification_delivered(&n, 200, at(25)).await.unwrap();
        db.store.notification_failed(&n, "late", at(25)).await.unwrap();
        db.store.notification_retry(&n, at(26), "late", at(25)).await.unwrap();
        assert_eq!(events_of(&db.store, s.id).await, ["registered", "notified"]);
        assert_eq!(db.store.next_notification_due().await.unwrap(), None);
    }

    async fn a_failed_notification_is_given_up_and_audited(db) {
        db.store.set_outcome_notifications(true).await.unwrap();
        let s = register(&db.store, vec![session(1, at(1))], at(0)).await.remove(0);
        assert_eq!(db.store.claim_due(at(1), at(1), 10).await.unwrap().len(), 1);
        db.store.record_outcome(&[AuditEntry::new("enforced", s.id)], Some((SessionState::Enforced, None)), at(2)).await.unwrap();
        let n = claim_one(&db.store, at(2)).await;
        db.store.notification_failed(&n, "HTTP 500", at(3)).await.unwrap();
        let last = audit_of(&db.store, s.id).await.pop().unwrap();
        assert_eq!((last.event.as_str(), last.http_status, last.attempt), ("notification_failed", None, Some(1)));
        assert_eq!(last.detail, Some(format!("enforced event; delivery {}; gave up after 1 attempts: HTTP 500", n.delivery_id)));
        assert!(claim(&db.store, at(60), 10).await.is_empty());
        assert_eq!(db.store.next_notification_due().await.unwrap(), None);
    }

    async fn a_retried_notification_falls_due_at_the_retry_time(db) {
        let s = register(&db.store, vec![warned(1, &[5])], at(0)).await.remove(0);
        let n = claim_one(&db.store, at(23)).await;
        db.store.notification_retry(&n, at(26), "connection refused", at(23)).await.unwrap();
        assert_eq!(db.store.next_notification_due().await.unwrap(), Some(at(26)));
        assert!(claim(&db.store, plus_ms(at(26), -1), 10).await.is_empty());
        let again = claim_one(&db.store, at(26)).await;
        assert_eq!((again.delivery_id, again.attempts), (n.delivery_id, 2));
        assert_eq!(events_of(&db.store, s.id).await, ["registered"], "a retry is not audited");
    }

    async fn an_obsolete_notification_is_dropped_without_an_audit_row(db) {
        let s = register(&db.store, vec![warned(1, &[5])], at(0)).await.remove(0);
        let n = claim_one(&db.store, at(23)).await;
        db.store.notification_obsolete(&n, at(23)).await.unwrap();
        assert_eq!(db.store.next_notification_due().await.unwrap(), None);
        assert!(claim(&db.store, at(60), 10).await.is_empty());
        assert_eq!(events_of(&db.store, s.id).await, ["registered"]);
    }

    async fn a_session_leaving_active_makes_its_pending_warnings_obsolete(db) {
        let s = register(&db.store, vec![warned(1, &[5]), NewSession { deadline: at(40), ..warned(2, &[5]) }], at(0)).await;
        assert_eq!(db.store.next_notification_due().await.unwrap(), Some(at(23)));
        db.store.end_session(s[0].id, at(1), "done").await.unwrap();
        assert_eq!(db.store.next_notification_due().await.unwrap(), Some(at(33)));
        assert_eq!(db.store.claim_due(at(40), at(2), 10).await.unwrap().len(), 1);
        assert_eq!(db.store.next_notification_due().await.unwrap(), None, "claimed: no more warnings");
    }

    async fn an_extension_rearms_the_warnings_ahead_of_the_new_deadline(db) {
        let s = register(&db.store, vec![warned(1, &[5])], at(0)).await.remove(0);
        db.store.extend_session(s.id, mins(10), None, &[mins(5), mins(1)], at(1)).await.unwrap();
        // Booked end now at(38): warnings at(33) and at(37); the old at(23) is gone.
        assert_eq!(db.store.next_notification_due().await.unwrap(), Some(at(33)));
        assert!(claim(&db.store, at(32), 10).await.is_empty());
        let first = claim_one(&db.store, at(33)).await;
        assert_eq!(first.warn_before_ms, Some(300_000));
        db.store.notification_delivered(&first, 200, at(33)).await.unwrap();
        assert_eq!(claim_one(&db.store, at(37)).await.warn_before_ms, Some(60_000));
    }

    async fn a_notification_outlives_its_pruned_session(db) {
        db.store.set_outcome_notifications(true).await.unwrap();
        let s = register(&db.store, vec![session(1, at(1))], at(0)).await.remove(0);
        assert_eq!(db.store.claim_due(at(1), at(1), 10).await.unwrap().len(), 1);
        db.store.record_outcome(&[AuditEntry::new("enforced", s.id)], Some((SessionState::Enforced, Some("done"))), at(2)).await.unwrap();
        assert_eq!(db.store.prune_sessions(at(60)).await.unwrap(), 1);
        let n = claim_one(&db.store, at(60)).await;
        assert_eq!((n.session_id, n.event.as_str(), n.detail.as_deref()), (s.id.to_string(), "enforced", Some("done")));
        assert!(n.session.is_none(), "the session was pruned meanwhile");
    }
}
