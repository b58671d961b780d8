//! The attempt writer: the records that a provider call is about to be
//! made (see [`Store::record_attempt_as`]), group-committed on SQLite.
//!
//! Each attempt is written before its call, so it is on the path from a
//! deadline to the call. SQLite has one write lock for the file: while
//! another program holds it (a bulk import), every transaction waits up to
//! one of that program's transactions. Claimed together, a handful of
//! sessions' attempts would each wait once, one after the other, and the
//! last would go out late; queued to one task, the attempts that pile up
//! behind one wait are written together in the next transaction. On
//! PostgreSQL, which has no such lock, each is written on its own.

use super::group_commit::GroupCommit;
use super::{Store, StoreError};
use crate::domain::audit::AuditEntry;
use crate::domain::session::Repeatability;
use crate::domain::{Instant, SessionId};

/// Most attempts committed in one transaction.
const ATTEMPT_BATCH: usize = 256;

/// One attempt to record: its sessions' counters go up, each gets an
/// `attempt` row like `entry`, and a newly chosen `repeatability` pair is
/// stored with it. Fenced by `term`.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub term: i64,
    pub ids: Vec<SessionId>,
    pub entry: AuditEntry,
    pub repeatability: Option<Repeatability>,
    pub now: Instant,
}

/// A handle for recording attempts. Cheap to clone; a batching task ends
/// when every handle is dropped.
#[derive(Debug, Clone)]
pub struct AttemptWriter(Writes);

#[derive(Debug, Clone)]
enum Writes {
    Batched(GroupCommit<Attempt, ()>),
    Direct(Store),
}

impl AttemptWriter {
    pub(super) fn start(store: Store) -> AttemptWriter {
        match store {
            Store::Sqlite(sqlite) => {
                AttemptWriter(Writes::Batched(GroupCommit::start(ATTEMPT_BATCH, move |batch| {
                    let sqlite = sqlite.clone();
                    Box::pin(async move { sqlite.record_attempts(batch).await })
                })))
            }
            Store::Postgres(_) => AttemptWriter(Writes::Direct(store)),
        }
    }

    /// Records `attempt`, committed with whatever else is waiting: an
    /// attempt whose sessions another instance took over fails alone,
    /// with [`StoreError::Fenced`], and nothing of it is written.
    pub async fn record(&self, attempt: Attempt) -> Result<(), StoreError> {
        match &self.0 {
            Writes::Batched(writer) => writer.submit(attempt).await,
            Writes::Direct(store) => {
                let Attempt { term, ids, entry, repeatability, now } = attempt;
                store.record_attempt_as(term, &ids, &entry, repeatability, now).await
            }
        }
    }
}
