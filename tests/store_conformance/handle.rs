//! The handle itself: where the data lives, health shared by clones, the
//! change watcher noticing commits from any handle, and closing and
//! reopening without losing anything.

use std::sync::Arc;
use std::time::Duration;

use callwarden::store::{ChangeWatcher, Store};

use super::support::*;

/// Polls the watcher until it reports a change (a backend may notice a
/// commit a moment later); fails after 10 s.
async fn wait_for_change(watcher: &mut ChangeWatcher) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !watcher.changed().await.unwrap() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "no change seen within 10 s");
}

conformance! {
    async fn path_names_where_the_data_lives(db) {
        assert_eq!(db.store.location(), db.location);
        assert_eq!(db.store.clone().location(), db.location);
    }

    async fn a_fresh_store_is_healthy_and_clones_share_its_health(db) {
        assert_eq!(db.store.health().failing(), None);
        let clone = db.store.clone();
        assert!(Arc::ptr_eq(db.store.health(), clone.health()));
        let mut outage = None;
        db.store.health().failed(&mut outage, "conformance", &"database is locked");
        assert_eq!(clone.health().failing().as_deref(), Some("database is locked"));
        drop(outage);
        assert_eq!(clone.health().failing(), None);
        // Working normally does not report failure.
        register(&clone, vec![session(1, at(30))], at(0)).await;
        assert_eq!(db.store.health().failing(), None);
    }

    async fn change_watcher_sees_a_commit_from_another_handle(db) {
        let mut watcher = db.store.change_watcher().await.unwrap();
        assert!(!watcher.changed().await.unwrap(), "nothing committed since it started");
        let other = db.another_handle().await;
        register(&other, vec![session(1, at(30))], at(0)).await;
        wait_for_change(&mut watcher).await;
        assert!(!watcher.changed().await.unwrap(), "one commit is reported once");
        // Reads are not changes.
        db.store.list_sessions(None, None, 10).await.unwrap();
        other.audit_page(0, 10).await.unwrap();
        assert!(!watcher.changed().await.unwrap());
        other.close().await;
    }

    async fn change_watcher_sees_this_handles_own_commits(db) {
        let mut watcher = db.store.change_watcher().await.unwrap();
        let s = register(&db.store, vec![session(1, at(30))], at(0)).await.remove(0);
        wait_for_change(&mut watcher).await;
        db.store.extend_session(s.id, mins(5), None, &[], at(1)).await.unwrap();
        wait_for_change(&mut watcher).await;
        db.store.registrar().register(session(2, at(30)), None, at(2), "api").await.unwrap();
        wait_for_change(&mut watcher).await;
    }

    async fn a_reopened_database_has_everything_that_was_committed(db) {
        let s = register(&db.store, vec![session(1, at(30)), session(2, at(30))], at(0)).await;
        db.store.end_session(s[0].id, at(1), "done").await.unwrap();
        db.store.close().await;
        let reopened: Store = db.another_handle().await;
        assert_eq!(reopened.state_counts().await.unwrap(), [("active".to_string(), 1), ("cancelled".to_string(), 1)]);
        assert_eq!(reopened.next_deadline().await.unwrap(), Some(at(30)));
        assert_chain_intact(&reopened, 3).await;
        reopened.close().await;
    }

    async fn a_closed_store_refuses_further_work(db) {
        let s = register(&db.store, vec![session(1, at(30))], at(0)).await.remove(0);
        db.store.close().await;
        let read = tokio::time::timeout(Duration::from_secs(10), db.store.session(s.id)).await;
        assert!(matches!(read, Ok(Err(_))), "a read after close fails promptly: {read:?}");
        let write = tokio::time::timeout(Duration::from_secs(10), db.store.end_session(s.id, at(1), "x")).await;
        assert!(matches!(write, Ok(Err(_))), "a write after close fails promptly: {write:?}");
    }
}

conformance! {
    async fn database_time_is_the_servers_clock_or_none_for_an_embedded_database(db) {
        let before = chrono::Utc::now().timestamp_millis();
        let read = db.store.database_time().await.unwrap();
        let after = chrono::Utc::now().timestamp_millis();
        match db.backend {
            crate::store_conformance::backend::Backend::Sqlite => assert_eq!(read, None, "SQLite shares the host's clock"),
            // The throwaway cluster runs on this host: the same clock.
            crate::store_conformance::backend::Backend::Postgres => {
                let ms = read.expect("PostgreSQL has a clock of its own").millis();
                assert!((before - 5..=after + 5).contains(&ms), "{before} <= {ms} <= {after}");
            }
        }
    }
}
