//! The group-commit registrar: API registrations are queued to one task that
//! commits whatever is waiting in one transaction (one fsync for up to
//! [`REGISTRAR_BATCH`] sessions), whichever backend writes them.

use tokio::sync::{mpsc, oneshot};

use super::{Inserted, Store, StoreError};
use crate::domain::Instant;
use crate::domain::session::NewSession;

/// Most registrations committed in one transaction.
const REGISTRAR_BATCH: usize = 256;

/// A registration waiting for the next group commit.
pub struct Pending {
    pub session: NewSession,
    /// The client's idempotency key, if it sent one.
    pub key: Option<String>,
    /// The `registered` audit row's detail.
    pub detail: &'static str,
    pub now: Instant,
    reply: oneshot::Sender<Result<Inserted, StoreError>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("session", &self.session.id).finish()
    }
}

/// A handle for registering sessions through the group-committing task.
#[derive(Debug, Clone)]
pub struct Registrar {
    tx: mpsc::Sender<Pending>,
}

impl Registrar {
    /// Starts the task; it ends when every handle is dropped.
    pub(super) fn start(store: Store) -> Registrar {
        let (tx, mut rx) = mpsc::channel::<Pending>(REGISTRAR_BATCH * 4);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(REGISTRAR_BATCH);
            while rx.recv_many(&mut batch, REGISTRAR_BATCH).await > 0 {
                match store.insert_batch(&batch).await {
                    Ok(results) => {
                        for (r, result) in batch.drain(..).zip(results) {
                            let _ = r.reply.send(Ok(result));
                        }
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        for r in batch.drain(..) {
                            let _ = r.reply.send(Err(StoreError::Batch(reason.clone())));
                        }
                    }
                }
            }
        });
        Registrar { tx }
    }

    /// Registers one session (under `key`, if given), committed with
    /// whatever else is waiting.
    pub async fn register(
        &self,
        session: NewSession,
        key: Option<String>,
        now: Instant,
        detail: &'static str,
    ) -> Result<Inserted, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending { session, key, detail, now, reply })
            .await
            .map_err(|_| StoreError::Batch("the registration writer has stopped".into()))?;
        answer.await.map_err(|_| StoreError::Batch("the registration writer has stopped".into()))?
    }
}
