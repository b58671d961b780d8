//! What webhooks tell the store: event times per room and participant
//! (duplicates and stale events change nothing), sessions opened and ended
//! by presence, and outcome reports that settle accepted removals.

use std::time::Duration;

use callwarden::domain::audit::AuditEntry;
use callwarden::domain::session::NewSession;
use callwarden::domain::{Room, SessionId, SessionState};
use callwarden::store::{PresenceChange, PresenceMark, PresenceWrite, Store, StoreError};

use super::support::*;

/// Claims `sessions` (due at `at(1)`) and records that the provider
/// accepted their removal, to report the outcome later.
async fn accepted(store: &Store, sessions: &[&NewSession]) {
    let ids: Vec<SessionId> = sessions.iter().map(|s| s.id).collect();
    let claimed = store.claim_due(at(1), at(1), 100).await.unwrap();
    let claimed: Vec<_> = claimed.into_iter().map(|c| c.unwrap().id).collect();
    assert!(ids.iter().all(|id| claimed.contains(id)), "{ids:?} due by at(1)");
    let entries: Vec<_> = ids.iter().map(|id| AuditEntry::new("accepted", *id)).collect();
    store.record_outcome(&entries, Some((SessionState::Accepted, None)), at(2)).await.unwrap();
}

fn call(id: &str) -> Room {
    Room::call(id).unwrap()
}

fn write(
    provider: &str,
    room: &Room,
    who: &str,
    ms: i64,
    event: &'static str,
    changes: Vec<PresenceChange>,
) -> PresenceWrite {
    let mark = PresenceMark {
        provider: provider.into(),
        room: room.clone(),
        participant: who.into(),
        event_ms: ms,
        event,
    };
    PresenceWrite { mark, changes, now: at(0) }
}

/// Applies one event through the store's batch operation.
async fn apply(store: &Store, w: PresenceWrite) -> Result<Option<u32>, StoreError> {
    let mut answers = store.apply_presence(&[w]).await.unwrap();
    assert_eq!(answers.len(), 1);
    answers.pop().unwrap()
}

/// Records an event with no changes; whether it was newer than what is known.
async fn mark(store: &Store, provider: &str, room: &Room, who: &str, ms: i64, event: &'static str) -> bool {
    apply(store, write(provider, room, who, ms, event, vec![])).await.unwrap().is_some()
}

/// Opens `s` as an `entered` event of its own (a fresh mark, so only the
/// session decides); whether a session was added.
async fn open(store: &Store, s: &NewSession, now_at: i64, detail: &str) -> bool {
    let change = PresenceChange::Open { session: s.clone(), detail: detail.into() };
    let w = PresenceWrite {
        now: at(now_at),
        ..write(PROVIDER, &s.room, &s.id.to_string(), 1, "entered", vec![change])
    };
    apply(store, w).await.unwrap() == Some(1)
}

/// Ends a room's sessions (or one participant's) as a fresh event; how many.
async fn end(store: &Store, room: &Room, user: Option<&str>, now_at: i64, detail: &str) -> u32 {
    let change = PresenceChange::End { user: user.map(super::support::user), detail: detail.into() };
    let w = PresenceWrite {
        now: at(now_at),
        ..write(PROVIDER, room, &format!("end-{now_at}"), 1, "left", vec![change])
    };
    apply(store, w).await.unwrap().unwrap()
}

conformance! {
    async fn a_duplicate_presence_event_changes_nothing(db) {
        let room = Room::Numeric(5);
        assert_eq!(db.store.last_event(PROVIDER, &room, "alice").await.unwrap(), None);
        assert!(mark(&db.store, PROVIDER, &room, "alice", 1_000, "entered").await);
        assert!(!mark(&db.store, PROVIDER, &room, "alice", 1_000, "entered").await);
        // Same instant, another event: still not newer.
        assert!(!mark(&db.store, PROVIDER, &room, "alice", 1_000, "left").await);
        assert_eq!(db.store.last_event(PROVIDER, &room, "alice").await.unwrap(), Some((1_000, "entered".to_string())));
        // A duplicate's changes are not made.
        let s = participant(room.clone(), "alice", at(30));
        let again = write(PROVIDER, &room, "alice", 1_000, "entered", vec![PresenceChange::Open { session: s.clone(), detail: "webhook".into() }]);
        assert_eq!(apply(&db.store, again).await.unwrap(), None);
        assert!(matches!(db.store.session(s.id).await, Err(StoreError::NotFound(_))));
    }

    async fn an_older_presence_event_changes_nothing_and_a_newer_one_wins(db) {
        let room = Room::Numeric(5);
        assert!(mark(&db.store, PROVIDER, &room, "", 2_000, "opened").await);
        assert!(!mark(&db.store, PROVIDER, &room, "", 1_500, "closed").await);
        assert_eq!(db.store.last_event(PROVIDER, &room, "").await.unwrap(), Some((2_000, "opened".to_string())));
        assert!(mark(&db.store, PROVIDER, &room, "", 2_001, "closed").await);
        assert_eq!(db.store.last_event(PROVIDER, &room, "").await.unwrap(), Some((2_001, "closed".to_string())));
    }

    async fn presence_is_kept_per_provider_room_and_participant(db) {
        let numeric = Room::Numeric(123);
        let string = Room::string("123").unwrap();
        assert!(mark(&db.store, PROVIDER, &numeric, "alice", 5_000, "entered").await);
        // Each of these is another key, so an older time is still news.
        assert!(mark(&db.store, PROVIDER, &string, "alice", 1_000, "left").await);
        assert!(mark(&db.store, PROVIDER, &numeric, "", 1_000, "opened").await);
        assert!(mark(&db.store, "trtc-eu", &numeric, "alice", 1_000, "left").await);
        assert!(mark(&db.store, PROVIDER, &numeric, "bob", 1_000, "entered").await);

        let last = |provider: &'static str, room: Room, who: &'static str| {
            let store = db.store.clone();
            async move { store.last_event(provider, &room, who).await.unwrap() }
        };
        assert_eq!(last(PROVIDER, numeric.clone(), "alice").await, Some((5_000, "entered".into())));
        assert_eq!(last(PROVIDER, string.clone(), "alice").await, Some((1_000, "left".into())));
        assert_eq!(last(PROVIDER, numeric.clone(), "").await, Some((1_000, "opened".into())));
        assert_eq!(last("trtc-eu", numeric.clone(), "alice").await, Some((1_000, "left".into())));
        assert_eq!(last(PROVIDER, string, "").await, None);
        assert_eq!(last("acs", numeric, "alice").await, None);
    }

    async fn pruning_presence_forgets_only_old_events(db) {
        let room = Room::Numeric(8);
        assert!(mark(&db.store, PROVIDER, &room, "old", 1_000, "entered").await);
        assert!(mark(&db.store, PROVIDER, &room, "new", 5_000, "entered").await);
        assert_eq!(db.store.prune_presence(2_000).await.unwrap(), 1);
        assert_eq!(db.store.last_event(PROVIDER, &room, "old").await.unwrap(), None);
        assert_eq!(db.store.last_event(PROVIDER, &room, "new").await.unwrap(), Some((5_000, "entered".into())));
    }

    async fn an_event_whose_changes_fail_is_not_recorded_so_its_retry_applies(db) {
        let room = Room::Numeric(6);
        let taken = participant(room.clone(), "bob", at(30));
        register(&db.store, vec![taken.clone()], at(0)).await;
        // Alice's session clashes with an existing id: the insert fails.
        let clash = NewSession { id: taken.id, ..participant(room.clone(), "alice", at(30)) };
        let failing = write(PROVIDER, &room, "alice", 1_000, "entered", vec![PresenceChange::Open { session: clash, detail: "webhook".into() }]);
        assert!(apply(&db.store, failing).await.is_err());
        assert_eq!(db.store.last_event(PROVIDER, &room, "alice").await.unwrap(), None, "the event is not marked seen");
        // The provider's retry (the same event) is applied.
        let alice = participant(room.clone(), "alice", at(30));
        let retry = write(PROVIDER, &room, "alice", 1_000, "entered", vec![PresenceChange::Open { session: alice.clone(), detail: "webhook".into() }]);
        assert_eq!(apply(&db.store, retry).await.unwrap(), Some(1));
        assert_eq!(state_of(&db.store, alice.id).await, "active");
        assert_chain_intact(&db.store, 2).await;
    }

    async fn in_a_batch_a_failing_event_fails_alone(db) {
        let room = Room::Numeric(7);
        let taken = participant(room.clone(), "zed", at(30));
        register(&db.store, vec![taken.clone()], at(0)).await;
        let (a, b) = (participant(room.clone(), "a", at(30)), participant(room.clone(), "b", at(30)));
        let open = |s: &NewSession| vec![PresenceChange::Open { session: s.clone(), detail: "webhook".into() }];
        let clash = NewSession { id: taken.id, ..participant(room.clone(), "c", at(30)) };
        let batch = [
            write(PROVIDER, &room, "a", 1_000, "entered", open(&a)),
            write(PROVIDER, &room, "c", 1_000, "entered", open(&clash)),
            write(PROVIDER, &room, "b", 1_000, "entered", open(&b)),
        ];
        let answers = db.store.apply_presence(&batch).await.unwrap();
        assert!(matches!(answers[0], Ok(Some(1))), "{answers:?}");
        assert!(answers[1].is_err(), "{answers:?}");
        assert!(matches!(answers[2], Ok(Some(1))), "{answers:?}");
        for s in [&a, &b] {
            assert_eq!(state_of(&db.store, s.id).await, "active");
        }
        assert_eq!(db.store.last_event(PROVIDER, &room, "c").await.unwrap(), None);
        assert_chain_intact(&db.store, 3).await;
    }

    async fn open_opens_one_session_per_policy_room_and_participant(db) {
        let room = Room::Numeric(5);
        let mut alice = participant(room.clone(), "alice", at(30));
        alice.warn_before = vec![mins(5)];
        assert!(open(&db.store, &alice, 0, "opened by a webhook").await);
        let audit = audit_of(&db.store, alice.id).await;
        assert_eq!(audit.len(), 1);
        assert_eq!((audit[0].event.as_str(), audit[0].detail.clone()), ("registered", alice.registered_entry("opened by a webhook").detail));
        assert_eq!(db.store.next_notification_due().await.unwrap(), Some(at(25)), "its warnings are armed");

        let repeat = participant(room.clone(), "alice", at(40));
        assert!(!open(&db.store, &repeat, 1, "again").await);
        assert!(matches!(db.store.session(repeat.id).await, Err(StoreError::NotFound(_))));
        assert!(events_of(&db.store, repeat.id).await.is_empty());

        let whole_room = session(5, at(30));
        let others = [
            participant(room.clone(), "bob", at(30)),
            whole_room.clone(),
            NewSession { policy: "paid-chat".into(), ..participant(room.clone(), "alice", at(30)) },
            participant(Room::string("5").unwrap(), "alice", at(30)),
        ];
        for s in &others {
            assert!(open(&db.store, s, 1, "webhook").await, "{s:?}");
        }
        let second_whole_room = session(5, at(50));
        assert!(!open(&db.store, &second_whole_room, 1, "webhook").await);

        db.store.end_session(alice.id, at(2), "left").await.unwrap();
        let rejoined = participant(room, "alice", at(60));
        assert!(open(&db.store, &rejoined, 3, "webhook").await, "the first one ended");
        assert_eq!(db.store.state_counts().await.unwrap(), [("active".to_string(), 5), ("cancelled".to_string(), 1)]);
    }

    async fn the_same_participant_opened_at_once_from_two_handles_gets_one_session(db) {
        let other = db.another_handle().await;
        let attempts: Vec<_> = (0..8)
            .map(|k| {
                let store = if k % 2 == 0 { db.store.clone() } else { other.clone() };
                let s = participant(Room::Numeric(5), "alice", at(30));
                tokio::spawn(async move { open(&store, &s, 0, "webhook").await })
            })
            .collect();
        let mut opened = 0;
        for a in attempts {
            opened += usize::from(a.await.unwrap());
        }
        assert_eq!(opened, 1);
        assert_eq!(db.store.state_counts().await.unwrap(), [("active".to_string(), 1)]);
        assert_eq!(all_audit(&db.store).await.len(), 1);
        other.close().await;
    }

    async fn end_ends_a_rooms_sessions_or_one_participants(db) {
        let room = Room::Numeric(9);
        let alice = participant(room.clone(), "alice", at(30));
        let bob = participant(room.clone(), "bob", at(30));
        let whole = session(9, at(30));
        let elsewhere = participant(Room::Numeric(10), "alice", at(30));
        let other_provider = NewSession { provider: "trtc-eu".into(), ..participant(room.clone(), "alice", at(30)) };
        let claimed = participant(room.clone(), "carol", at(1));
        let all = vec![alice.clone(), bob.clone(), whole.clone(), elsewhere.clone(), other_provider.clone(), claimed.clone()];
        register(&db.store, all, at(0)).await;
        assert_eq!(db.store.claim_due(at(1), at(1), 10).await.unwrap().len(), 1);

        assert_eq!(end(&db.store, &room, Some("alice"), 5, "alice left").await, 1);
        let row = db.store.session(alice.id).await.unwrap();
        assert_eq!((row.state.as_str(), row.detail.as_deref()), ("cancelled", Some("alice left")));
        assert_eq!(row.ended_at, Some(at(5).to_string()));
        let audit = audit_of(&db.store, alice.id).await;
        let last = audit.last().unwrap();
        assert_eq!((last.event.as_str(), last.provider.as_deref(), last.detail.as_deref()), ("ended", Some(PROVIDER), Some("alice left")));

        assert_eq!(end(&db.store, &room, None, 6, "room closed").await, 2);
        for ended in [&bob, &whole] {
            assert_eq!(state_of(&db.store, ended.id).await, "cancelled");
        }
        for untouched in [&elsewhere, &other_provider] {
            assert_eq!(state_of(&db.store, untouched.id).await, "active");
        }
        assert_eq!(state_of(&db.store, claimed.id).await, "enforcing", "enforcement under way is not undone");
        assert_eq!(end(&db.store, &room, None, 7, "again").await, 0);
    }

    async fn active_participants_lists_each_user_once(db) {
        let room = Room::Numeric(9);
        let dave = participant(room.clone(), "dave", at(30));
        register(
            &db.store,
            vec![
                participant(room.clone(), "alice", at(30)),
                NewSession { policy: "paid-chat".into(), ..participant(room.clone(), "alice", at(30)) },
                participant(room.clone(), "bob", at(30)),
                session(9, at(30)),
                NewSession { provider: "trtc-eu".into(), ..participant(room.clone(), "carol", at(30)) },
                participant(Room::string("9").unwrap(), "erin", at(30)),
                dave.clone(),
            ],
            at(0),
        )
        .await;
        db.store.end_session(dave.id, at(1), "left").await.unwrap();
        let mut users = db.store.active_participants(PROVIDER, &room).await.unwrap();
        users.sort();
        assert_eq!(users, ["alice", "bob"]);
        assert!(db.store.active_participants(PROVIDER, &Room::Numeric(10)).await.unwrap().is_empty());
    }

    async fn confirm_session_settles_an_accepted_session_once(db) {
        db.store.set_outcome_notifications(true).await.unwrap();
        let a = participant(call("call-1"), "8:acs:a", at(1));
        let b = participant(call("call-1"), "8:acs:b", at(1));
        let running = participant(call("call-1"), "8:acs:c", at(30));
        register(&db.store, vec![a.clone(), b.clone(), running.clone()], at(0)).await;
        accepted(&db.store, &[&a]).await;
        // b is still enforcing: a report can overtake the record of the answer.
        let entry = |id| AuditEntry::new("confirmed", id).detail("RemoveParticipantSucceeded on call call-1");

        assert!(db.store.confirm_session(a.id, SessionState::Enforced, &entry(a.id), at(5)).await.unwrap());
        let row = db.store.session(a.id).await.unwrap();
        assert_eq!((row.state.as_str(), row.detail.as_deref()), ("enforced", Some("RemoveParticipantSucceeded on call call-1")));
        assert_eq!(row.ended_at, Some(at(5).to_string()));
        let last = audit_of(&db.store, a.id).await.pop().unwrap();
        assert_eq!((last.event.as_str(), last.provider.as_deref()), ("confirmed", Some(PROVIDER)), "the provider is the session's");
        let queued = db.store.claim_notifications(at(5), Duration::from_secs(30), 10).await.unwrap();
        assert_eq!(queued.iter().map(|n| (n.session_id.clone(), n.event.as_str())).collect::<Vec<_>>(), [(a.id.to_string(), "enforced")]);

        let audit_before = all_audit(&db.store).await.len();
        assert!(!db.store.confirm_session(a.id, SessionState::Failed, &entry(a.id), at(6)).await.unwrap(), "a duplicate report");
        assert!(!db.store.confirm_session(running.id, SessionState::Enforced, &entry(running.id), at(6)).await.unwrap());
        let unknown = SessionId::new();
        assert!(!db.store.confirm_session(unknown, SessionState::Enforced, &entry(unknown), at(6)).await.unwrap());
        assert_eq!(all_audit(&db.store).await.len(), audit_before, "refused reports write nothing");
        assert_eq!(state_of(&db.store, a.id).await, "enforced");
        assert_eq!(state_of(&db.store, running.id).await, "active");

        let failed = AuditEntry { error_code: Some("8523/0".into()), ..AuditEntry::new("failed", b.id) };
        assert!(db.store.confirm_session(b.id, SessionState::Failed, &failed, at(7)).await.unwrap());
        assert_eq!(state_of(&db.store, b.id).await, "failed");
    }

    async fn unconfirmed_acceptances_are_settled_after_the_bound(db) {
        let old = participant(call("call-1"), "8:acs:a", at(1));
        let recent = participant(call("call-1"), "8:acs:b", at(1));
        let elsewhere = NewSession { provider: "acs-eu".into(), ..participant(call("call-2"), "8:acs:c", at(1)) };
        register(&db.store, vec![old.clone(), recent.clone(), elsewhere.clone()], at(0)).await;
        assert_eq!(db.store.claim_due(at(1), at(1), 10).await.unwrap().len(), 3);
        db.store.record_outcome(&[AuditEntry::new("accepted", old.id), AuditEntry::new("accepted", elsewhere.id)], Some((SessionState::Accepted, None)), at(2)).await.unwrap();
        db.store.record_outcome(&[AuditEntry::new("accepted", recent.id)], Some((SessionState::Accepted, None)), at(20)).await.unwrap();

        assert_eq!(db.store.settle_unconfirmed(PROVIDER, at(10), at(30), "no report").await.unwrap(), 1);
        let row = db.store.session(old.id).await.unwrap();
        assert_eq!((row.state.as_str(), row.detail.as_deref()), ("enforced", Some("no report")));
        assert_eq!(row.ended_at, Some(at(30).to_string()), "it stops counting against the budget");
        let last = audit_of(&db.store, old.id).await.pop().unwrap();
        assert_eq!((last.event.as_str(), last.outcome.as_deref()), ("unconfirmed", Some("enforced")));
        assert_eq!(state_of(&db.store, recent.id).await, "accepted", "accepted after the bound");
        assert_eq!(state_of(&db.store, elsewhere.id).await, "accepted", "another provider's");
        assert_eq!(db.store.settle_unconfirmed(PROVIDER, at(10), at(31), "again").await.unwrap(), 0);
    }

    async fn confirm_call_settles_every_accepted_removal_of_the_call(db) {
        let a = participant(call("call-1"), "8:acs:a", at(1));
        let b = participant(call("call-1"), "8:acs:b", at(1));
        let enforcing = participant(call("call-1"), "8:acs:c", at(1));
        let other_call = participant(call("call-2"), "8:acs:d", at(1));
        let same_name = participant(Room::string("call-1").unwrap(), "e", at(1));
        register(&db.store, vec![a.clone(), b.clone(), enforcing.clone(), other_call.clone(), same_name.clone()], at(0)).await;
        let claimed = db.store.claim_due(at(1), at(1), 100).await.unwrap();
        assert_eq!(claimed.len(), 5);
        let entries: Vec<_> = [&a, &b, &other_call, &same_name].iter().map(|s| AuditEntry::new("accepted", s.id)).collect();
        db.store.record_outcome(&entries, Some((SessionState::Accepted, None)), at(2)).await.unwrap();

        let entry = AuditEntry {
            event: "confirmed",
            detail: Some("CallDisconnected: call call-1 ended".into()),
            ..AuditEntry::default()
        };
        assert_eq!(db.store.confirm_call("call-1", &entry, at(5)).await.unwrap(), 2);
        for s in [&a, &b] {
            let row = db.store.session(s.id).await.unwrap();
            assert_eq!((row.state.as_str(), row.detail.as_deref()), ("enforced", Some("CallDisconnected: call call-1 ended")));
            let last = audit_of(&db.store, s.id).await.pop().unwrap();
            assert_eq!((last.event.as_str(), last.provider.as_deref()), ("confirmed", Some(PROVIDER)));
            assert_eq!(last.session_id, Some(s.id.to_string()));
        }
        assert_eq!(state_of(&db.store, enforcing.id).await, "enforcing");
        assert_eq!(state_of(&db.store, other_call.id).await, "accepted");
        assert_eq!(state_of(&db.store, same_name.id).await, "accepted", "a string room is not a call");
        assert_eq!(db.store.confirm_call("call-1", &entry, at(6)).await.unwrap(), 0);
    }
}
