//! Sessions: registering (all or nothing), reading back, ending, extending
//! (within the policy's limit, never once a call was sent), listing,
//! counting, pruning, and backing up.

use std::time::Duration;

use callwarden::domain::audit::AuditEntry;
use callwarden::domain::session::{SessionCursor, SessionRecord};
use callwarden::domain::{Room, SessionId, SessionState};
use callwarden::store::StoreError;

use super::backend::Backend;
use super::support::*;

conformance! {
    async fn registered_sessions_read_back_exactly_as_registered(db) {
        let now = at(-1);
        let mut detailed = participant(Room::string("consult-7").unwrap(), "alice", at(30));
        detailed.grace = mins(2);
        detailed.note = Some("limit clipped to the budget".into());
        let sessions = register(&db.store, vec![detailed, session(1, at(45))], now).await;
        for s in &sessions {
            let stored = db.store.session(s.id).await.unwrap();
            assert_eq!(
                serde_json::to_value(&stored).unwrap(),
                serde_json::to_value(SessionRecord::registered(s, None, now)).unwrap()
            );
            let audit = audit_of(&db.store, s.id).await;
            assert_eq!(audit.len(), 1, "{audit:?}");
            assert_eq!(audit[0].event, "registered");
            assert_eq!(audit[0].provider.as_deref(), Some(PROVIDER));
            assert_eq!(audit[0].detail, s.registered_entry("test").detail);
            assert_eq!(audit[0].at, now.to_string());
        }
    }

    async fn registering_is_all_or_nothing(db) {
        let first = register(&db.store, vec![session(1, at(30))], at(0)).await.remove(0);
        let fresh = session(2, at(30));
        let clash = session(3, at(30));
        let clash = callwarden::domain::session::NewSession { id: first.id, ..clash };
        let refused = db.store.insert_sessions(&[fresh.clone(), clash], at(1), "test").await;
        assert!(matches!(refused, Err(StoreError::Sql(_))), "{refused:?}");
        assert!(matches!(db.store.session(fresh.id).await, Err(StoreError::NotFound(id)) if id == fresh.id));
        assert_eq!(db.store.session(first.id).await.unwrap().room_id, "1");
        assert_eq!(all_audit(&db.store).await.len(), 1, "no audit row of the refused batch");
        assert_chain_intact(&db.store, 1).await;
    }

    async fn an_unknown_session_is_not_found(db) {
        let id = SessionId::new();
        assert!(matches!(db.store.session(id).await, Err(StoreError::NotFound(x)) if x == id));
        assert!(matches!(db.store.end_session(id, at(0), "x").await, Err(StoreError::NotFound(x)) if x == id));
        let extended = db.store.extend_session(id, mins(5), Some(mins(10)), &[], at(0)).await;
        assert!(matches!(extended, Err(StoreError::NotFound(x)) if x == id), "{extended:?}");
        assert!(all_audit(&db.store).await.is_empty());
    }

    async fn ending_an_active_session_cancels_it_once(db) {
        let s = register(&db.store, vec![session(1, at(30))], at(0)).await.remove(0);
        db.store.end_session(s.id, at(5), "the call ended by itself").await.unwrap();
        let stored = db.store.session(s.id).await.unwrap();
        assert_eq!(stored.state, "cancelled");
        assert_eq!(stored.ended_at, Some(at(5).to_string()));
        assert_eq!(stored.updated_at, at(5).to_string());
        let audit = audit_of(&db.store, s.id).await;
        assert_eq!(audit.iter().map(|r| r.event.as_str()).collect::<Vec<_>>(), ["registered", "cancelled"]);
        assert_eq!(audit[1].detail.as_deref(), Some("the call ended by itself"));
        assert_eq!(audit[1].at, at(5).to_string());

        let again = db.store.end_session(s.id, at(6), "again").await;
        assert!(
            matches!(&again, Err(StoreError::NotActive { id, state, verb: "ended" }) if *id == s.id && state == "cancelled"),
            "{again:?}"
        );
        assert_eq!(events_of(&db.store, s.id).await.len(), 2, "a refused end writes nothing");
        assert_eq!(db.store.session(s.id).await.unwrap().ended_at, Some(at(5).to_string()));
    }

    async fn an_extension_moves_the_deadline_and_is_audited(db) {
        let s = register(&db.store, vec![session(1, at(30))], at(0)).await.remove(0);
        let deadline = db.store.extend_session(s.id, mins(10), None, &[], at(5)).await.unwrap();
        assert_eq!(deadline, at(40));
        let stored = db.store.session(s.id).await.unwrap();
        assert_eq!(stored.deadline, Some(at(40).to_string()));
        assert_eq!(stored.extended_ms, 600_000);
        assert_eq!(stored.updated_at, at(5).to_string());
        assert_eq!(stored.state, "active");
        let audit = audit_of(&db.store, s.id).await;
        assert_eq!(audit[1].event, "extended");
        assert_eq!(audit[1].detail, Some(format!("by 10m; deadline now {}", at(40))));
        assert_eq!(db.store.next_deadline().await.unwrap(), Some(at(40)));
    }

    async fn an_extension_is_exact_to_the_millisecond(db) {
        let s = register(&db.store, vec![session(1, at(30))], at(0)).await.remove(0);
        let mut expected = at(30).millis();
        // Odd amounts, and a sub-millisecond one rounded up: the deadline
        // never drifts from the sum of what was asked.
        for by in [Duration::from_millis(1), Duration::from_millis(90_001), Duration::from_micros(1_500)] {
            expected += callwarden::domain::duration_millis_ceil(by);
            let deadline = db.store.extend_session(s.id, by, None, &[], at(1)).await.unwrap();
            assert_eq!(deadline.millis(), expected);
        }
        let stored = db.store.session(s.id).await.unwrap();
        assert_eq!(stored.extended_ms, 1 + 90_001 + 2);
        assert_eq!(stored.deadline, Some(callwarden::domain::Instant::from_millis(expected).to_string()));
    }

    async fn an_extension_beyond_the_policy_limit_is_refused(db) {
        let s = register(&db.store, vec![session(1, at(30))], at(0)).await.remove(0);
        let limit = Some(mins(15));
        assert_eq!(db.store.extend_session(s.id, mins(10), limit, &[], at(1)).await.unwrap(), at(40));
        let refused = db.store.extend_session(s.id, mins(10), limit, &[], at(2)).await;
        assert!(
            matches!(refused, Err(StoreError::ExtensionLimit { id, used_ms: 600_000, asked_ms: 600_000, max_ms: 900_000 }) if id == s.id),
            "{refused:?}"
        );
        let stored = db.store.session(s.id).await.unwrap();
        assert_eq!((stored.deadline, stored.extended_ms), (Some(at(40).to_string()), 600_000));
        assert_eq!(events_of(&db.store, s.id).await, ["registered", "extended"]);
        // Exactly up to the limit is allowed.
        assert_eq!(db.store.extend_session(s.id, mins(5), limit, &[], at(3)).await.unwrap(), at(45));
        assert_eq!(db.store.session(s.id).await.unwrap().extended_ms, 900_000);
    }

    async fn only_an_active_session_can_be_extended(db) {
        let [ended, claimed] = <[_; 2]>::try_from(
            register(&db.store, vec![session(1, at(30)), session(2, at(10))], at(0)).await,
        )
        .unwrap();
        db.store.end_session(ended.id, at(1), "done").await.unwrap();
        let refused = db.store.extend_session(ended.id, mins(5), Some(mins(60)), &[], at(2)).await;
        assert!(
            matches!(&refused, Err(StoreError::NotActive { id, state, verb: "extended" }) if *id == ended.id && state == "cancelled"),
            "{refused:?}"
        );
        assert_eq!(db.store.claim_due(at(10), at(10), 10).await.unwrap().len(), 1);
        let refused = db.store.extend_session(claimed.id, mins(5), None, &[], at(10)).await;
        assert!(
            matches!(&refused, Err(StoreError::NotActive { id, state, verb: "extended" }) if *id == claimed.id && state == "enforcing"),
            "{refused:?}"
        );
        assert_eq!(db.store.session(claimed.id).await.unwrap().deadline, Some(at(10).to_string()));
    }

    async fn a_session_whose_call_was_sent_can_no_longer_be_ended_or_extended(db) {
        let s = register(&db.store, vec![session(1, at(30))], at(0)).await.remove(0);
        assert_eq!(db.store.claim_due(at(30), at(30), 10).await.unwrap().len(), 1);
        db.store.record_attempt(&[s.id], &attempt_entry(1), None, at(30)).await.unwrap();
        assert_eq!(db.store.requeue_interrupted(at(31), "restarted").await.unwrap(), 1);
        let stored = db.store.session(s.id).await.unwrap();
        assert_eq!((stored.state.as_str(), stored.attempts), ("active", 1));

        let ended = db.store.end_session(s.id, at(32), "x").await;
        assert!(matches!(ended, Err(StoreError::AlreadyCalled { id, verb: "ended" }) if id == s.id), "{ended:?}");
        for limit in [None, Some(mins(60))] {
            let extended = db.store.extend_session(s.id, mins(5), limit, &[], at(32)).await;
            assert!(
                matches!(extended, Err(StoreError::AlreadyCalled { id, verb: "extended" }) if id == s.id),
                "{extended:?}"
            );
        }
        assert_eq!(state_of(&db.store, s.id).await, "active");
        assert_eq!(events_of(&db.store, s.id).await, ["registered", "attempt", "recovered"]);
    }

    async fn list_sessions_orders_by_deadline_and_filters_by_state(db) {
        let [late, early, middle] = <[_; 3]>::try_from(
            register(&db.store, vec![session(3, at(50)), session(1, at(10)), session(2, at(30))], at(0)).await,
        )
        .unwrap();
        db.store.end_session(middle.id, at(1), "done").await.unwrap();
        let ids = |rows: Vec<SessionRecord>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let text = |s: &callwarden::domain::session::NewSession| s.id.to_string();
        assert_eq!(ids(db.store.list_sessions(None, None, 10).await.unwrap()), [text(&early), text(&middle), text(&late)]);
        assert_eq!(ids(db.store.list_sessions(None, None, 2).await.unwrap()), [text(&early), text(&middle)]);
        assert_eq!(
            ids(db.store.list_sessions(Some(SessionState::Active), None, 10).await.unwrap()),
            [text(&early), text(&late)]
        );
        assert_eq!(ids(db.store.list_sessions(Some(SessionState::Cancelled), None, 10).await.unwrap()), [text(&middle)]);
        assert!(db.store.list_sessions(Some(SessionState::Failed), None, 10).await.unwrap().is_empty());
    }

    async fn the_session_list_pages_by_keyset_without_losing_or_repeating_a_row(db) {
        // Twenty sessions, many sharing a deadline; one cancelled.
        let all: Vec<_> = (0..20).map(|i| session(i + 1, at(10 + (i as i64 % 4) * 10))).collect();
        let registered = register(&db.store, all, at(0)).await;
        db.store.end_session(registered[5].id, at(1), "done").await.unwrap();
        for (state, expected) in [(None, 20), (Some(SessionState::Active), 19)] {
            let mut seen = Vec::new();
            let mut after: Option<SessionCursor> = None;
            loop {
                let page = db.store.list_sessions(state, after.as_ref(), 3).await.unwrap();
                if page.is_empty() {
                    break;
                }
                after = page.last().map(SessionCursor::after);
                seen.extend(page);
            }
            assert_eq!(seen.len(), expected, "{state:?}");
            let mut ids: Vec<&str> = seen.iter().map(|r| r.id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), expected, "a row came twice: {state:?}");
            let keys: Vec<_> = seen.iter().map(|r| (r.deadline.clone(), r.created_at.clone(), r.id.clone())).collect();
            assert!(keys.windows(2).all(|w| w[0] < w[1]), "out of order: {state:?}");
        }
        // The token round-trips; junk is not a token.
        let first = db.store.list_sessions(None, None, 1).await.unwrap();
        let cursor = SessionCursor::after(&first[0]);
        assert_eq!(SessionCursor::parse(&cursor.token()), Some(cursor.clone()));
        assert_eq!(SessionCursor::parse("not a token"), None);
        assert_eq!(SessionCursor::parse(""), None);
        // A well-formed token with a time that is not one is refused, not
        // handed to the database (PostgreSQL would fail the whole query).
        let forged = SessionCursor { created_at: "yesterday".into(), ..cursor.clone() };
        assert_eq!(SessionCursor::parse(&forged.token()), None);
        let forged = SessionCursor { deadline: Some("2026-13-45T99:00:00Z".into()), ..cursor };
        assert_eq!(SessionCursor::parse(&forged.token()), None);
    }

    async fn state_counts_count_sessions_per_state_in_state_order(db) {
        assert!(db.store.state_counts().await.unwrap().is_empty());
        let s = register(
            &db.store,
            vec![session(1, at(5)), session(2, at(30)), session(3, at(30)), session(4, at(30))],
            at(0),
        )
        .await;
        db.store.end_session(s[1].id, at(1), "done").await.unwrap();
        assert_eq!(db.store.claim_due(at(5), at(5), 10).await.unwrap().len(), 1);
        assert_eq!(
            db.store.state_counts().await.unwrap(),
            [("active".to_string(), 2), ("cancelled".to_string(), 1), ("enforcing".to_string(), 1)]
        );
    }

    async fn state_counts_follow_every_write_plain_sql_and_pruning_included(db) {
        let s = register(&db.store, vec![session(1, at(5)), session(2, at(30)), session(3, at(90))], at(0)).await;
        db.insert_plain_row(&plain_row("41", at(-1))).await;
        db.insert_plain_row(&plain_row("42", at(-1))).await;
        db.store.end_session(s[0].id, at(1), "done").await.unwrap();
        assert_eq!(db.store.claim_due(at(30), at(30), 10).await.unwrap().len(), 1);
        db.store
            .record_outcome(&[AuditEntry::new("enforced", s[1].id)], Some((SessionState::Enforced, None)), at(30))
            .await
            .unwrap();
        let counted = |rows: Vec<callwarden::domain::session::SessionRecord>| {
            let mut by_state = std::collections::BTreeMap::new();
            for r in rows {
                *by_state.entry(r.state).or_insert(0i64) += 1;
            }
            by_state.into_iter().collect::<Vec<_>>()
        };
        let expect = counted(db.store.list_sessions(None, None, 100).await.unwrap());
        assert_eq!(expect, [("active".to_string(), 3), ("cancelled".to_string(), 1), ("enforced".to_string(), 1)]);
        assert_eq!(db.store.state_counts().await.unwrap(), expect);
        assert_eq!(db.store.prune_sessions(at(60)).await.unwrap(), 2);
        assert_eq!(db.store.state_counts().await.unwrap(), [("active".to_string(), 3)]);
    }

    async fn pruning_deletes_only_settled_sessions_last_changed_before_the_cutoff(db) {
        let s = register(
            &db.store,
            vec![session(1, at(20)), session(2, at(30)), session(3, at(30)), session(4, at(90)), session(5, at(200))],
            at(0),
        )
        .await;
        let (enforced, old_cancelled, recent_cancelled, claimed, running) = (&s[0], &s[1], &s[2], &s[3], &s[4]);
        db.store.end_session(old_cancelled.id, at(10), "done").await.unwrap();
        assert_eq!(db.store.claim_due(at(20), at(20), 10).await.unwrap().len(), 1);
        db.store
            .record_outcome(&[AuditEntry::new("enforced", enforced.id)], Some((SessionState::Enforced, None)), at(20))
            .await
            .unwrap();
        db.store.end_session(recent_cancelled.id, at(120), "done").await.unwrap();
        assert_eq!(db.store.claim_due(at(90), at(30), 10).await.unwrap().len(), 1);

        assert_eq!(db.store.prune_sessions(at(60)).await.unwrap(), 2);
        for gone in [enforced, old_cancelled] {
            assert!(matches!(db.store.session(gone.id).await, Err(StoreError::NotFound(_))));
        }
        assert_eq!(state_of(&db.store, recent_cancelled.id).await, "cancelled");
        assert_eq!(state_of(&db.store, claimed.id).await, "enforcing", "unsettled, however old");
        assert_eq!(state_of(&db.store, running.id).await, "active", "unsettled, however old");
        // The audit log keeps its own retention.
        assert_eq!(events_of(&db.store, old_cancelled.id).await, ["registered", "cancelled"]);
        assert_eq!(db.store.prune_sessions(at(60)).await.unwrap(), 0);
    }

    async fn backup_copies_the_database_consistently(db) {
        let s = register(&db.store, vec![session(1, at(30)), session(2, at(40))], at(0)).await;
        if db.backend == Backend::Postgres {
            // PostgreSQL is backed up with its own tools; the store says so.
            let refused = db.store.backup(&db.scratch("copy.db")).await;
            assert!(matches!(&refused, Err(StoreError::NoFileBackup(_))), "{refused:?}");
            assert!(refused.unwrap_err().to_string().contains("pg_dump"));
            return;
        }
        db.store.end_session(s[1].id, at(1), "done").await.unwrap();
        let target = db.scratch("copy.db");
        db.store.backup(&target).await.unwrap();
        // Later writes are not in the copy.
        db.store.end_session(s[0].id, at(2), "done").await.unwrap();

        let copy = db.open_backup(&target).await;
        assert_eq!(
            copy.state_counts().await.unwrap(),
            [("active".to_string(), 1), ("cancelled".to_string(), 1)]
        );
        assert_eq!(copy.session(s[1].id).await.unwrap().ended_at, Some(at(1).to_string()));
        let head = assert_chain_intact(&copy, 3).await;
        assert_eq!(head.0, 3);
        assert_eq!(all_audit(&copy).await[2].hash.as_deref(), Some(head.1.as_str()));
        copy.close().await;
    }

    async fn backup_refuses_an_existing_target(db) {
        register(&db.store, vec![session(1, at(30))], at(0)).await;
        if db.backend == Backend::Postgres {
            return; // No file backups at all (see the test above).
        }
        let target = db.scratch("taken.db");
        std::fs::write(&target, "someone else's file").unwrap();
        let refused = db.store.backup(&target).await;
        assert!(matches!(&refused, Err(StoreError::BackupExists(p)) if *p == target), "{refused:?}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "someone else's file");
    }
}
