//! The clock every deadline is compared with, passed around as a value so
//! tests can drive time.
//!
//! Tests use [`Clock::manual`] rather than tokio's paused clock: with time
//! paused, tokio jumps ahead whenever every task waits, including while a
//! task waits for SQLite's worker thread, which fires the pool's timeouts.
//! A manual clock moves only when the test says so, and wakes sleepers when
//! it does.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::domain::Instant;

#[derive(Debug, Clone)]
pub enum Clock {
    /// The host's UTC clock.
    System,
    /// A clock that stands still until [`Clock::advance`] moves it.
    Manual(Arc<ManualTime>),
}

#[derive(Debug)]
pub struct ManualTime {
    now_ms: AtomicI64,
    moved: watch::Sender<i64>,
}

impl Clock {
    pub fn system() -> Clock {
        Clock::System
    }

    pub fn manual(start: Instant) -> Clock {
        let (moved, _) = watch::channel(start.millis());
        Clock::Manual(Arc::new(ManualTime { now_ms: AtomicI64::new(start.millis()), moved }))
    }

    /// Moves a manual clock forward (or back, with a negative step) and
    /// wakes everything sleeping on it. No effect on the system clock.
    pub fn advance(&self, by_ms: i64) {
        if let Clock::Manual(t) = self {
            let now = t.now_ms.fetch_add(by_ms, Ordering::SeqCst) + by_ms;
            t.moved.send_replace(now);
        }
    }

    pub fn now_datetime(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Manual(_) => self.now().to_datetime(),
        }
    }

    /// Now, rounded down to the millisecond: a due check never runs ahead.
    pub fn now(&self) -> Instant {
        match self {
            Clock::System => Instant::floor(Utc::now()),
            Clock::Manual(t) => Instant::from_millis(t.now_ms.load(Ordering::SeqCst)),
        }
    }

    /// Sleeps until `deadline` by this clock. The system clock sleeps on
    /// tokio's monotonic timer, so callers re-check `now()` afterwards: if the
    /// wall clock was stepped meanwhile, the check decides, not the timer.
    pub async fn sleep_until(&self, deadline: Instant) {
        match self {
            Clock::System => {
                let wait = deadline.duration_from(self.now());
                if !wait.is_zero() {
                    // `now()` is floored, so `wait` is at least the true
                    // remaining time, and tokio's timer never fires early.
                    tokio::time::sleep(wait).await;
                }
            }
            Clock::Manual(t) => {
                let mut moved = t.moved.subscribe();
                while self.now() < deadline {
                    if moved.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_only_when_moved_past_their_deadline() {
        let clock = Clock::manual(Instant::from_millis(1_000));
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep_until(Instant::from_millis(2_000)).await })
        };
        clock.advance(999);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sleeper.is_finished(), "woke a millisecond early");
        clock.advance(1);
        tokio::time::timeout(Duration::from_secs(5), sleeper).await.unwrap().unwrap();
        assert_eq!(clock.now(), Instant::from_millis(2_000));
    }
}
