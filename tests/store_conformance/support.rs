//! Shared test vocabulary: instants, session builders, plain-SQL rows, and
//! reading the audit log back (its events, its chain).

use std::time::Duration;

use callwarden::domain::audit::{AuditRecord, ChainCheck, Verdict};
use callwarden::domain::session::NewSession;
use callwarden::domain::{Instant, Room, SessionId, UserId};
use callwarden::store::{AuditFilter, Store};

use super::backend::PlainRow;

pub const POLICY: &str = "consultation";
pub const PROVIDER: &str = "trtc";

/// The suite's epoch: a Sunday morning, UTC.
pub fn t0() -> Instant {
    Instant::parse("2026-11-22T08:00:00Z").unwrap()
}

/// `minutes` after [`t0`] (negative: before).
pub fn at(minutes: i64) -> Instant {
    Instant::from_millis(t0().millis() + minutes * 60_000)
}

pub fn mins(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

pub fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

/// A whole-room session in TRTC numeric `room`, started at [`t0`], due at
/// `deadline`, no grace, no warnings.
pub fn session(room: u32, deadline: Instant) -> NewSession {
    NewSession {
        id: SessionId::new(),
        policy: POLICY.into(),
        provider: PROVIDER.into(),
        room: Room::Numeric(room),
        user: None,
        started_at: t0(),
        deadline,
        grace: Duration::ZERO,
        warn_before: Vec::new(),
        note: None,
    }
}

/// One participant's session in `room`.
pub fn participant(room: Room, name: &str, deadline: Instant) -> NewSession {
    NewSession { room, user: Some(user(name)), ..session(1, deadline) }
}

/// A plain-SQL row in numeric room `room_id` with neither provider nor
/// deadline: waiting to be adopted.
pub fn plain_row(room_id: &'static str, created_at: Instant) -> PlainRow {
    PlainRow {
        id: SessionId::new(),
        policy: POLICY,
        provider: None,
        room_id,
        room_kind: "numeric",
        user_id: None,
        started_at: t0(),
        deadline: None,
        created_at,
    }
}

/// Registers `sessions` at `now` and returns them.
pub async fn register(store: &Store, sessions: Vec<NewSession>, now: Instant) -> Vec<NewSession> {
    store.insert_sessions(&sessions, now, "test").await.unwrap();
    sessions
}

/// The audit rows about one session, oldest first.
pub async fn audit_of(store: &Store, id: SessionId) -> Vec<AuditRecord> {
    store.audit(&AuditFilter { session: Some(id), ..AuditFilter::default() }).await.unwrap()
}

/// The events of the audit rows about one session, oldest first.
pub async fn events_of(store: &Store, id: SessionId) -> Vec<String> {
    audit_of(store, id).await.into_iter().map(|r| r.event).collect()
}

/// Every audit row, oldest first.
pub async fn all_audit(store: &Store) -> Vec<AuditRecord> {
    store.audit(&AuditFilter::default()).await.unwrap()
}

/// The state a session is stored in.
pub async fn state_of(store: &Store, id: SessionId) -> String {
    store.session(id).await.unwrap().state
}

/// Verifies the audit chain as `callwarden audit verify` does: one chain
/// from its checkpoint on SQLite; every chain, each from its own
/// checkpoint, on PostgreSQL; page by page.
pub async fn verify_chain(store: &Store) -> Verdict {
    let checkpoints = store.audit_checkpoints().await.unwrap();
    let starts: std::collections::HashMap<String, (i64, String)> =
        checkpoints.into_iter().map(|(chain, c)| (chain, (c.last_id, c.last_hash))).collect();
    if store.sqlite_path().is_none() {
        let mut check = callwarden::domain::audit::Chains::new(starts, Vec::new());
        let mut after = 0;
        loop {
            let page = store.audit_chain_page(after, 7).await.unwrap();
            let Some((_, last)) = page.last() else { break };
            after = last.id;
            for (chain, r) in &page {
                if let Err(broken) = check.push(chain, r) {
                    return broken;
                }
            }
        }
        return check.finish().0;
    }
    let start = starts.get("").cloned();
    let mut after = start.as_ref().map_or(0, |(id, _)| *id);
    let mut check = ChainCheck::new(start);
    loop {
        let page = store.audit_page(after, 7).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        for r in &page {
            if let Err(broken) = check.push(r) {
                return broken;
            }
        }
    }
    check.finish()
}

/// Asserts the chain is intact over `checked` rows, and returns its head.
pub async fn assert_chain_intact(store: &Store, checked: u64) -> (i64, String) {
    match verify_chain(store).await {
        Verdict::Intact { checked: n, unchained: 0, head: Some(head) } if n == checked => head,
        other => panic!("expected an intact chain of {checked} rows, got {other:?}"),
    }
}

/// The `attempt` row enforcement writes before try number `attempt`.
pub fn attempt_entry(attempt: u32) -> callwarden::domain::audit::AuditEntry {
    callwarden::domain::audit::AuditEntry {
        event: "attempt",
        provider: Some(PROVIDER.into()),
        action: Some("DismissRoom".into()),
        attempt: Some(attempt),
        ..Default::default()
    }
}
