//! The daemon's clock against the database's. Deadlines written by another
//! program with the database's `now()` are in the database's time; the
//! daemon fires them by its own. A difference of more than
//! [`WARN_ABOVE`] threatens the lateness target (or, with the daemon
//! ahead, calls early by the database's clock), so the daemon measures it
//! at start and every [`EVERY`], shows it as a metric and warns.
//!
//! Each measurement takes [`SAMPLES`] readings and keeps the one with the
//! shortest round trip (NTP's rule): the database read its clock somewhere
//! within the round trip, so its midpoint is the best guess, and the
//! shortest trip the tightest. An embedded database (SQLite) shares the
//! host's clock and is not measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::domain::Instant;
use crate::store::Store;

/// An offset beyond this is logged as a warning.
pub const WARN_ABOVE: Duration = Duration::from_millis(50);
/// How often the offset is measured.
pub const EVERY: Duration = Duration::from_secs(60);
/// Readings per measurement.
pub const SAMPLES: usize = 3;

/// Above this offset an instance refuses to lead (see `lead`): with
/// several instances, deadlines are compared in the database's time, and a
/// leader a second off would fire a second early or late (Quartz's rule of
/// thumb for clustered schedulers).
pub const REFUSE_TO_LEAD_ABOVE: Duration = Duration::from_secs(1);

/// The last offset measured, shared with those who act on it: the lease
/// keeper (refuses to lead above [`REFUSE_TO_LEAD_ABOVE`]) and enforcement
/// (waits for a deadline by the database's clock when the daemon's runs
/// ahead). Unknown until measured, and always for an embedded database:
/// read as 0.
#[derive(Debug, Clone)]
pub struct ClockOffset(Arc<AtomicI64>);

impl Default for ClockOffset {
    fn default() -> Self {
        ClockOffset(Arc::new(AtomicI64::new(0)))
    }
}

impl ClockOffset {
    /// The database's clock minus the daemon's, in whole milliseconds.
    pub fn millis(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// How far the daemon's clock runs ahead of the database's (0 when it
    /// does not): what a wait for a deadline adds, so that no call leaves
    /// before the deadline by the database's clock either.
    pub fn daemon_ahead(&self) -> Duration {
        Duration::from_millis(u64::try_from(-self.millis()).unwrap_or(0))
    }

    /// Whether the offset allows leading.
    pub fn fit_to_lead(&self) -> bool {
        self.millis().unsigned_abs() <= REFUSE_TO_LEAD_ABOVE.as_millis() as u64
    }

    pub fn set(&self, offset_ms: f64) {
        self.0.store(offset_ms.round() as i64, Ordering::Relaxed);
    }
}

/// One reading: the daemon's clock before and after the query, and the
/// database's clock it returned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub before: Instant,
    pub database: Instant,
    pub after: Instant,
}

/// The database's clock minus the daemon's, in ms, and the round trip it
/// was read with, from the reading with the shortest round trip.
pub fn offset(readings: &[Reading]) -> Option<(f64, i64)> {
    readings.iter().min_by_key(|r| r.after.millis_since(r.before)).map(|r| {
        let midpoint = (r.before.millis() as f64 + r.after.millis() as f64) / 2.0;
        (r.database.millis() as f64 - midpoint, r.after.millis_since(r.before))
    })
}

/// Measures once: `None` for a database without a clock of its own.
pub async fn measure(store: &Store, clock: &Clock) -> Result<Option<(f64, i64)>, crate::store::StoreError> {
    let mut readings = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let before = clock.now();
        let Some(database) = store.database_time().await? else { return Ok(None) };
        readings.push(Reading { before, database, after: clock.now() });
    }
    Ok(offset(&readings))
}

/// Measures now and every [`EVERY`] until `shutdown`; logs each offset
/// beyond [`WARN_ABOVE`], sets the gauge and `last`. Returns at once for an
/// embedded database.
pub async fn watch(store: Store, clock: Clock, last: ClockOffset, shutdown: CancellationToken) {
    loop {
        match measure(&store, &clock).await {
            Ok(None) => return,
            Ok(Some((offset_ms, rtt_ms))) => {
                crate::metrics::database_clock_offset(offset_ms);
                last.set(offset_ms);
                if offset_ms.abs() > WARN_ABOVE.as_millis() as f64 {
                    tracing::warn!(
                        offset_ms = offset_ms.round(),
                        round_trip_ms = rtt_ms,
                        "the database's clock differs from this host's by more than {} ms; deadlines another program \
                         writes with the database's now() are fired by this host's clock (synchronise both with NTP)",
                        WARN_ABOVE.as_millis()
                    );
                } else {
                    tracing::debug!(offset_ms, round_trip_ms = rtt_ms, "database clock offset");
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the database's clock; trying again later"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(before: i64, database: i64, after: i64) -> Reading {
        Reading {
            before: Instant::from_millis(before),
            database: Instant::from_millis(database),
            after: Instant::from_millis(after),
        }
    }

    #[test]
    fn the_shortest_round_trip_decides_and_its_midpoint_is_the_guess() {
        // A slow reading says +40 ms; the quick one says the clocks agree
        // to within a millisecond.
        let readings =
            [reading(1_000, 1_090, 1_100), reading(2_000, 2_001, 2_002), reading(3_000, 3_030, 3_060)];
        assert_eq!(offset(&readings), Some((0.0, 2)));
        let ahead = [reading(1_000, 1_205, 1_010)];
        assert_eq!(offset(&ahead), Some((200.0, 10)));
        let behind = [reading(1_000, 700, 1_000)];
        assert_eq!(offset(&behind), Some((-300.0, 0)));
        assert_eq!(offset(&[]), None);
    }

    #[test]
    fn a_daemon_ahead_of_the_database_waits_the_difference_and_a_far_one_may_not_lead() {
        let offset = ClockOffset::default();
        assert_eq!(
            (offset.daemon_ahead(), offset.fit_to_lead()),
            (Duration::ZERO, true),
            "unknown reads as 0"
        );
        offset.set(-40.4);
        assert_eq!(offset.daemon_ahead(), Duration::from_millis(40), "the database is behind by 40 ms");
        offset.set(25.0);
        assert_eq!(offset.daemon_ahead(), Duration::ZERO, "a daemon behind waits for its own clock");
        offset.set(1_000.0);
        assert!(offset.fit_to_lead());
        offset.set(-1_001.0);
        assert!(!offset.fit_to_lead());
        assert_eq!(offset.clone().millis(), -1_001, "clones share the value");
    }
}
