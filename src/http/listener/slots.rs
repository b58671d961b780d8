//! Which client connections hold one of the listener's slots, and which of
//! them to close to make room for a new one.
//!
//! A connection that is between requests (it has not sent a request head
//! yet, or it is kept alive after a response) is idle. When every slot is
//! taken and a new connection waits, the connection idle longest is closed
//! for it, provided it has been idle at least `evictable_after`: as nginx
//! closes kept-alive connections when it runs out of them. Thousands of idle
//! connections held open on purpose therefore cannot keep a health check or
//! a provider's webhook out; they only take turns closing each other, at
//! most `max / evictable_after` a second. A connection with a request under
//! way is never closed for another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The slots of one listener.
#[derive(Debug)]
pub(super) struct Slots {
    max: usize,
    evictable_after: Duration,
    table: Mutex<Table>,
    /// Signalled whenever a slot is given back.
    freed: Notify,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    /// Requests under way on the connection.
    in_flight: usize,
    /// Since when nothing has been under way.
    idle_since: Instant,
    /// Closed (or being closed) to make room; not chosen again.
    closing: bool,
    close: CancellationToken,
}

/// One connection's slot; given back when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    close: CancellationToken,
}

/// Marks a request under way on a connection until dropped.
#[derive(Debug)]
pub(super) struct Busy {
    slots: Arc<Slots>,
    id: u64,
}

impl Slots {
    pub(super) fn new(max: usize, evictable_after: Duration) -> Arc<Slots> {
        Arc::new(Slots { max: max.max(1), evictable_after, table: Mutex::default(), freed: Notify::new() })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a connection just accepted: a free one, or, when all are
    /// taken, the slot of the connection idle longest once it has been idle
    /// `evictable_after` (it is closed for this one), or the first
    /// one given back, whichever comes first. Returns how many connections
    /// were closed to make room (0 or 1).
    pub(super) async fn take(self: &Arc<Self>) -> (Slot, u64) {
        let mut evicted = 0;
        loop {
            let freed = self.freed.notified();
            let next_evictable = {
                let mut table = self.table();
                if table.open.len() < self.max {
                    let id = table.next_id;
                    table.next_id += 1;
                    let close = CancellationToken::new();
                    let entry = Entry {
                        in_flight: 0,
                        idle_since: Instant::now(),
                        closing: false,
                        close: close.clone(),
                    };
                    table.open.insert(id, entry);
                    return (Slot { slots: Arc::clone(self), id, close }, evicted);
                }
                let now = Instant::now();
                let oldest = table
                    .open
                    .values_mut()
                    .filter(|e| e.in_flight == 0 && !e.closing)
                    .min_by_key(|e| e.idle_since);
                match oldest {
                    Some(victim) if now.duration_since(victim.idle_since) >= self.evictable_after => {
                        victim.closing = true;
                        victim.close.cancel();
                        evicted += 1;
                        None
                    }
                    Some(oldest) => Some(oldest.idle_since + self.evictable_after),
                    None => None,
                }
            };
            match next_evictable {
                Some(at) => {
                    tokio::select! {
                        () = freed => {}
                        () = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => freed.await,
            }
        }
    }

    fn give_back(&self, id: u64) {
        self.table().open.remove(&id);
        self.freed.notify_one();
    }
}

impl Slot {
    /// Cancelled when the connection is to be closed to make room.
    pub(super) fn closing(&self) -> CancellationToken {
        self.close.clone()
    }

    /// What marks requests under way on this connection.
    pub(super) fn tracker(&self) -> Tracker {
        Tracker { slots: Arc::clone(&self.slots), id: self.id }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.give_back(self.id);
    }
}

/// Hands out [`Busy`] marks for one connection.
#[derive(Debug, Clone)]
pub(super) struct Tracker {
    slots: Arc<Slots>,
    id: u64,
}

impl Tracker {
    /// A request head arrived: the connection is busy until the mark drops.
    pub(super) fn busy(&self) -> Busy {
        if let Some(e) = self.slots.table().open.get_mut(&self.id) {
            e.in_flight += 1;
        }
        Busy { slots: Arc::clone(&self.slots), id: self.id }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(e) = self.slots.table().open.get_mut(&self.id) {
            e.in_flight = e.in_flight.saturating_sub(1);
            e.idle_since = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(slots: &Arc<Slots>) -> (Slot, u64) {
        futures_now(slots.take()).expect("a slot at once")
    }

    /// Polls a future once; `None` if it is not ready.
    fn futures_now<F: std::future::Future>(f: F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn when_full_the_connection_idle_longest_is_closed_for_a_new_one() {
        let slots = Slots::new(3, Duration::ZERO);
        let (a, _) = taken(&slots);
        std::thread::sleep(Duration::from_millis(2));
        let (b, _) = taken(&slots);
        std::thread::sleep(Duration::from_millis(2));
        let (c, _) = taken(&slots);
        // `a` has a request under way: never closed for another.
        let busy = a.tracker().busy();
        let waiting = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.take().await }
        });
        b.closing().cancelled().await;
        assert!(!a.closing().is_cancelled() && !c.closing().is_cancelled());
        // The slot is free once the closed connection is gone.
        drop(b);
        let (_d, evicted) = waiting.await.unwrap();
        assert_eq!(evicted, 1);
        drop(busy);
    }

    #[tokio::test]
    async fn a_connection_idle_for_less_than_the_bound_is_not_closed() {
        let slots = Slots::new(1, Duration::from_secs(3600));
        let (a, _) = taken(&slots);
        assert!(futures_now(slots.take()).is_none(), "no free slot, and none to close");
        assert!(!a.closing().is_cancelled());
        drop(a);
        let (_b, evicted) = taken(&slots);
        assert_eq!(evicted, 0);
    }
}
