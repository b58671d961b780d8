//! Leadership as the store sees it: a claim for some buckets under their
//! lease terms, writes fenced by the term a session was claimed under, and
//! a new leader taking a bucket's interrupted work over. The leases
//! themselves exist only where several daemons share the database
//! (PostgreSQL): there a claim also needs a lease valid by the server's
//! clock; on SQLite the terms are the test's own.

use std::time::Duration;

use callwarden::domain::audit::Verdict;
use callwarden::domain::lease::Led;
use callwarden::domain::session::NewSession;
use callwarden::domain::{Room, SessionState};
use callwarden::store::{Store, StoreError};

use super::support::*;

/// A participant's session of another provider, in a room of its own.
fn other_provider(deadline: callwarden::domain::Instant) -> NewSession {
    NewSession { provider: "acs".into(), ..participant(Room::call("call-9").unwrap(), "8:acs:z", deadline) }
}

/// A term for `bucket` held by `holder`: a real lease on a shared
/// database, `fallback` on an embedded one (which has no leases).
async fn term_for(store: &Store, bucket: &str, holder: &str, fallback: i64) -> i64 {
    match store.lease_connection().await.unwrap() {
        None => fallback,
        Some(mut conn) => {
            let term = conn.acquire(bucket, holder, Duration::from_secs(60)).await.unwrap();
            conn.close().await;
            term.expect("the lease is free, or already this holder's")
        }
    }
}

conformance! {
    async fn a_claim_for_some_buckets_takes_only_theirs_and_stamps_each_with_its_term(db) {
        let s = register(&db.store, vec![session(1, at(1)), other_provider(at(1))], at(0)).await;
        let term = term_for(&db.store, PROVIDER, "instance-a", 7).await;
        let led = Led::Buckets(vec![(PROVIDER.into(), term)]);
        assert_eq!(db.store.next_deadline_for(&led).await.unwrap(), Some(at(1)));
        assert_eq!(db.store.next_deadline_for(&Led::Buckets(vec![])).await.unwrap(), None);
        let claimed: Vec<_> = db.store.claim_for(&led, at(1), at(1), 10).await.unwrap().into_iter().map(Result::unwrap).collect();
        assert_eq!(claimed.len(), 1, "{claimed:?}");
        assert_eq!((claimed[0].id, claimed[0].term), (s[0].id, term));
        assert_eq!(state_of(&db.store, s[1].id).await, "active", "another bucket's session is not claimed");
        assert!(db.store.claim_for(&Led::Buckets(vec![]), at(1), at(1), 10).await.unwrap().is_empty());
        // The one daemon's claim takes everything, under term 0.
        let rest = db.store.claim_due(at(1), at(1), 10).await.unwrap();
        assert_eq!(rest.into_iter().map(|r| r.unwrap().term).collect::<Vec<_>>(), [0]);
    }

    async fn a_write_under_a_term_the_session_no_longer_carries_is_refused_and_writes_nothing(db) {
        let s = register(&db.store, vec![session(1, at(1))], at(0)).await.remove(0);
        let term = term_for(&db.store, PROVIDER, "instance-a", 7).await;
        let led = Led::Buckets(vec![(PROVIDER.into(), term)]);
        assert_eq!(db.store.claim_for(&led, at(1), at(1), 10).await.unwrap().len(), 1);
        db.store.record_attempt_as(term, &[s.id], &attempt_entry(1), None, at(1)).await.unwrap();
        let before = all_audit(&db.store).await.len();

        // Another instance's term, or the one daemon's: fenced off.
        for wrong in [term + 1, 0] {
            let outcome = db.store.record_outcome_as(wrong, &[callwarden::domain::audit::AuditEntry::new("enforced", s.id)], Some((SessionState::Enforced, None)), at(2)).await;
            assert!(matches!(outcome, Err(StoreError::Fenced { id, term: t, current }) if id == s.id && t == wrong && current == term), "{outcome:?}");
            let attempt = db.store.record_attempt_as(wrong, &[s.id], &attempt_entry(2), None, at(2)).await;
            assert!(matches!(attempt, Err(StoreError::Fenced { .. })), "{attempt:?}");
            let release = db.store.release_as(wrong, &[s.id], true, at(2), "stopping").await;
            assert!(matches!(release, Err(StoreError::Fenced { .. })), "{release:?}");
        }
        let row = db.store.session(s.id).await.unwrap();
        assert_eq!((row.state.as_str(), row.attempts), ("enforcing", 1), "nothing was written");
        assert_eq!(all_audit(&db.store).await.len(), before, "not one audit row");

        // Its own term still writes.
        db.store.record_outcome_as(term, &[callwarden::domain::audit::AuditEntry::new("enforced", s.id)], Some((SessionState::Enforced, None)), at(2)).await.unwrap();
        assert_eq!(state_of(&db.store, s.id).await, "enforced");
    }

    async fn attempts_written_together_are_fenced_one_by_one(db) {
        // Enforcement's attempt writer commits the attempts that queue up
        // together (on SQLite) in one transaction: one that is fenced off
        // must fail alone, and write nothing, while the others are written.
        let s = register(&db.store, vec![session(1, at(1)), session(2, at(1)), session(3, at(1))], at(0)).await;
        let term = term_for(&db.store, PROVIDER, "instance-a", 7).await;
        let led = Led::Buckets(vec![(PROVIDER.into(), term)]);
        assert_eq!(db.store.claim_for(&led, at(1), at(1), 10).await.unwrap().len(), 3);
        let writer = db.store.attempt_writer();
        let attempt = |i: usize, term: i64| callwarden::store::Attempt {
            term,
            ids: vec![s[i].id],
            entry: attempt_entry(1),
            repeatability: None,
            now: at(1),
        };
        let (first, fenced, third) = tokio::join!(
            writer.record(attempt(0, term)),
            writer.record(attempt(1, term + 1)),
            writer.record(attempt(2, term)),
        );
        first.unwrap();
        third.unwrap();
        assert!(matches!(fenced, Err(StoreError::Fenced { id, .. }) if id == s[1].id), "{fenced:?}");
        let attempts = |i: usize| {
            let store = db.store.clone();
            let id = s[i].id;
            async move { (store.session(id).await.unwrap().attempts, events_of(&store, id).await) }
        };
        assert_eq!(attempts(0).await, (1, vec!["registered".to_string(), "attempt".to_string()]));
        assert_eq!(attempts(1).await, (0, vec!["registered".to_string()]), "the fenced attempt wrote nothing");
        assert_eq!(attempts(2).await, (1, vec!["registered".to_string(), "attempt".to_string()]));
        let verdict = verify_chain(&db.store).await;
        assert!(matches!(verdict, Verdict::Intact { unchained: 0, .. }), "the batch's audit rows chain on: {verdict:?}");
    }

    async fn a_new_leader_takes_over_the_buckets_interrupted_work_and_fences_the_old_one_off(db) {
        let s = register(&db.store, vec![session(1, at(1)), session(2, at(1)), other_provider(at(1))], at(0)).await;
        let old = term_for(&db.store, PROVIDER, "instance-a", 7).await;
        let led = Led::Buckets(vec![(PROVIDER.into(), old)]);
        assert_eq!(db.store.claim_for(&led, at(1), at(1), 10).await.unwrap().len(), 2);
        db.store.record_attempt_as(old, &[s[0].id], &attempt_entry(1), None, at(1)).await.unwrap();
        let acs = db.store.claim_due(at(1), at(1), 10).await.unwrap();
        assert_eq!(acs.len(), 1, "the other bucket's session, claimed by the one-daemon claim");

        // instance-b is granted the bucket under a later term.
        let new = term_for(&db.store, PROVIDER, "instance-a", old + 1).await;
        assert!(new > old);
        assert_eq!(db.store.take_over(PROVIDER, new, at(2), "taken over").await.unwrap(), 2);
        assert_eq!(db.store.take_over(PROVIDER, new, at(2), "again").await.unwrap(), 0, "once");
        for id in [s[0].id, s[1].id] {
            assert_eq!(state_of(&db.store, id).await, "active");
            let audit = audit_of(&db.store, id).await;
            let last = audit.last().unwrap();
            assert_eq!((last.event.as_str(), last.detail.as_deref()), ("recovered", Some("taken over")));
        }
        assert_eq!(state_of(&db.store, s[2].id).await, "enforcing", "another bucket's work is not taken");
        assert_eq!(db.store.session(s[0].id).await.unwrap().attempts, 1, "the attempt stays counted: a call may have left");

        // The old leader's late answer is fenced off.
        let late = db.store.record_outcome_as(old, &[callwarden::domain::audit::AuditEntry::new("enforced", s[0].id)], Some((SessionState::Enforced, None)), at(3)).await;
        assert!(matches!(late, Err(StoreError::Fenced { .. })), "{late:?}");
        // The new leader claims them again, under its term.
        let led = Led::Buckets(vec![(PROVIDER.into(), new)]);
        let again: Vec<_> = db.store.claim_for(&led, at(3), at(3), 10).await.unwrap().into_iter().map(|r| r.unwrap().term).collect();
        assert_eq!(again, [new, new]);
        // An older grant cannot take back what a newer one holds.
        assert_eq!(db.store.take_over(PROVIDER, old, at(4), "stale").await.unwrap(), 0);
    }
}
