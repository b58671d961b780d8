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
