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
//! long, or while another program holds the lock at all (see
//! `scheduler::claim_lead`): a wait only shows the part of the other
//! program's transaction that was left when the write came, so the first
//! waits of a bulk insert can be short while the next ones are not.

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
    current: Recent,
    previous: Recent,
}

/// What the writes of the last one to two [`WINDOW`]s met.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recent {
    /// The longest wait.
    pub longest: Duration,
    /// Whether any write found the lock held by another connection (SQLite:
    /// another program; the daemon's own writes share one connection).
    pub contended: bool,
}

impl Recent {
    fn merge(self, other: Recent) -> Recent {
        Recent { longest: self.longest.max(other.longest), contended: self.contended || other.contended }
    }
}

impl Default for LockWaits {
    fn default() -> Self {
        LockWaits {
            inner: Mutex::new(Windows {
                started: Instant::now(),
                current: Recent::default(),
                previous: Recent::default(),
            }),
        }
    }
}

impl LockWaits {
    /// Records that a write waited `waited` for the lock, and whether it
    /// found the lock `contended` (held by another connection) on the way.
    pub fn record(&self, waited: Duration, contended: bool) {
        self.record_at(Recent { longest: waited, contended }, Instant::now());
    }

    /// The longest wait of the last one to two [`WINDOW`]s, and whether the
    /// lock was contended in them.
    pub fn recent(&self) -> Recent {
        self.recent_at(Instant::now())
    }

    fn record_at(&self, wait: Recent, now: Instant) {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        w.roll(now);
        w.current = w.current.merge(wait);
    }

    fn recent_at(&self, now: Instant) -> Recent {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        w.roll(now);
        w.current.merge(w.previous)
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
        self.previous = if age < WINDOW * 2 { self.current } else { Recent::default() };
        self.current = Recent::default();
        self.started = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(ms: u64, contended: bool) -> Recent {
        Recent { longest: Duration::from_millis(ms), contended }
    }

    #[test]
    fn the_longest_wait_is_remembered_for_one_to_two_windows() {
        let waits = LockWaits::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(waits.recent_at(t0), Recent::default());
        waits.record_at(wait(80, false), t0);
        waits.record_at(wait(5, false), t0 + ms(10));
        assert_eq!(waits.recent_at(t0 + ms(20)), wait(80, false));
        // The next window still remembers it, beside its own waits.
        waits.record_at(wait(30, false), t0 + WINDOW + ms(1));
        assert_eq!(waits.recent_at(t0 + WINDOW + ms(2)), wait(80, false));
        // Another window on, only the 30 ms is recent.
        assert_eq!(waits.recent_at(t0 + WINDOW * 2 + ms(2)), wait(30, false));
        // After a long quiet time, nothing is.
        assert_eq!(waits.recent_at(t0 + WINDOW * 10), Recent::default());
    }

    #[test]
    fn a_contended_lock_is_remembered_like_a_long_wait() {
        let waits = LockWaits::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // A short wait that found another program's transaction nearly done.
        waits.record_at(wait(3, true), t0);
        waits.record_at(wait(40, false), t0 + ms(5));
        assert_eq!(waits.recent_at(t0 + ms(10)), wait(40, true));
        assert_eq!(waits.recent_at(t0 + WINDOW + ms(10)), wait(40, true));
        assert_eq!(waits.recent_at(t0 + WINDOW * 3), Recent::default());
    }
}
