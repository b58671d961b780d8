//! Budgets: the time a user spent under a policy within a window (settled
//! sessions up to when they ended, running ones up to now), the time
//! running sessions have booked beyond now (up to their deadline less the
//! grace), and where the user stands against a budget in the window that
//! contains now.

use callwarden::budget::{Budget, Usage, Window};
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
        let used = |policy: &'static str, who: &'static str, window, at| {
            let store = db.store.clone();
            async move { store.budget_used(policy, &user(who), window, at).await.unwrap() }
        };
        // The running session (09:15 to 12:00) has used 45 minutes and
        // booked the two hours to its deadline.
        assert_eq!(used(POLICY, "alice", today, now).await, Usage { used: mins(95), booked: mins(120) });
        let the_day_before = (utc("2026-11-21T00:00:00Z"), utc("2026-11-22T00:00:00Z"));
        assert_eq!(used(POLICY, "alice", the_day_before, now).await, Usage { used: mins(70), booked: mins(0) });
        // Earlier the same morning the running session had not started: all
        // of it was booked.
        let morning = utc("2026-11-22T09:00:00Z");
        assert_eq!(used(POLICY, "alice", today, morning).await, Usage { used: mins(50), booked: mins(165) });
        assert_eq!(used(POLICY, "carol", today, now).await, Usage::default());
        assert_eq!(used("paid-chat", "alice", today, now).await, Usage { used: mins(120), booked: mins(120) });
    }

    async fn a_running_sessions_booking_leaves_out_its_grace_and_ends_with_it(db) {
        let now = utc("2026-11-22T10:00:00Z");
        let today = (utc("2026-11-22T00:00:00Z"), utc("2026-11-23T00:00:00Z"));
        // Booked until 10:30, enforced at 10:31 after a minute's grace.
        let s = NewSession {
            started_at: utc("2026-11-22T09:50:00Z"),
            deadline: utc("2026-11-22T10:31:00Z"),
            grace: std::time::Duration::from_secs(60),
            ..participant(Room::Numeric(2), "gina", utc("2026-11-22T10:31:00Z"))
        };
        register(&db.store, vec![s.clone()], s.started_at).await;
        let usage = db.store.budget_used(POLICY, &user("gina"), today, now).await.unwrap();
        assert_eq!(usage, Usage { used: mins(10), booked: mins(30) });
        // She leaves at 10:05: 15 minutes used, nothing booked any more.
        db.store.end_session(s.id, utc("2026-11-22T10:05:00Z"), "left").await.unwrap();
        let usage = db.store.budget_used(POLICY, &user("gina"), today, utc("2026-11-22T10:06:00Z")).await.unwrap();
        assert_eq!(usage, Usage { used: mins(15), booked: mins(0) });
    }

    async fn budget_standing_reports_the_window_containing_now(db) {
        let now = alices_day(&db.store).await;
        let day = Budget { window: Window::Day, limit: mins(60) };
        let standing = db.store.budget_standing(POLICY, day, chrono_tz::UTC, &user("alice"), now).await.unwrap();
        assert_eq!((standing.window_start, standing.window_end), (utc("2026-11-22T00:00:00Z"), utc("2026-11-23T00:00:00Z")));
        assert_eq!((standing.used, standing.booked, standing.limit), (mins(95), mins(120), mins(60)));
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
        assert_eq!(standing.remaining(), mins(315), "600 less 165 used and 120 booked");
    }
}
