//! How long the daemon's writes have been waiting for the database's write
//! lock lately (measured from when a write asks for the writer connection,
//! so a queue of the daemon's own writes counts too).
//!
//! SQLite has one write lock for the whole file. When another program
//! writes in a tight loop (a bulk insert of plain-SQL rows), each of the
//! daemon's write transactions waits for the lock, up to one of the other
//! program's transactions. The scheduler claims a session and enforcement
//! records its attempt before the deadline; both are writes, so the
//! scheduler reads the recent waits here and claims earlier while they are
//! long (see `scheduler::claim_lead`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a wait counts as recent: the longest wait seen in the current
/// window and the one before it.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Shared by every clone of one `Store`.
#[derive(Debug)]
pub struct LockWaits {
    inner: Mutex<Windows>,
}

#[derive(Debug)]
struct Windows {
    started: Instant,
    current: Duration,
    previous: Duration,
}

impl Default for LockWaits {
    fn default() -> Self {
        LockWaits {
            inner: Mutex::new(Windows {
                started: Instant::now(),
                current: Duration::ZERO,
                previous: Duration::ZERO,
            }),
        }
    }
}

impl LockWaits {
    /// Records that a write waited `waited` for the lock.
    pub fn record(&self, waited: Duration) {
        self.record_at(waited, Instant::now());
    }

    /// The longest wait of the last one to two [`WINDOW`]s.
    pub fn recent(&self) -> Duration {
        self.recent_at(Instant::now())
    }

    fn record_at(&self, waited: Duration, now: Instant) {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        w.roll(now);
        w.current = w.current.max(waited);
    }

    fn recent_at(&self, now: Instant) -> Duration {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        w.roll(now);
        w.current.max(w.previous)
    }
}

impl Windows {
    fn roll(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.started);
        if age < WINDOW {
            return;
        }
        // One window passed: the current becomes the previous. Two or more:
        // nothing recent is left.
        self.previous = if age < WINDOW * 2 { self.current } else { Duration::ZERO };
        self.current = Duration::ZERO;
        self.started = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_wait_is_remembered_for_one_to_two_windows() {
        let waits = LockWaits::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(waits.recent_at(t0), Duration::ZERO);
        waits.record_at(ms(80), t0);
        waits.record_at(ms(5), t0 + ms(10));
        assert_eq!(waits.recent_at(t0 + ms(20)), ms(80));
        // The next window still remembers it, beside its own waits.
        waits.record_at(ms(30), t0 + WINDOW + ms(1));
        assert_eq!(waits.recent_at(t0 + WINDOW + ms(2)), ms(80));
        // Another window on, only the 30 ms is recent.
        assert_eq!(waits.recent_at(t0 + WINDOW * 2 + ms(2)), ms(30));
        // After a long quiet time, nothing is.
        assert_eq!(waits.recent_at(t0 + WINDOW * 10), Duration::ZERO);
    }
}
