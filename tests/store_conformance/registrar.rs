//! The group-commit registrar: concurrent registrations share commits and
//! all land, each with its audit row; an idempotency key answers a retry
//! with the session it made; a registration the database refuses fails
//! alone, not the others of its batch; a failed batch fails its callers, not the
//! registrar. `Store::insert_batch` is exercised here, through the
//! registrar: its `Pending` rows carry a reply channel only the registrar
//! can make.

use callwarden::domain::Room;
use callwarden::domain::session::{NewSession, SessionRecord};
use callwarden::store::{Inserted, StoreError};

use super::support::*;

fn created(result: Result<Inserted, StoreError>) -> bool {
    matches!(result.unwrap(), Inserted::Created)
}

conformance! {
    async fn a_registration_is_committed_with_its_audit_row_and_warnings(db) {
        let registrar = db.store.registrar();
        let s = NewSession { warn_before: vec![mins(5)], ..participant(Room::Numeric(3), "alice", at(30)) };
        assert!(created(registrar.register(s.clone(), Some("key-1".into()), at(0), "registered through the API").await));
        assert_eq!(
            serde_json::to_value(db.store.session(s.id).await.unwrap()).unwrap(),
            serde_json::to_value(SessionRecord::registered(&s, Some("key-1".into()), at(0))).unwrap()
        );
        let audit = audit_of(&db.store, s.id).await;
        assert_eq!(audit.len(), 1);
        assert_eq!((audit[0].event.as_str(), audit[0].provider.as_deref()), ("registered", Some(PROVIDER)));
        assert_eq!(audit[0].detail, s.registered_entry("registered through the API").detail);
        assert_eq!(db.store.next_notification_due().await.unwrap(), Some(at(25)));
    }

    async fn concurrent_registrations_are_group_committed_and_all_land(db) {
        let registrar = db.store.registrar();
        let sessions: Vec<_> = (1..=100).map(|room| session(room, at(30))).collect();
        let calls: Vec<_> = sessions
            .iter()
            .map(|s| {
                let (registrar, s) = (registrar.clone(), s.clone());
                tokio::spawn(async move { registrar.register(s, None, at(0), "api").await })
            })
            .collect();
        for call in calls {
            assert!(created(call.await.unwrap()));
        }
        assert_eq!(db.store.state_counts().await.unwrap(), [("active".to_string(), 100)]);
        for s in &sessions {
            assert_eq!(events_of(&db.store, s.id).await, ["registered"]);
        }
        assert_chain_intact(&db.store, 100).await;
    }

    async fn a_reused_idempotency_key_returns_the_first_session(db) {
        let registrar = db.store.registrar();
        let first = session(1, at(30));
        assert!(created(registrar.register(first.clone(), Some("retry-me".into()), at(0), "api").await));
        let retry = session(2, at(45));
        let answer = registrar.register(retry.clone(), Some("retry-me".into()), at(1), "api").await.unwrap();
        let Inserted::Existing(existing) = answer else { panic!("expected the first session, got {answer:?}") };
        assert_eq!(
            serde_json::to_value(&*existing).unwrap(),
            serde_json::to_value(SessionRecord::registered(&first, Some("retry-me".into()), at(0))).unwrap()
        );
        assert!(matches!(db.store.session(retry.id).await, Err(StoreError::NotFound(_))));
        assert_eq!(all_audit(&db.store).await.len(), 1, "the retry writes no audit row");
    }

    async fn the_same_key_registered_twice_at_once_creates_one_session(db) {
        let registrar = db.store.registrar();
        let calls: Vec<_> = (1..=10)
            .map(|room| {
                let registrar = registrar.clone();
                tokio::spawn(async move { registrar.register(session(room, at(30)), Some("once".into()), at(0), "api").await })
            })
            .collect();
        let mut made = Vec::new();
        let mut answered = Vec::new();
        for call in calls {
            match call.await.unwrap().unwrap() {
                Inserted::Created => made.push(()),
                Inserted::Existing(r) => answered.push(r.id),
            }
        }
        assert_eq!((made.len(), answered.len()), (1, 9));
        let rows = db.store.list_sessions(None, None, 100).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert!(answered.iter().all(|id| *id == rows[0].id), "every retry names the one session");
        assert_eq!(rows[0].idempotency_key.as_deref(), Some("once"));
    }

    async fn registrations_without_a_key_are_never_deduplicated(db) {
        let registrar = db.store.registrar();
        let (a, b) = (session(1, at(30)), session(1, at(30)));
        assert!(created(registrar.register(a.clone(), None, at(0), "api").await));
        assert!(created(registrar.register(b.clone(), None, at(0), "api").await));
        assert_eq!(db.store.state_counts().await.unwrap(), [("active".to_string(), 2)]);
    }

    async fn one_refused_registration_fails_alone_not_the_others_of_its_batch(db) {
        let registrar = db.store.registrar();
        let taken = session(1, at(30));
        assert!(created(registrar.register(taken.clone(), None, at(0), "api").await));
        // Sent at once, so they share commits; one of them reuses an id.
        let mut sessions: Vec<_> = (2..=60).map(|room| session(room, at(30))).collect();
        sessions.insert(30, NewSession { id: taken.id, ..session(99, at(30)) });
        let calls: Vec<_> = sessions
            .iter()
            .map(|s| {
                let (registrar, s) = (registrar.clone(), s.clone());
                tokio::spawn(async move { registrar.register(s, None, at(1), "api").await })
            })
            .collect();
        let mut refused = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(Inserted::Created) => {}
                Ok(other) => panic!("{other:?}"),
                Err(_) => refused += 1,
            }
        }
        assert_eq!(refused, 1, "only the clash is refused");
        assert_eq!(db.store.state_counts().await.unwrap(), [("active".to_string(), 60)]);
        assert_chain_intact(&db.store, 60).await;
    }

    async fn a_failed_batch_fails_its_registrations_and_the_registrar_carries_on(db) {
        let registrar = db.store.registrar();
        let s = session(1, at(30));
        assert!(created(registrar.register(s.clone(), None, at(0), "api").await));
        let clash = NewSession { id: s.id, ..session(2, at(30)) };
        let refused = registrar.register(clash, None, at(1), "api").await;
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(db.store.session(s.id).await.unwrap().room_id, "1");
        let next = session(3, at(30));
        assert!(created(registrar.register(next.clone(), None, at(2), "api").await));
        assert_eq!(events_of(&db.store, next.id).await, ["registered"]);
        assert_chain_intact(&db.store, 2).await;
    }
}
