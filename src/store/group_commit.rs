//! Group commit: callers queue items for one task, which writes whatever is
//! waiting in one transaction, so many callers share one commit (one fsync)
//! instead of queueing for one each. Registrations from the API and presence
//! events from webhooks go through it, whichever backend writes them.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// Writes a batch in one transaction: the answer for each item in order, or
/// an error that failed the whole batch.
pub(super) type CommitFuture<'a, O> =
    Pin<Box<dyn Future<Output = Result<Vec<Result<O, StoreError>>, StoreError>> + Send + 'a>>;

struct Queued<I, O> {
    item: I,
    reply: oneshot::Sender<Result<O, StoreError>>,
}

/// A handle for queueing items to a group-commit task. Cheap to clone.
pub(super) struct GroupCommit<I, O> {
    tx: mpsc::Sender<Queued<I, O>>,
}

impl<I, O> Clone for GroupCommit<I, O> {
    fn clone(&self) -> Self {
        GroupCommit { tx: self.tx.clone() }
    }
}

impl<I, O> std::fmt::Debug for GroupCommit<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").field("capacity", &self.tx.max_capacity()).finish()
    }
}

impl<I: Send + Sync + 'static, O: Send + 'static> GroupCommit<I, O> {
    /// Starts the task, which commits up to `max_batch` items at a time with
    /// `commit`. When `commit` fails a batch of several items as a whole,
    /// each item is tried again on its own, so one item the database refuses
    /// fails alone, not the others that happened to share its commit. The
    /// task ends when every handle is dropped.
    pub(super) fn start<F>(max_batch: usize, commit: F) -> Self
    where
        F: for<'a> Fn(&'a [I]) -> CommitFuture<'a, O> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Queued<I, O>>(max_batch * 4);
        tokio::spawn(async move {
            let mut queued = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut queued, max_batch).await > 0 {
                let (items, replies): (Vec<I>, Vec<_>) = queued.drain(..).map(|q| (q.item, q.reply)).unzip();
                match commit(&items).await {
                    Ok(answers) => {
                        for (reply, answer) in replies.into_iter().zip(answers) {
                            let _ = reply.send(answer);
                        }
                    }
                    Err(e) if items.len() == 1 => {
                        if let Some(reply) = replies.into_iter().next() {
                            let _ = reply.send(Err(e));
                        }
                    }
                    Err(_) => {
                        for (item, reply) in items.iter().zip(replies) {
                            let answer = match commit(std::slice::from_ref(item)).await {
                                Ok(mut one) => one.pop().unwrap_or_else(|| {
                                    Err(StoreError::Batch("the write answered nothing".into()))
                                }),
                                Err(e) => Err(e),
                            };
                            let _ = reply.send(answer);
                        }
                    }
                }
            }
        });
        GroupCommit { tx }
    }

    /// Queues `item` and waits for the commit it lands in.
    pub(super) async fn submit(&self, item: I) -> Result<O, StoreError> {
        let stopped = || StoreError::Batch("the database writer has stopped".into());
        let (reply, answer) = oneshot::channel();
        self.tx.send(Queued { item, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
