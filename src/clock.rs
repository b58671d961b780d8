//! The clock every deadline is compared with, passed around as a value so
//! tests can drive time.
//!
//! `chrono::Utc::now()` does not stop when tokio's test clock is paused, so a
//! scheduler test with `tokio::time::pause()` uses [`Clock::tokio_paused`],
//! which reads wall time as "a fixed start plus tokio's elapsed time".

use chrono::{DateTime, Utc};

use crate::domain::Instant;

#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The host's UTC clock.
    System,
    /// `start` plus the time tokio's clock has advanced since `origin`.
    Tokio { start: DateTime<Utc>, origin: tokio::time::Instant },
}

impl Clock {
    pub fn system() -> Clock {
        Clock::System
    }

    /// A clock that follows tokio's (possibly paused) timer from `start`.
    pub fn tokio_paused(start: DateTime<Utc>) -> Clock {
        Clock::Tokio { start, origin: tokio::time::Instant::now() }
    }

    pub fn now_datetime(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Tokio { start, origin } => {
                *start + chrono::Duration::from_std(origin.elapsed()).unwrap_or_default()
            }
        }
    }

    /// Now, rounded down to the millisecond: a due check never runs ahead.
    pub fn now(&self) -> Instant {
        Instant::floor(self.now_datetime())
    }

    /// Sleeps until `deadline` by this clock. The sleep itself runs on tokio's
    /// monotonic timer, so the caller re-checks `now()` afterwards: if the wall
    /// clock was stepped meanwhile, the check decides, not the timer.
    pub async fn sleep_until(&self, deadline: Instant) {
        let wait = deadline.duration_from(self.now());
        if !wait.is_zero() {
            // `now()` is floored, so `wait` is at least the true remaining
            // time, and tokio's timer never fires early.
            tokio::time::sleep(wait).await;
        }
    }
}
