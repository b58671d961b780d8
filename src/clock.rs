//! The clock every deadline is compared with, passed around as a value so
//! tests can drive time.
//!
//! Tests use [`Clock::manual`] rather than tokio's paused clock: with time
//! paused, tokio jumps ahead whenever every task waits, including while a
//! task waits for SQLite's worker thread, which fires the pool's timeouts.
//! A manual clock moves only when the test says so, and wakes sleepers when
//! it does.
//!
//! ## Steps of the host's clock
//!
//! The daemon's clock is not the host's UTC clock read raw: it is a
//! [`Discipline`]d clock that advances with the monotonic clock and follows
//! the UTC clock, never ahead of it. In steady state the two agree to the
//! millisecond. When the host's clock is stepped (settimeofday, a VM
//! restored from a snapshot, NTP stepping a clock that was far off),
//! callwarden logs the step and:
//!
//! - takes a step forward gradually, at most [`SLEW`] (10 %) faster than
//!   real time: a step of an hour does not make an hour of deadlines due at
//!   once, they come due over the next ten hours;
//! - follows a step back at once: the host's clock was ahead of the true
//!   time (that is why it was stepped back), so a clock that kept running
//!   ahead of it would make calls early, and no call may ever leave before
//!   its deadline by the host's clock. Deadlines wait for the host's clock
//!   to reach them again.
//!
//! The discipline survives a restart in the same boot: see [`saved`].
//!
//! [`Clock::simulated`] drives the same discipline from a test-controlled
//! UTC and monotonic pair, so the behaviour is tested without touching the
//! host's clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::domain::Instant;

pub mod saved;

#[derive(Debug, Clone)]
pub enum Clock {
    /// The host's UTC clock, disciplined by its monotonic clock.
    System(Arc<Disciplined>),
    /// A clock that stands still until [`Clock::advance`] moves it.
    Manual(Arc<ManualTime>),
}

/// The most a disciplined clock runs faster than real time while it
/// catches up with a forward step of the UTC clock.
pub const SLEW: f64 = 0.10;
/// A difference from the UTC clock this large is logged as a step.
pub const STEP_LOGGED_MS: f64 = 1_000.0;

/// A clock that advances with a monotonic source and slews toward a UTC
/// source at most [`SLEW`]. Pure: readings go in, the time comes out.
#[derive(Debug, Default)]
pub struct Discipline {
    /// Callwarden's time, in milliseconds since the epoch; `None` before the
    /// first reading.
    now_ms: Option<f64>,
    last_mono_ms: i64,
    /// A logged step not yet caught up with.
    stepping: bool,
}

impl Discipline {
    /// Takes a reading of both sources and returns callwarden's time.
    pub fn observe(&mut self, utc_ms: i64, mono_ms: i64) -> f64 {
        let Some(now) = self.now_ms else {
            self.now_ms = Some(utc_ms as f64);
            self.last_mono_ms = mono_ms;
            return utc_ms as f64;
        };
        let elapsed = (mono_ms - self.last_mono_ms).max(0) as f64;
        self.last_mono_ms = self.last_mono_ms.max(mono_ms);
        let free = now + elapsed;
        let behind = utc_ms as f64 - free;
        let limit = SLEW * elapsed;
        // Never ahead of the host's clock; behind it, catch up at most 10 %.
        let next = free + behind.min(limit);
        if behind.abs() >= STEP_LOGGED_MS && !self.stepping {
            self.stepping = true;
            if behind > 0.0 {
                tracing::warn!(
                    step_ms = behind as i64,
                    "the host's UTC clock stepped forward; callwarden's clock catches up at 10% instead of jumping"
                );
            } else {
                tracing::warn!(
                    step_ms = behind as i64,
                    "the host's UTC clock stepped back; callwarden follows it, and deadlines wait for it again"
                );
            }
        } else if self.stepping && behind.abs() < 1.0 {
            self.stepping = false;
            tracing::info!("callwarden's clock agrees with the host's UTC clock again");
        }
        self.now_ms = Some(next);
        next
    }

    /// Whether a step is still being caught up with.
    pub fn stepping(&self) -> bool {
        self.stepping
    }

    /// A discipline that goes on from a reading taken at monotonic time
    /// `mono_ms` (of the same monotonic clock the next readings use).
    pub fn resumed(now_ms: f64, mono_ms: i64) -> Discipline {
        Discipline { now_ms: Some(now_ms), last_mono_ms: mono_ms, stepping: false }
    }

    /// The last reading: callwarden's time and the monotonic time it was taken at.
    pub fn reading(&self) -> Option<(f64, i64)> {
        self.now_ms.map(|now| (now, self.last_mono_ms))
    }
}

/// The host's clocks behind a [`Discipline`], or a test's.
#[derive(Debug)]
pub struct Disciplined {
    discipline: Mutex<Discipline>,
    source: Source,
}

#[derive(Debug)]
enum Source {
    /// The host's UTC clock and its boot-time clock (monotonic, and the
    /// same for every process of a boot, so a reading survives a restart).
    Host,
    Simulated {
        utc_ms: AtomicI64,
        mono_ms: AtomicI64,
        moved: watch::Sender<i64>,
    },
}

impl Disciplined {
    fn now_ms(&self) -> f64 {
        let (utc, mono) = match &self.source {
            Source::Host => (Utc::now().timestamp_millis(), saved::boot_ms()),
            Source::Simulated { utc_ms, mono_ms, .. } => {
                (utc_ms.load(Ordering::SeqCst), mono_ms.load(Ordering::SeqCst))
            }
        };
        let mut d = self.discipline.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        d.observe(utc, mono)
    }

    fn stepping(&self) -> bool {
        self.discipline.lock().unwrap_or_else(std::sync::PoisonError::into_inner).stepping()
    }
}

#[derive(Debug)]
pub struct ManualTime {
    now_ms: AtomicI64,
    moved: watch::Sender<i64>,
}

impl Clock {
    pub fn system() -> Clock {
        Clock::System(Arc::new(Disciplined { discipline: Mutex::default(), source: Source::Host }))
    }

    /// The host's clock, disciplined from a reading a daemon saved earlier
    /// in this boot (see [`saved`]); as [`Clock::system`] without one.
    pub fn system_resumed(from: Option<saved::Saved>) -> Clock {
        let discipline = match from {
            Some(s) => {
                let behind =
                    Utc::now().timestamp_millis() as f64 - (s.now_ms + (saved::boot_ms() - s.boot_ms) as f64);
                if behind >= STEP_LOGGED_MS {
                    tracing::warn!(
                        behind_ms = behind as i64,
                        "resuming the clock's catch-up with a forward step of the host's clock from before the restart"
                    );
                }
                Discipline::resumed(s.now_ms, s.boot_ms)
            }
            None => Discipline::default(),
        };
        Clock::System(Arc::new(Disciplined { discipline: Mutex::new(discipline), source: Source::Host }))
    }

    /// The host clock's discipline as it stands, to save; none for other clocks.
    pub fn saved(&self) -> Option<saved::Saved> {
        let Clock::System(d) = self else { return None };
        if !matches!(d.source, Source::Host) {
            return None;
        }
        d.now_ms();
        let (now_ms, boot_ms) =
            d.discipline.lock().unwrap_or_else(std::sync::PoisonError::into_inner).reading()?;
        Some(saved::Saved { boot_id: saved::boot_id()?, boot_ms, now_ms })
    }

    /// A disciplined clock over a UTC and a monotonic time the test moves:
    /// [`Clock::advance`] moves both (time passes), [`Clock::step_utc`] only
    /// the UTC one (the host's clock is stepped).
    pub fn simulated(start: Instant) -> Clock {
        let (moved, _) = watch::channel(0);
        Clock::System(Arc::new(Disciplined {
            discipline: Mutex::default(),
            source: Source::Simulated {
                utc_ms: AtomicI64::new(start.millis()),
                mono_ms: AtomicI64::new(0),
                moved,
            },
        }))
    }

    /// Steps a simulated clock's UTC source, as settimeofday would.
    pub fn step_utc(&self, by_ms: i64) {
        if let Clock::System(d) = self
            && let Source::Simulated { utc_ms, moved, .. } = &d.source
        {
            utc_ms.fetch_add(by_ms, Ordering::SeqCst);
            moved.send_modify(|n| *n += 1);
        }
    }

    pub fn manual(start: Instant) -> Clock {
        let (moved, _) = watch::channel(start.millis());
        Clock::Manual(Arc::new(ManualTime { now_ms: AtomicI64::new(start.millis()), moved }))
    }

    /// Moves a manual clock forward (or back, with a negative step) and
    /// wakes everything sleeping on it. No effect on the system clock.
    pub fn advance(&self, by_ms: i64) {
        match self {
            Clock::Manual(t) => {
                let now = t.now_ms.fetch_add(by_ms, Ordering::SeqCst) + by_ms;
                t.moved.send_replace(now);
            }
            Clock::System(d) => {
                if let Source::Simulated { utc_ms, mono_ms, moved } = &d.source {
                    utc_ms.fetch_add(by_ms, Ordering::SeqCst);
                    mono_ms.fetch_add(by_ms.max(0), Ordering::SeqCst);
                    moved.send_modify(|n| *n += 1);
                }
            }
        }
    }

    pub fn now_datetime(&self) -> DateTime<Utc> {
        self.now().to_datetime()
    }

    /// Now, rounded down to the millisecond: a due check never runs ahead.
    pub fn now(&self) -> Instant {
        match self {
            Clock::System(d) => Instant::from_millis(d.now_ms().floor() as i64),
            Clock::Manual(t) => Instant::from_millis(t.now_ms.load(Ordering::SeqCst)),
        }
    }

    /// Sleeps until `deadline` by this clock. The system clock sleeps on
    /// tokio's monotonic timer, so callers re-check `now()` afterwards: if the
    /// wall clock was stepped meanwhile, the check decides, not the timer.
    pub async fn sleep_until(&self, deadline: Instant) {
        match self {
            Clock::System(d) => {
                if let Source::Simulated { moved, .. } = &d.source {
                    let mut moved = moved.subscribe();
                    while self.now() < deadline {
                        if moved.changed().await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                let mut wait = deadline.duration_from(self.now());
                // While catching up with a step the clock may run 10 % fast:
                // wake early enough, and let the caller's re-check decide.
                if d.stepping() {
                    wait = wait.mul_f64(1.0 / (1.0 + SLEW));
                }
                if !wait.is_zero() {
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

    #[test]
    fn the_discipline_follows_small_corrections_exactly_and_slews_steps() {
        let mut d = Discipline::default();
        let base = 1_700_000_000_000_i64;
        assert_eq!(d.observe(base, 0), base as f64);
        // NTP-sized drift (1 ms in 100 ms) is followed to the millisecond.
        assert_eq!(d.observe(base + 101, 100), (base + 101) as f64);
        // A step forward of an hour: 1.1x real time, not an hour at once.
        let step = 3_600_000;
        let t = d.observe(base + 1_101 + step, 1_100);
        assert_eq!(t, (base + 101 + 1_000 + 100) as f64);
        assert!(d.stepping());
        // Ten hours later (in one-minute readings) it has caught up.
        let mut mono = 1_100;
        let mut last = t;
        while mono < 1_100 + 10 * 3_600_000 + 60_000 {
            mono += 60_000;
            let now = d.observe(base + step + mono + 1, mono);
            assert!(now - last <= 66_000.0 + 1e-6 && now >= last, "ran faster than 1.1x");
            last = now;
        }
        assert_eq!(last, (base + step + mono + 1) as f64);
        assert!(!d.stepping());
    }

    #[test]
    fn a_step_back_is_followed_at_once_so_the_clock_is_never_ahead_of_the_host() {
        let mut d = Discipline::default();
        let base = 1_700_000_000_000_i64;
        d.observe(base, 0);
        for i in 1..=100 {
            let mono = i * 1_000;
            let utc = base + mono - 3_600_000;
            assert_eq!(d.observe(utc, mono), utc as f64, "never ahead of the host's clock");
        }
        // Midway through catching up with a forward step, a step back is
        // followed too.
        let mut d = Discipline::default();
        d.observe(base, 0);
        let ahead = d.observe(base + 3_600_000 + 1_000, 1_000);
        assert_eq!(ahead, (base + 1_100) as f64);
        assert_eq!(d.observe(base + 1_500, 2_000), (base + 1_500) as f64);
    }

    #[test]
    fn a_resumed_discipline_goes_on_catching_up_instead_of_jumping() {
        let base = 1_700_000_000_000_i64;
        let step = 3_600_000;
        let mut d = Discipline::default();
        d.observe(base, 0);
        // An hour's step forward, ten seconds into the catch-up.
        d.observe(base + step + 1_000, 1_000);
        let (now, mono) = {
            let t = d.observe(base + step + 10_000, 10_000);
            (t, 10_000)
        };
        assert_eq!(now, (base + 11_000) as f64);
        // The daemon restarts; two seconds pass by the boot-time clock.
        let mut resumed = Discipline::resumed(now, mono);
        let t = resumed.observe(base + step + 12_000, 12_000);
        assert_eq!(t, (base + 11_000 + 2_000 + 200) as f64, "the catch-up goes on at 1.1x");
        // Without the saved reading it would have jumped the hour at once.
        assert_eq!(
            Discipline::default().observe(base + step + 12_000, 12_000),
            (base + step + 12_000) as f64
        );
        // A resumed reading is never ahead of the host's clock.
        let mut ahead = Discipline::resumed((base + 60_000) as f64, 0);
        assert_eq!(ahead.observe(base + 1_000, 1_000), (base + 1_000) as f64);
    }

    #[test]
    fn the_saved_reading_round_trips_and_another_boot_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = saved::path_for(&dir.path().join("cw.db"));
        assert_eq!(path.file_name().unwrap(), "cw.db.clock");
        let Some(boot_id) = saved::boot_id() else { return };
        let reading = saved::Saved { boot_id, boot_ms: saved::boot_ms(), now_ms: 1.7e12 };
        saved::store(&path, &reading).unwrap();
        assert_eq!(saved::load(&path), Some(reading.clone()));
        let other = saved::Saved { boot_id: "another-boot".into(), ..reading };
        saved::store(&path, &other).unwrap();
        assert_eq!(saved::load(&path), None);
        std::fs::write(&path, "not json").unwrap();
        assert_eq!(saved::load(&path), None);
        assert_eq!(saved::load(&dir.path().join("missing.clock")), None);
    }

    #[tokio::test]
    async fn a_simulated_clock_moves_its_sources_separately() {
        let start = Instant::from_millis(1_700_000_000_000);
        let clock = Clock::simulated(start);
        assert_eq!(clock.now(), start);
        clock.step_utc(60_000);
        clock.advance(10_000);
        assert_eq!(clock.now().millis_since(start), 11_000, "a forward step is taken at 1.1x");
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(
                async move { clock.sleep_until(Instant::from_millis(start.millis() + 12_000)).await },
            )
        };
        clock.advance(900);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sleeper.is_finished(), "woke at {} (needs 12 000)", clock.now().millis_since(start));
        clock.advance(100);
        tokio::time::timeout(Duration::from_secs(5), sleeper).await.unwrap().unwrap();
    }
}
