//! Leases, where several daemons share the database (PostgreSQL): one
//! holder per bucket at a time, renewed only under its term, granted to
//! another (under a larger term) once expired by the server's clock, free
//! at once when given up; and a claim under a lease that ran out takes
//! nothing. An embedded database has no leases: these tests check that
//! `lease_connection` says so, and stop there.

use std::time::Duration;

use callwarden::domain::lease::Led;

use super::support::*;

const SHORT_TTL: Duration = Duration::from_millis(300);

/// No leases: only an embedded database, whose one daemon leads everything.
fn embedded(store: &callwarden::store::Store) {
    assert!(store.sqlite_path().is_some(), "only an embedded database has no leases");
}

conformance! {
    async fn overdue_sessions_of_a_provider_no_instance_leads_are_failed_and_no_others(db) {
        use callwarden::domain::Room;
        use callwarden::domain::session::NewSession;
        // "gone": in no instance's configuration (a provider renamed or
        // removed); "acs": another instance's (it holds the lease); "trtc":
        // this instance's.
        let gone = |room, deadline| NewSession { provider: "gone".into(), ..session(room, deadline) };
        let acs = NewSession { provider: "acs".into(), ..participant(Room::call("call-9").unwrap(), "8:acs:z", at(1)) };
        let s = register(&db.store, vec![gone(1, at(1)), acs, session(2, at(1)), gone(3, at(70))], at(0)).await;
        let lease = db.store.lease_connection().await.unwrap();
        if let Some(mut other) = lease {
            other.acquire("acs", "another-instance", Duration::from_secs(60)).await.unwrap().expect("free");
        }
        let configured = ["trtc".to_string()];
        let failed = db.store.fail_unled(&configured, at(60), at(61), 10).await.unwrap();
        let states = async || {
            let mut states = Vec::new();
            for x in &s {
                states.push(state_of(&db.store, x.id).await);
            }
            states
        };
        if db.store.sqlite_path().is_some() {
            // The one daemon claims every provider's sessions, and fails
            // those of a provider it lacks at their deadline.
            assert_eq!(failed, 0);
            assert_eq!(states().await, ["active"; 4]);
            return;
        }
        assert_eq!(failed, 1);
        assert_eq!(states().await, ["failed", "active", "active", "active"], "only the overdue session nobody leads");
        assert_eq!(events_of(&db.store, s[0].id).await, ["registered", "failed"]);
        let detail = db.store.session(s[0].id).await.unwrap().detail.unwrap_or_default();
        assert!(detail.contains("\"gone\"") && detail.contains("no running instance"), "{detail}");
        assert_eq!(db.store.fail_unled(&configured, at(60), at(62), 10).await.unwrap(), 0, "failed once");
    }

    async fn a_lease_has_one_holder_at_a_time_and_passes_on_only_when_it_expires(db) {
        let Some(mut a) = db.store.lease_connection().await.unwrap() else { return embedded(&db.store) };
        let mut b = db.store.lease_connection().await.unwrap().unwrap();
        let first = a.acquire("trtc", "a", SHORT_TTL).await.unwrap().expect("free");
        assert_eq!(b.acquire("trtc", "b", SHORT_TTL).await.unwrap(), None, "held by a");
        assert!(a.renew("trtc", "a", first, SHORT_TTL).await.unwrap());
        assert!(!a.renew("trtc", "a", first + 1, SHORT_TTL).await.unwrap(), "only under its own term");
        assert!(!b.renew("trtc", "b", first, SHORT_TTL).await.unwrap(), "only by its holder");
        // Another bucket is another lease.
        assert!(b.acquire("acs", "b", SHORT_TTL).await.unwrap().is_some());

        tokio::time::sleep(SHORT_TTL + Duration::from_millis(100)).await;
        assert!(!a.renew("trtc", "a", first, SHORT_TTL).await.unwrap(), "expired: not renewed");
        let second = b.acquire("trtc", "b", SHORT_TTL).await.unwrap().expect("expired, so free");
        assert!(second > first, "a later grant has a larger term ({second} after {first})");
        let leases = b.leases().await.unwrap();
        let trtc = leases.iter().find(|l| l.0 == "trtc").unwrap();
        assert_eq!((trtc.1.as_str(), trtc.2), ("b", second));
        assert!(trtc.3 > 0 && trtc.3 <= SHORT_TTL.as_millis() as i64, "{trtc:?}");
        // Its own holder may take a lease afresh, under a new term.
        let third = b.acquire("trtc", "b", SHORT_TTL).await.unwrap().expect("b's own");
        assert!(third > second);
    }

    async fn a_lease_given_up_is_free_at_once(db) {
        let Some(mut a) = db.store.lease_connection().await.unwrap() else { return embedded(&db.store) };
        let mut b = db.store.lease_connection().await.unwrap().unwrap();
        a.acquire("trtc", "a", Duration::from_secs(60)).await.unwrap().unwrap();
        a.acquire("maintenance", "a", Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!(b.acquire("trtc", "b", Duration::from_secs(60)).await.unwrap(), None);
        assert_eq!(a.resign("a").await.unwrap(), 2);
        assert!(b.acquire("trtc", "b", Duration::from_secs(60)).await.unwrap().is_some());
        assert!(b.acquire("maintenance", "b", Duration::from_secs(60)).await.unwrap().is_some());
    }

    async fn a_claim_under_a_lease_that_ran_out_takes_nothing(db) {
        let Some(mut a) = db.store.lease_connection().await.unwrap() else { return embedded(&db.store) };
        let s = register(&db.store, vec![session(1, at(1))], at(0)).await.remove(0);
        let term = a.acquire(PROVIDER, "a", SHORT_TTL).await.unwrap().unwrap();
        let led = Led::Buckets(vec![(PROVIDER.into(), term)]);
        tokio::time::sleep(SHORT_TTL + Duration::from_millis(100)).await;
        assert!(db.store.claim_for(&led, at(1), at(1), 10).await.unwrap().is_empty(), "expired by the server's clock");
        assert_eq!(state_of(&db.store, s.id).await, "active");
        // Nor under a term that is not the lease's.
        let term = a.acquire(PROVIDER, "a", Duration::from_secs(60)).await.unwrap().unwrap();
        let stale = Led::Buckets(vec![(PROVIDER.into(), term - 1)]);
        assert!(db.store.claim_for(&stale, at(1), at(1), 10).await.unwrap().is_empty());
        let led = Led::Buckets(vec![(PROVIDER.into(), term)]);
        assert_eq!(db.store.claim_for(&led, at(1), at(1), 10).await.unwrap().len(), 1);
    }
}

conformance! {
    async fn a_users_budget_held_by_one_handle_waits_for_it_in_every_other(db) {
        let Some(first) = db.store.hold_budgets(POLICY, &["alice", "bob"]).await.unwrap() else {
            return embedded(&db.store);
        };
        let other = db.another_handle().await;
        // Another user's budget is free.
        let carol = tokio::time::timeout(Duration::from_secs(5), other.hold_budgets(POLICY, &["carol"])).await;
        assert!(matches!(carol, Ok(Ok(Some(_)))), "{carol:?}");
        drop(carol);
        // Alice's waits until the first handle lets go.
        let waiting = tokio::spawn({
            let other = other.clone();
            async move { other.hold_budgets(POLICY, &["alice"]).await.map(|g| g.is_some()) }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "alice's budget was held by the first handle");
        // Under another policy, alice's is another budget.
        let elsewhere = tokio::time::timeout(Duration::from_secs(5), other.hold_budgets("other-policy", &["alice"])).await;
        assert!(matches!(elsewhere, Ok(Ok(Some(_)))), "{elsewhere:?}");
        drop(first);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(matches!(got, Ok(Ok(Ok(true)))), "{got:?}");
    }
}
