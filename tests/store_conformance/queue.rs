//! The scheduler's queue: adopting and rejecting rows inserted with plain
//! SQL, the next deadline, claiming what is due (once, most overdue first),
//! re-queuing and releasing, and recording attempts and outcomes.

use std::collections::HashSet;
use std::time::Duration;

use callwarden::domain::audit::AuditEntry;
use callwarden::domain::session::{Adopted, Repeatability};
use callwarden::domain::{Instant, Room, SessionId, SessionState};
use callwarden::store::{Store, StoreError};

use super::backend::PlainRow;
use super::support::*;

/// How long the tests let `adopt_batch` wait for the write lock.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

fn adopted(id: &str, deadline: Instant) -> Adopted {
    Adopted {
        id: id.to_string(),
        provider: PROVIDER.into(),
        deadline,
        grace: mins(2),
        warn_before: vec![mins(5)],
    }
}

fn id_of(text: &str) -> SessionId {
    text.parse().unwrap()
}

/// Claims everything due by `horizon`, `limit` at a time, until none is left.
async fn claim_all(store: Store, horizon: Instant, limit: u32) -> Vec<SessionId> {
    let mut claimed = Vec::new();
    loop {
        let batch = store.claim_due(horizon, horizon, limit).await.unwrap();
        if batch.is_empty() {
            return claimed;
        }
        assert!(batch.len() <= limit as usize);
        claimed.extend(batch.into_iter().map(|r| r.unwrap().id));
    }
}

conformance! {
    async fn unadopted_lists_plain_sql_rows_missing_a_provider_or_a_deadline(db) {
        let complete = PlainRow { provider: Some(PROVIDER), deadline: Some(at(30)), ..plain_row("44", at(-4)) };
        let no_provider = PlainRow { deadline: Some(at(30)), ..plain_row("43", at(-1)) };
        let no_deadline = PlainRow { provider: Some(PROVIDER), ..plain_row("42", at(-2)) };
        let neither = plain_row("41", at(-3));
        for row in [&complete, &no_provider, &no_deadline, &neither] {
            db.insert_plain_row(row).await;
        }
        register(&db.store, vec![session(45, at(30))], at(0)).await;

        let rows: Vec<_> = db.store.unadopted(10).await.unwrap().into_iter().map(Result::unwrap).collect();
        let ids: Vec<_> = rows.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids, [neither.id.to_string(), no_deadline.id.to_string(), no_provider.id.to_string()], "oldest first");
        assert_eq!((rows[0].provider.as_deref(), rows[0].deadline.as_deref()), (None, None));
        assert_eq!((rows[0].policy.as_str(), rows[0].room_id.as_str(), rows[0].state.as_str()), (POLICY, "41", "active"));
        assert_eq!(db.store.unadopted(2).await.unwrap().len(), 2);
    }

    async fn adopt_batch_schedules_adopted_rows_and_fails_rejected_ones(db) {
        let good = db.insert_plain_row(&plain_row("41", at(-2))).await;
        let bad = db.insert_plain_row(&plain_row("42", at(-1))).await;
        let reason = "unknown policy \"nope\"";
        let count = db.store.adopt_batch(&[adopted(&good, at(30))], &[(bad.clone(), reason.into())], at(0), PATIENCE).await.unwrap().unwrap();
        assert_eq!(count, 1);

        let row = db.store.session(id_of(&good)).await.unwrap();
        assert_eq!(row.provider.as_deref(), Some(PROVIDER));
        assert_eq!(row.deadline, Some(at(30).to_string()));
        assert_eq!((row.grace_ms, row.state.as_str()), (120_000, "active"));
        assert_eq!(row.updated_at, at(0).to_string());
        let audit = audit_of(&db.store, id_of(&good)).await;
        assert_eq!(audit.len(), 1);
        assert_eq!((audit[0].event.as_str(), audit[0].provider.as_deref()), ("registered", Some(PROVIDER)));
        assert_eq!(audit[0].detail, Some(format!("inserted with SQL; adopted with deadline {}", at(30))));

        let row = db.store.session(id_of(&bad)).await.unwrap();
        assert_eq!((row.state.as_str(), row.detail.as_deref()), ("failed", Some(reason)));
        assert_eq!(row.ended_at, Some(at(0).to_string()));
        let audit = audit_of(&db.store, id_of(&bad)).await;
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].event, "rejected");
        assert_eq!(audit[0].detail, Some(format!("session {bad}: {reason}")));

        assert!(db.store.unadopted(10).await.unwrap().is_empty());
        assert_eq!(db.store.next_deadline().await.unwrap(), Some(at(30)));
        // Its warning: 5 minutes before the booked end (the deadline less the grace).
        assert_eq!(db.store.next_notification_due().await.unwrap(), Some(at(23)));
        assert_chain_intact(&db.store, 2).await;
    }

    async fn a_row_is_adopted_once(db) {
        let id = db.insert_plain_row(&plain_row("41", at(-1))).await;
        assert_eq!(db.store.adopt_batch(&[adopted(&id, at(30))], &[], at(0), PATIENCE).await.unwrap().unwrap(), 1);
        assert_eq!(db.store.adopt_batch(&[adopted(&id, at(90))], &[], at(1), PATIENCE).await.unwrap().unwrap(), 0);
        let registered = register(&db.store, vec![session(2, at(30))], at(0)).await.remove(0);
        let again = adopted(&registered.id.to_string(), at(90));
        assert_eq!(db.store.adopt_batch(&[again], &[], at(1), PATIENCE).await.unwrap().unwrap(), 0, "a registered session is adopted already");

        assert_eq!(db.store.session(id_of(&id)).await.unwrap().deadline, Some(at(30).to_string()));
        assert_eq!(db.store.session(registered.id).await.unwrap().deadline, Some(at(30).to_string()));
        assert_eq!(events_of(&db.store, id_of(&id)).await, ["registered"]);
        assert_eq!(events_of(&db.store, registered.id).await, ["registered"]);
    }

    async fn adopt_batch_gives_up_after_its_patience_and_writes_nothing(db) {
        let id = db.insert_plain_row(&plain_row("43", at(-1))).await;
        let holder = db.hold_write_lock().await;
        let patience = std::time::Duration::from_millis(50);
        assert_eq!(db.store.adopt_batch(&[adopted(&id, at(30))], &[], at(0), patience).await.unwrap(), None);
        let recent = db.store.lock_waits().recent();
        assert!(recent.longest >= patience && recent.contended, "the wait is recorded, as contended: {recent:?}");
        drop(holder);
        assert_eq!(db.store.unadopted(10).await.unwrap().len(), 1, "nothing was written");
        assert_eq!(db.store.adopt_batch(&[adopted(&id, at(30))], &[], at(0), PATIENCE).await.unwrap(), Some(1));
        assert!(db.store.unadopted(10).await.unwrap().is_empty());
    }

    async fn reject_fails_a_row_with_its_reason(db) {
        let id = db.insert_plain_row(&plain_row("41", at(-1))).await;
        db.store.reject(&id, "room 0 is not a TRTC room", at(1)).await.unwrap();
        let row = db.store.session(id_of(&id)).await.unwrap();
        assert_eq!((row.state.as_str(), row.detail.as_deref()), ("failed", Some("room 0 is not a TRTC room")));
        assert_eq!((row.updated_at, row.ended_at), (at(1).to_string(), Some(at(1).to_string())));
        let audit = audit_of(&db.store, id_of(&id)).await;
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].event, "rejected");
        assert_eq!(audit[0].detail, Some(format!("session {id}: room 0 is not a TRTC room")));
        assert!(db.store.unadopted(10).await.unwrap().is_empty());
    }

    async fn rejecting_a_settled_session_changes_nothing(db) {
        let s = register(&db.store, vec![session(1, at(30))], at(0)).await.remove(0);
        db.store.end_session(s.id, at(1), "the app ended it").await.unwrap();
        db.store.reject(&s.id.to_string(), "too late", at(2)).await.unwrap();
        db.store.adopt_batch(&[], &[(s.id.to_string(), "too late".into())], at(3), PATIENCE).await.unwrap().unwrap();
        let row = db.store.session(s.id).await.unwrap();
        assert_eq!((row.state.as_str(), row.detail), ("cancelled", None));
        assert_eq!(events_of(&db.store, s.id).await, ["registered", "cancelled"]);
    }

    async fn next_deadline_is_the_earliest_deadline_of_an_adopted_active_session(db) {
        assert_eq!(db.store.next_deadline().await.unwrap(), None);
        // A plain row with a deadline but no provider is not scheduled yet.
        db.insert_plain_row(&PlainRow { deadline: Some(at(5)), ..plain_row("40", at(-1)) }).await;
        assert_eq!(db.store.next_deadline().await.unwrap(), None);
        let s = register(&db.store, vec![session(1, at(30)), session(2, at(20))], at(0)).await;
        assert_eq!(db.store.next_deadline().await.unwrap(), Some(at(20)));
        db.store.end_session(s[1].id, at(1), "done").await.unwrap();
        assert_eq!(db.store.next_deadline().await.unwrap(), Some(at(30)));
        assert_eq!(db.store.claim_due(at(30), at(30), 10).await.unwrap().len(), 1);
        assert_eq!(db.store.next_deadline().await.unwrap(), None, "claimed sessions are no longer queued");
    }

    async fn claim_due_returns_most_overdue_first_and_respects_the_limit(db) {
        let s = register(
            &db.store,
            [4, 1, 5, 3, 2].into_iter().map(|m| session(m as u32, at(m))).collect(),
            at(0),
        )
        .await;
        let first = db.store.claim_due(at(10), at(10), 3).await.unwrap();
        let first: Vec<_> = first.into_iter().map(Result::unwrap).collect();
        assert_eq!(first.iter().map(|c| c.deadline).collect::<Vec<_>>(), [at(1), at(2), at(3)]);
        for c in &first {
            let registered = s.iter().find(|r| r.id == c.id).unwrap();
            assert_eq!(c.state, SessionState::Enforcing);
            assert_eq!((c.policy.as_str(), c.provider.as_str()), (POLICY, PROVIDER));
            assert_eq!((&c.room, &c.user, c.started_at), (&registered.room, &None, t0()));
            assert_eq!((c.attempts, c.repeatability), (0, None));
            let row = db.store.session(c.id).await.unwrap();
            assert_eq!((row.state.as_str(), row.updated_at), ("enforcing", at(10).to_string()));
        }
        let rest = db.store.claim_due(at(10), at(10), 3).await.unwrap();
        assert_eq!(rest.into_iter().map(|c| c.unwrap().deadline).collect::<Vec<_>>(), [at(4), at(5)]);
        assert!(db.store.claim_due(at(10), at(10), 3).await.unwrap().is_empty());
    }

    async fn claim_due_takes_only_what_is_due_by_the_horizon(db) {
        let s = register(&db.store, vec![session(1, at(10)), session(2, at(11))], at(0)).await;
        // An unadopted row is never claimed, however overdue.
        db.insert_plain_row(&PlainRow { deadline: Some(at(1)), ..plain_row("40", at(-1)) }).await;
        assert!(db.store.claim_due(at(9), at(9), 10).await.unwrap().is_empty());
        let claimed = db.store.claim_due(at(10), at(9), 10).await.unwrap();
        assert_eq!(claimed.into_iter().map(|c| c.unwrap().id).collect::<Vec<_>>(), [s[0].id], "a deadline at the horizon is due");
        assert_eq!(state_of(&db.store, s[1].id).await, "active");
    }

    async fn a_claimed_session_is_not_claimed_twice(db) {
        let sessions: Vec<_> = (1..=40).map(|room| session(room, at(i64::from(room % 7)))).collect();
        register(&db.store, sessions.clone(), at(-1)).await;
        let other = db.another_handle().await;
        let claimers: Vec<_> = [db.store.clone(), other.clone(), db.store.clone(), other.clone()]
            .into_iter()
            .map(|store| tokio::spawn(claim_all(store, at(10), 3)))
            .collect();
        let mut all = Vec::new();
        for claimer in claimers {
            all.extend(claimer.await.unwrap());
        }
        let unique: HashSet<_> = all.iter().copied().collect();
        assert_eq!(all.len(), 40, "each session claimed exactly once");
        assert_eq!(unique, sessions.iter().map(|s| s.id).collect::<HashSet<_>>());
        assert!(db.store.claim_due(at(10), at(10), 100).await.unwrap().is_empty());
        assert_eq!(db.store.state_counts().await.unwrap(), [("enforcing".to_string(), 40)]);
        other.close().await;
    }

    async fn a_malformed_row_is_claimed_as_its_id_and_reason(db) {
        let good = register(&db.store, vec![session(1, at(2))], at(0)).await.remove(0);
        let bad = PlainRow {
            provider: Some(PROVIDER),
            deadline: Some(at(5)),
            ..plain_row("not-a-room", at(-1))
        };
        let bad_id = db.insert_plain_row(&bad).await;
        let claimed = db.store.claim_due(at(10), at(10), 10).await.unwrap();
        assert_eq!(claimed.len(), 2);
        let Err((id, reason)) = &claimed[0] else { panic!("the malformed row first: {claimed:?}") };
        assert_eq!(id, &bad_id);
        assert!(reason.contains("numeric room id \"not-a-room\""), "{reason}");
        assert_eq!(claimed[1].as_ref().unwrap().id, good.id);

        db.store.reject(id, reason, at(10)).await.unwrap();
        let row = db.store.session(bad.id).await.unwrap();
        assert_eq!((row.state.as_str(), row.detail.as_deref()), ("failed", Some(reason.as_str())));
        assert_eq!(events_of(&db.store, bad.id).await, ["rejected"]);
    }

    async fn requeue_interrupted_makes_enforcing_sessions_active_again(db) {
        let s = register(&db.store, vec![session(1, at(1)), session(2, at(2)), session(3, at(3)), session(4, at(4))], at(0)).await;
        db.store.end_session(s[3].id, at(0), "done").await.unwrap();
        assert_eq!(db.store.claim_due(at(5), at(5), 2).await.unwrap().len(), 2);

        assert_eq!(db.store.requeue_interrupted(at(6), "the daemon restarted").await.unwrap(), 2);
        for claimed in &s[..2] {
            let row = db.store.session(claimed.id).await.unwrap();
            assert_eq!((row.state.as_str(), row.updated_at), ("active", at(6).to_string()));
            let audit = audit_of(&db.store, claimed.id).await;
            let last = audit.last().unwrap();
            assert_eq!((last.event.as_str(), last.detail.as_deref()), ("recovered", Some("the daemon restarted")));
            assert_eq!((last.provider.as_deref(), last.at.as_str()), (Some(PROVIDER), at(6).to_string().as_str()));
        }
        assert_eq!(events_of(&db.store, s[2].id).await, ["registered"], "never claimed, nothing to recover");
        assert_eq!(state_of(&db.store, s[3].id).await, "cancelled");
        assert_eq!(db.store.requeue_interrupted(at(7), "again").await.unwrap(), 0);
        let again = db.store.claim_due(at(5), at(8), 10).await.unwrap();
        assert_eq!(again.into_iter().map(|c| c.unwrap().id).collect::<Vec<_>>(), [s[0].id, s[1].id, s[2].id]);
    }

    async fn release_gives_claimed_sessions_back_and_takes_back_an_unsent_attempt(db) {
        let s = register(&db.store, vec![session(1, at(1)), session(2, at(1))], at(0)).await;
        let ids = [s[0].id, s[1].id];
        assert_eq!(db.store.claim_due(at(1), at(1), 10).await.unwrap().len(), 2);
        db.store.record_attempt(&ids, &attempt_entry(1), None, at(1)).await.unwrap();

        db.store.release(&ids[..1], true, at(2), "stopped before the deadline").await.unwrap();
        db.store.release(&ids[1..], false, at(2), "provider removed").await.unwrap();
        let (unsent, sent) = (db.store.session(ids[0]).await.unwrap(), db.store.session(ids[1]).await.unwrap());
        assert_eq!((unsent.state.as_str(), unsent.attempts), ("active", 0));
        assert_eq!((sent.state.as_str(), sent.attempts), ("active", 1));
        for (id, why) in [(ids[0], "stopped before the deadline"), (ids[1], "provider removed")] {
            let audit = audit_of(&db.store, id).await;
            assert_eq!(audit.iter().map(|r| r.event.as_str()).collect::<Vec<_>>(), ["registered", "attempt", "interrupted"]);
            assert_eq!(audit[2].detail.as_deref(), Some(why));
        }
        // Only claimed sessions are released: a second release changes nothing.
        db.store.release(&ids, true, at(3), "again").await.unwrap();
        assert_eq!(db.store.session(ids[1]).await.unwrap().attempts, 1);
        assert_eq!(events_of(&db.store, ids[0]).await.len(), 3);
        assert_eq!(db.store.claim_due(at(1), at(4), 10).await.unwrap().len(), 2, "released sessions are due again");
    }

    async fn record_attempt_counts_attempts_and_keeps_the_repeatability_pair(db) {
        let s = register(
            &db.store,
            vec![participant(Room::call("call-1").unwrap(), "8:acs:a", at(1)), participant(Room::call("call-1").unwrap(), "8:acs:b", at(1))],
            at(0),
        )
        .await;
        let ids = [s[0].id, s[1].id];
        assert_eq!(db.store.claim_due(at(1), at(1), 10).await.unwrap().len(), 2);
        let first_pair = Repeatability::new(at(1).to_datetime() + chrono::Duration::milliseconds(734));
        let entry = AuditEntry { provider_request_id: Some(first_pair.request_id.to_string()), ..attempt_entry(1) };
        db.store.record_attempt(&ids, &entry, Some(first_pair), at(1)).await.unwrap();
        db.store.record_attempt(&ids, &attempt_entry(2), None, at(2)).await.unwrap();

        for id in ids {
            let row = db.store.session(id).await.unwrap();
            assert_eq!(row.attempts, 2);
            assert_eq!(row.repeatability_id, Some(first_pair.request_id.to_string()));
            assert_eq!(row.first_sent_at, Some(at(1).to_string()), "kept at the second it is sent with");
            let audit = audit_of(&db.store, id).await;
            assert_eq!(audit.iter().map(|r| r.event.as_str()).collect::<Vec<_>>(), ["registered", "attempt", "attempt"]);
            assert_eq!(audit[1].session_id, Some(id.to_string()));
            assert_eq!((audit[1].attempt, audit[2].attempt), (Some(1), Some(2)));
            assert_eq!((audit[1].action.as_deref(), audit[1].provider.as_deref()), (Some("DismissRoom"), Some(PROVIDER)));
            assert_eq!(audit[1].provider_request_id, Some(first_pair.request_id.to_string()));
        }
        // After a restart the same pair comes back with the session.
        assert_eq!(db.store.requeue_interrupted(at(3), "restart").await.unwrap(), 2);
        let again = db.store.claim_due(at(3), at(3), 10).await.unwrap();
        for c in again {
            let c = c.unwrap();
            assert_eq!((c.attempts, c.repeatability), (2, Some(first_pair)));
        }
        // A newly chosen pair replaces it.
        let second_pair = Repeatability::new(at(4).to_datetime());
        db.store.record_attempt(&ids[..1], &attempt_entry(3), Some(second_pair), at(4)).await.unwrap();
        assert_eq!(db.store.session(ids[0]).await.unwrap().repeatability_id, Some(second_pair.request_id.to_string()));
        assert_eq!(db.store.session(ids[1]).await.unwrap().attempts, 2);
    }

    async fn record_outcome_settles_and_the_outcome_trigger_queues_a_notification(db) {
        db.store.set_outcome_notifications(true).await.unwrap();
        let s = register(&db.store, vec![session(1, at(30))], at(0)).await.remove(0);
        assert_eq!(db.store.claim_due(at(30), at(30), 10).await.unwrap().len(), 1);
        let entry = AuditEntry {
            event: "enforced",
            provider: Some(PROVIDER.into()),
            action: Some("DismissRoom".into()),
            attempt: Some(1),
            outcome: Some("success"),
            http_status: Some(200),
            provider_request_id: Some("req-1".into()),
            latency_ms: Some(87),
            lateness_ms: Some(150),
            ..AuditEntry::new("enforced", s.id)
        };
        db.store.record_outcome(&[entry], Some((SessionState::Enforced, Some("room dismissed"))), at(31)).await.unwrap();

        let row = db.store.session(s.id).await.unwrap();
        assert_eq!((row.state.as_str(), row.detail.as_deref()), ("enforced", Some("room dismissed")));
        assert_eq!((row.updated_at, row.ended_at), (at(31).to_string(), Some(at(31).to_string())));
        let audit = audit_of(&db.store, s.id).await;
        let last = audit.last().unwrap();
        assert_eq!((last.event.as_str(), last.outcome.as_deref(), last.http_status), ("enforced", Some("success"), Some(200)));
        assert_eq!((last.latency_ms, last.lateness_ms, last.attempt), (Some(87), Some(150), Some(1)));
        assert_eq!(last.provider_request_id.as_deref(), Some("req-1"));

        assert_eq!(db.store.next_notification_due().await.unwrap(), Some(at(31)));
        let queued = db.store.claim_notifications(at(31), Duration::from_secs(30), 10).await.unwrap();
        assert_eq!(queued.len(), 1);
        let n = &queued[0];
        assert_eq!((n.event.as_str(), n.detail.as_deref(), n.warn_before_ms), ("enforced", Some("room dismissed"), None));
        assert_eq!((n.session_id.clone(), n.attempts), (s.id.to_string(), 1));
        assert_eq!(n.session.as_ref().map(|r| r.state.as_str()), Some("enforced"));
        assert_chain_intact(&db.store, 2).await;
    }

    async fn every_final_outcome_queues_its_own_notification(db) {
        db.store.set_outcome_notifications(true).await.unwrap();
        let finals = [SessionState::Enforced, SessionState::AlreadyEnded, SessionState::Failed, SessionState::Shadowed];
        let s = register(&db.store, (1..=4).map(|room| session(room, at(1))).collect(), at(0)).await;
        assert_eq!(db.store.claim_due(at(1), at(1), 10).await.unwrap().len(), 4);
        for (session, state) in s.iter().zip(finals) {
            db.store.record_outcome(&[AuditEntry::new("outcome", session.id)], Some((state, None)), at(2)).await.unwrap();
        }
        let queued = db.store.claim_notifications(at(2), Duration::from_secs(30), 10).await.unwrap();
        let mut got: Vec<_> = queued.iter().map(|n| (n.session_id.clone(), n.event.clone())).collect();
        let mut want: Vec<_> = s.iter().zip(finals).map(|(s, st)| (s.id.to_string(), st.as_str().to_string())).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }

    async fn record_outcome_without_a_final_state_only_appends_its_rows(db) {
        db.store.set_outcome_notifications(true).await.unwrap();
        let s = register(&db.store, vec![session(1, at(1))], at(0)).await.remove(0);
        assert_eq!(db.store.claim_due(at(1), at(1), 10).await.unwrap().len(), 1);
        let retry = AuditEntry { outcome: Some("retryable"), error_code: Some("InternalError".into()), ..AuditEntry::new("retry", s.id) };
        db.store.record_outcome(&[retry], None, at(2)).await.unwrap();
        let row = db.store.session(s.id).await.unwrap();
        assert_eq!((row.state.as_str(), row.detail, row.ended_at), ("enforcing", None, None));
        assert_eq!(events_of(&db.store, s.id).await, ["registered", "retry"]);
        assert_eq!(db.store.next_notification_due().await.unwrap(), None);
    }

    async fn record_outcome_settles_only_enforcing_sessions(db) {
        db.store.set_outcome_notifications(true).await.unwrap();
        let s = register(&db.store, vec![session(1, at(1))], at(0)).await.remove(0);
        db.store.end_session(s.id, at(0), "ended first").await.unwrap();
        db.store.record_outcome(&[AuditEntry::new("enforced", s.id)], Some((SessionState::Enforced, Some("late"))), at(2)).await.unwrap();
        let row = db.store.session(s.id).await.unwrap();
        assert_eq!((row.state.as_str(), row.detail, row.ended_at), ("cancelled", None, Some(at(0).to_string())));
        assert_eq!(db.store.next_notification_due().await.unwrap(), None);
    }

    async fn outcomes_are_not_queued_while_notifications_are_off(db) {
        let s = register(&db.store, vec![session(1, at(1)), session(2, at(1))], at(0)).await;
        assert_eq!(db.store.claim_due(at(1), at(1), 10).await.unwrap().len(), 2);
        db.store.record_outcome(&[AuditEntry::new("enforced", s[0].id)], Some((SessionState::Enforced, None)), at(2)).await.unwrap();
        assert_eq!(db.store.next_notification_due().await.unwrap(), None, "off by default");
        db.store.set_outcome_notifications(true).await.unwrap();
        db.store.set_outcome_notifications(false).await.unwrap();
        db.store.record_outcome(&[AuditEntry::new("enforced", s[1].id)], Some((SessionState::Enforced, None)), at(2)).await.unwrap();
        assert_eq!(db.store.next_notification_due().await.unwrap(), None);
        assert_eq!(db.store.state_counts().await.unwrap(), [("enforced".to_string(), 2)]);
    }

    async fn an_accepted_session_waits_for_its_report(db) {
        db.store.set_outcome_notifications(true).await.unwrap();
        let s = register(&db.store, vec![participant(Room::call("call-1").unwrap(), "8:acs:a", at(1))], at(0)).await.remove(0);
        assert_eq!(db.store.claim_due(at(1), at(1), 10).await.unwrap().len(), 1);
        db.store.record_outcome(&[AuditEntry::new("accepted", s.id)], Some((SessionState::Accepted, None)), at(2)).await.unwrap();
        let row = db.store.session(s.id).await.unwrap();
        assert_eq!((row.state.as_str(), row.ended_at), ("accepted", None));
        assert_eq!(db.store.next_notification_due().await.unwrap(), None, "not an outcome yet");
        assert!(matches!(db.store.end_session(s.id, at(3), "x").await, Err(StoreError::NotActive { .. })));
    }
}
