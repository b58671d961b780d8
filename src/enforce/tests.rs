//! Grouping claimed sessions into calls, and what each answer means.

use super::*;
use crate::domain::{SessionId, UserId};

fn session(room: u32, user: Option<&str>, policy: &str, deadline_ms: i64) -> Session {
    Session {
        id: SessionId::new(),
        policy: policy.into(),
        provider: "trtc".into(),
        room: Room::Numeric(room),
        user: user.map(|u| UserId::parse(u).unwrap()),
        started_at: Instant::from_millis(0),
        deadline: Instant::from_millis(deadline_ms),
        state: SessionState::Enforcing,
        attempts: 0,
        repeatability: None,
        term: 0,
    }
}

#[test]
fn sessions_of_one_room_share_a_call_in_deadline_order() {
    let actions = HashMap::from([
        ("kick".to_string(), PolicyAction { action: Action::RemoveUser, shadow: false }),
        ("end".to_string(), PolicyAction { action: Action::DismissRoom, shadow: false }),
    ]);
    let groups = group_sessions(
        vec![
            session(1, Some("a"), "kick", 1),
            session(2, None, "end", 2),
            session(1, Some("b"), "kick", 3),
            session(2, None, "end", 4),
            session(1, None, "end", 5),
        ],
        &actions,
    );
    let shape: Vec<_> = groups.iter().map(|(k, s)| (k.action, k.room.clone(), s.len())).collect();
    assert_eq!(
        shape,
        vec![
            (Action::RemoveUser, Room::Numeric(1), 2),
            (Action::DismissRoom, Room::Numeric(2), 2),
            (Action::DismissRoom, Room::Numeric(1), 1),
        ]
    );
}

#[test]
fn answers_settle_or_retry() {
    assert_eq!(answer_outcome(&Classified::Success, false, 1, false).0, "enforced");
    assert_eq!(answer_outcome(&Classified::Success, false, 1, true).1.unwrap().0, SessionState::Accepted);
    let retry = Classified::Retryable { code: "InternalError".into(), message: "x".into(), wait: None };
    assert_eq!(answer_outcome(&retry, false, 1, false), ("retry", None));
    let (event, state) = answer_outcome(&retry, true, 8, false);
    assert_eq!(event, "failed");
    assert!(state.unwrap().1.unwrap().contains("gave up after attempt 8"));
    let gone =
        Classified::AlreadyEnded { code: "FailedOperation.RoomNotExist".into(), message: String::new() };
    assert_eq!(answer_outcome(&gone, false, 2, false).1.unwrap().0, SessionState::AlreadyEnded);
}

/// A job whose task panics (a bug) leaves no session `enforcing`: they are
/// settled failed, with the reason.
#[tokio::test]
async fn a_panicking_job_fails_its_sessions_instead_of_stranding_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("cw.db")).await.unwrap();
    let text = "database: cw.db\nproviders:\n  trtc: { kind: tencent-trtc, sdk_app_id: 1400000001, \
                region: ap-guangzhou, secret_id: AKID, secret_key: k }\npolicies:\n  \
                end: { provider: trtc, max_duration: 30m, action: dismiss_room }\n";
    let config = Arc::new(crate::config::Config::parse(&dir.path().join("c.yaml"), text).unwrap());
    let now = Instant::from_millis(1_800_000_000_000);
    let clock = Clock::manual(now);
    let s = crate::domain::session::NewSession {
        id: SessionId::new(),
        policy: "end".into(),
        provider: "trtc".into(),
        room: Room::Numeric(7),
        user: None,
        started_at: now,
        deadline: now,
        grace: Duration::ZERO,
        warn_before: Vec::new(),
        note: None,
    };
    store.insert_sessions(std::slice::from_ref(&s), now, "test").await.unwrap();
    assert_eq!(store.claim_due(now, now, 10).await.unwrap().len(), 1);
    let enforcer = Enforcer::new(
        store.clone(),
        clock,
        HashMap::new(),
        config.into(),
        crate::lead::Leadership::sole(),
        crate::skew::ClockOffset::default(),
        CancellationToken::new(),
    );
    Arc::clone(&enforcer.state).supervise(0, vec![s.id], async { panic!("a bug") }).await;
    let row = store.session(s.id).await.unwrap();
    assert_eq!(row.state, "failed");
    assert!(row.detail.unwrap_or_default().contains("panicked"));
}
