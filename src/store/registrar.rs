//! The group-commit registrar: API registrations are queued to one task that
//! commits whatever is waiting in one transaction (one fsync for up to
//! [`REGISTRAR_BATCH`] sessions), whichever backend writes them.

use super::group_commit::GroupCommit;
use super::{Inserted, Store, StoreError};
use crate::domain::Instant;
use crate::domain::session::NewSession;

/// Most registrations committed in one transaction.
const REGISTRAR_BATCH: usize = 256;

/// A registration waiting for the next group commit.
#[derive(Debug)]
pub struct Pending {
    pub session: NewSession,
    /// The client's idempotency key, if it sent one.
    pub key: Option<String>,
    /// The `registered` audit row's detail.
    pub detail: &'static str,
    pub now: Instant,
}

/// A handle for registering sessions through the group-committing task.
#[derive(Debug, Clone)]
pub struct Registrar {
    writer: GroupCommit<Pending, Inserted>,
}

impl Registrar {
    /// Starts the task; it ends when every handle is dropped.
    pub(super) fn start(store: Store) -> Registrar {
        let writer = GroupCommit::start(REGISTRAR_BATCH, move |batch: &[Pending]| {
            let store = store.clone();
            Box::pin(async move { Ok(store.insert_batch(batch).await?.into_iter().map(Ok).collect()) })
        });
        Registrar { writer }
    }

    /// Registers one session (under `key`, if given), committed with
    /// whatever else is waiting. A registration the database refuses fails
    /// alone, with its own error.
    pub async fn register(
        &self,
        session: NewSession,
        key: Option<String>,
        now: Instant,
        detail: &'static str,
    ) -> Result<Inserted, StoreError> {
        self.writer.submit(Pending { session, key, detail, now }).await
    }
}
