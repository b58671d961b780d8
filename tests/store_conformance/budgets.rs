//! Budgets: the time a user spent under a policy within a window (settled
//! sessions up to when they ended, running ones up to now), and where the
//! user stands against a budget in the window that contains now.

use callwarden::budget::{Budget, Window};
use callwarden::domain::audit::AuditEntry;
use callwarden::domain::session::NewSession;
use callwarden::domain::{Instant, Room, SessionState};
use callwarden::store::Store;

use super::support::*;

fn utc(text: &str) -> Instant {
    Instant::parse(text).unwrap()
}

/// `now`: 2026-11-22T10:00Z. Alice, under POLICY, has used 95 minutes of
/// that UTC day: 20 of a session from 23:50 the day before to 00:20, 30 of
/// one enforced at 08:30, 45 of one running since 09:15; plus an hour the
/// day before. Bob, another policy and a whole-room session do not count.
async fn alices_day(store: &Store) -> Instant {
    let alice = |start: &str, deadline: &str| NewSession {
        started_at: utc(start),
        deadline: utc(deadline),
        ..participant(Room::Numeric(1), "alice", utc(deadline))
    };
    let midnight = alice("2026-11-21T23:50:00Z", "2026-11-22T00:30:00Z");
    let yesterday = alice("2026-11-21T10:00:00Z", "2026-11-21T11:00:00Z");
    let enforced = alice("2026-11-22T08:00:00Z", "2026-11-22T08:30:00Z");
    let running = alice("2026-11-22T09:15:00Z", "2026-11-22T12:00:00Z");
    let bob = NewSession { user: Some(user("bob")), ..alice("2026-11-22T08:00:00Z", "2026-11-22T12:00:00Z") };
    let other_policy =
        NewSession { policy: "paid-chat".into(), ..alice("2026-11-22T08:00:00Z", "2026-11-22T12:00:00Z") };
    let whole_room = NewSession { user: None, ..alice("2026-11-22T08:00:00Z", "2026-11-22T12:00:00Z") };
    register(store, vec![yesterday.clone()], yesterday.started_at).await;
    store.end_session(yesterday.id, utc("2026-11-21T11:00:00Z"), "left").await.unwrap();
    register(store, vec![midnight.clone()], midnight.started_at).await;
    store.end_session(midnight.id, utc("2026-11-22T00:20:00Z"), "left").await.unwrap();
    register(store, vec![enforced.clone(), bob, other_policy, whole_room], enforced.started_at).await;
    assert_eq!(store.claim_due(enforced.deadline, enforced.deadline, 10).await.unwrap().len(), 1);
    store
        .record_outcome(
            &[AuditEntry::new("enforced", enforced.id)],
            Some((SessionState::Enforced, None)),
            enforced.deadline,
        )
        .await
        .unwrap();
    register(store, vec![running], utc("2026-11-22T09:15:00Z")).await;
    utc("2026-11-22T10:00:00Z")
}

conformance! {
    async fn budget_used_counts_overlap_with_the_window(db) {
        let now = alices_day(&db.store).await;
        let today = (utc("2026-11-22T00:00:00Z"), utc("2026-11-23T00:00:00Z"));
        assert_eq!(db.store.budget_used(POLICY, &user("alice"), today, now).await.unwrap(), mins(95));
        let the_day_before = (utc("2026-11-21T00:00:00Z"), utc("2026-11-22T00:00:00Z"));
        assert_eq!(db.store.budget_used(POLICY, &user("alice"), the_day_before, now).await.unwrap(), mins(70));
        // Earlier the same morning the running session had not started.
        let morning = utc("2026-11-22T09:00:00Z");
        assert_eq!(db.store.budget_used(POLICY, &user("alice"), today, morning).await.unwrap(), mins(50));
        assert_eq!(db.store.budget_used(POLICY, &user("carol"), today, now).await.unwrap(), mins(0));
        assert_eq!(db.store.budget_used("paid-chat", &user("alice"), today, now).await.unwrap(), mins(120));
    }

    async fn budget_standing_reports_the_window_containing_now(db) {
        let now = alices_day(&db.store).await;
        let day = Budget { window: Window::Day, limit: mins(60) };
        let standing = db.store.budget_standing(POLICY, day, chrono_tz::UTC, &user("alice"), now).await.unwrap();
        assert_eq!((standing.window_start, standing.window_end), (utc("2026-11-22T00:00:00Z"), utc("2026-11-23T00:00:00Z")));
        assert_eq!((standing.used, standing.limit), (mins(95), mins(60)));
        assert!(standing.exhausted());

        // In Shanghai (UTC+8) the day began at 16:00 UTC the day before: the
        // whole midnight session counts, yesterday's hour does not.
        let shanghai: chrono_tz::Tz = "Asia/Shanghai".parse().unwrap();
        let standing = db.store.budget_standing(POLICY, day, shanghai, &user("alice"), now).await.unwrap();
        assert_eq!(standing.window_start, utc("2026-11-21T16:00:00Z"));
        assert_eq!(standing.used, mins(105));

        let week = Budget { window: Window::Week, limit: mins(600) };
        let standing = db.store.budget_standing(POLICY, week, chrono_tz::UTC, &user("alice"), now).await.unwrap();
        assert_eq!((standing.window_start, standing.used), (utc("2026-11-16T00:00:00Z"), mins(165)));
        assert_eq!(standing.remaining(), mins(435));
    }
}
