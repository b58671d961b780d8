//! The presence writer: applies webhook presence events (a room or call
//! opened or closed, a participant entered or left, an ACS roster), each in
//! one transaction with the record that it was seen, group-committed like
//! registrations.
//!
//! The record of an event (its time, per room or participant: duplicates
//! and stale events change nothing) and what it changes (sessions opened or
//! ended, their audit rows) commit together or not at all. An event whose
//! changes fail is not recorded as seen, so the provider's retry of it is
//! applied; an event already seen changes nothing, however often it comes.

use super::group_commit::GroupCommit;
use super::{Store, StoreError};
use crate::domain::session::NewSession;
use crate::domain::{Instant, Room, UserId};

/// Most events committed in one transaction.
const PRESENCE_BATCH: usize = 256;

/// Whose last event a presence event is, and when it happened: a room
/// (`participant` empty), a participant, or an ACS call's roster
/// (`participant` `#roster`, ordered by its sequence number).
#[derive(Debug, Clone)]
pub struct PresenceMark {
    pub provider: String,
    pub room: Room,
    pub participant: String,
    /// The event's time in ms (the roster's sequence number for a roster).
    pub event_ms: i64,
    /// `opened`, `closed`, `entered`, `left` or `roster`.
    pub event: &'static str,
}

/// What a presence event does to the sessions of its room.
#[derive(Debug, Clone)]
pub enum PresenceChange {
    /// Opens a session, unless its policy already has one active for the
    /// same room and participant.
    Open { session: NewSession, detail: String },
    /// Ends the room's active sessions of the mark's provider (`user` None),
    /// or one participant's.
    End { user: Option<UserId>, detail: String },
}

/// One presence event to apply.
#[derive(Debug, Clone)]
pub struct PresenceWrite {
    pub mark: PresenceMark,
    pub changes: Vec<PresenceChange>,
    pub now: Instant,
}

/// A handle for applying presence events through the group-committing task.
#[derive(Debug, Clone)]
pub struct PresenceWriter {
    writer: GroupCommit<PresenceWrite, Option<u32>>,
}

impl PresenceWriter {
    /// Starts the task; it ends when every handle is dropped.
    pub(super) fn start(store: Store) -> PresenceWriter {
        let writer = GroupCommit::start(PRESENCE_BATCH, move |batch: &[PresenceWrite]| {
            let store = store.clone();
            Box::pin(async move { store.apply_presence(batch).await })
        });
        PresenceWriter { writer }
    }

    /// Applies one event, committed with whatever else is waiting: `None`
    /// if an event as new or newer was already recorded for the same room
    /// or participant (nothing changed), else how many sessions it opened
    /// or ended. On an error nothing was recorded.
    pub async fn apply(&self, write: PresenceWrite) -> Result<Option<u32>, StoreError> {
        self.writer.submit(write).await
    }
}
