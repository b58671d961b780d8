//! Per-user budgets: how much time a user may spend under a policy in a
//! calendar window (a day, a week starting Monday, a month), in the
//! configured time zone.
//!
//! This module owns the calendar arithmetic and the arithmetic of "how much
//! is left", and does no I/O. The store sums what a user used
//! (`Store::budget_used`); intake asks it for the users of a registration,
//! and `policy::register` clips each new session's limit to what is left.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Datelike, Days, LocalResult, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use crate::domain::Instant;

/// The calendar period a budget's limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Day,
    /// Monday to Sunday (ISO weeks).
    Week,
    Month,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Day => "day",
            Window::Week => "week",
            Window::Month => "month",
        }
    }

    /// The longest a window can last (a DST change adds an hour).
    pub fn longest(self) -> std::time::Duration {
        let days = match self {
            Window::Day => 1,
            Window::Week => 7,
            Window::Month => 31,
        };
        std::time::Duration::from_secs(days * 86_400 + 3_600)
    }

    /// The window containing `at`: its first instant, and the first instant
    /// of the next one. Windows start at local midnight in `tz`; on a day
    /// whose midnight does not exist (a DST gap), at the first instant after
    /// it. So a window is 23 or 25 hours long across a DST change.
    pub fn bounds(self, tz: Tz, at: Instant) -> (Instant, Instant) {
        let local = at.to_datetime().with_timezone(&tz).date_naive();
        let first = match self {
            Window::Day => local,
            Window::Week => local - Days::new(u64::from(local.weekday().num_days_from_monday())),
            Window::Month => local.with_day(1).unwrap_or(local),
        };
        let next = match self {
            Window::Day => first + Days::new(1),
            Window::Week => first + Days::new(7),
            Window::Month => first + Months::new(1),
        };
        (local_midnight(tz, first), local_midnight(tz, next))
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Window {
    type Err = String;
    fn from_str(s: &str) -> Result<Window, String> {
        match s {
            "day" => Ok(Window::Day),
            "week" => Ok(Window::Week),
            "month" => Ok(Window::Month),
            other => Err(format!("unknown window {other:?} (expected day, week or month)")),
        }
    }
}

fn local_midnight(tz: Tz, day: NaiveDate) -> Instant {
    let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    let utc: DateTime<Utc> = match tz.from_local_datetime(&midnight) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        // Clocks went back over midnight: the window starts at the first one.
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        // Clocks went forward over midnight: the first hour that exists.
        LocalResult::None => (1..=3)
            .find_map(|h| tz.from_local_datetime(&(midnight + chrono::Duration::hours(h))).earliest())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| Utc.from_utc_datetime(&midnight)),
    };
    Instant::from_millis(utc.timestamp_millis())
}

/// A budget as configured on a policy: `limit` per `window`, per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub window: Window,
    pub limit: Duration,
}

/// Where a user stands against a budget at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub window_start: Instant,
    pub window_end: Instant,
    /// Time spent: settled sessions up to their end, running ones up to now.
    pub used: Duration,
    /// Time granted and not yet spent: running sessions from now to their
    /// booked end (the deadline less the grace). Counted as spent, so two
    /// sessions of one user that run at once share what was left instead of
    /// each getting all of it; a session that ends early gives its unspent
    /// time back.
    pub booked: Duration,
    pub limit: Duration,
}

/// What a user's sessions add up to in a window (see [`Standing`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub used: Duration,
    pub booked: Duration,
}

impl Standing {
    pub fn remaining(&self) -> Duration {
        self.limit.saturating_sub(self.used).saturating_sub(self.booked)
    }

    pub fn exhausted(&self) -> bool {
        self.remaining().is_zero()
    }
}

/// One session's part in a budget: the time between `start` and `end`
/// (`None`: still running) that falls inside the window.
pub fn overlap(start: Instant, end: Option<Instant>, window: (Instant, Instant), now: Instant) -> Duration {
    let end = end.unwrap_or(now).min(window.1).min(now.max(start));
    let start = start.max(window.0);
    Duration::from_millis(u64::try_from(end.millis() - start.millis()).unwrap_or(0))
}

/// One session's part in a budget, spent and booked: [`overlap`], and for
/// a running session (`end` None) also the time from now (or its start,
/// if later) to its `booked_end` that falls inside the window.
pub fn usage(
    start: Instant,
    end: Option<Instant>,
    booked_end: Instant,
    window: (Instant, Instant),
    now: Instant,
) -> Usage {
    let used = overlap(start, end, window, now);
    let booked = match end {
        Some(_) => Duration::ZERO,
        None => overlap(now.max(start), Some(booked_end), window, Instant::LATEST),
    };
    Usage { used, booked }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Instant {
        Instant::parse(text).unwrap()
    }

    #[test]
    fn days_weeks_and_months_start_at_local_midnight() {
        let utc: Tz = "UTC".parse().unwrap();
        let (s, e) = Window::Day.bounds(utc, at("2026-11-22T13:00:00Z"));
        assert_eq!((s, e), (at("2026-11-22T00:00:00Z"), at("2026-11-23T00:00:00Z")));
        // 2026-11-22 is a Sunday: its ISO week began on Monday the 16th.
        let (s, e) = Window::Week.bounds(utc, at("2026-11-22T23:59:59Z"));
        assert_eq!((s, e), (at("2026-11-16T00:00:00Z"), at("2026-11-23T00:00:00Z")));
        let (s, e) = Window::Month.bounds(utc, at("2026-12-31T23:00:00Z"));
        assert_eq!((s, e), (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z")));
        // In Shanghai (UTC+8) 20:00 UTC is already the next local day.
        let sh: Tz = "Asia/Shanghai".parse().unwrap();
        let (s, _) = Window::Day.bounds(sh, at("2026-11-22T20:00:00Z"));
        assert_eq!(s, at("2026-11-22T16:00:00Z"));
    }

    #[test]
    fn a_dst_change_makes_a_23_or_25_hour_day() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // Clocks go forward on 2026-03-29 and back on 2026-10-25.
        let (s, e) = Window::Day.bounds(berlin, at("2026-03-29T12:00:00Z"));
        assert_eq!(e.millis() - s.millis(), 23 * 3_600_000);
        let (s, e) = Window::Day.bounds(berlin, at("2026-10-25T12:00:00Z"));
        assert_eq!(e.millis() - s.millis(), 25 * 3_600_000);
        // A zone whose clocks skip midnight itself (Santiago, September 2026).
        let santiago: Tz = "America/Santiago".parse().unwrap();
        let (s, e) = Window::Day.bounds(santiago, at("2026-09-06T15:00:00Z"));
        assert!(s < e && e.millis() - s.millis() == 23 * 3_600_000, "{s} {e}");
    }

    #[test]
    fn only_the_part_inside_the_window_counts() {
        let w = (at("2026-11-22T00:00:00Z"), at("2026-11-23T00:00:00Z"));
        let now = at("2026-11-22T10:00:00Z");
        let min = |m: u64| Duration::from_secs(m * 60);
        // Started yesterday 23:50, ended 00:20: 20 minutes today.
        assert_eq!(overlap(at("2026-11-21T23:50:00Z"), Some(at("2026-11-22T00:20:00Z")), w, now), min(20));
        // Still running since 09:15: 45 minutes so far.
        assert_eq!(overlap(at("2026-11-22T09:15:00Z"), None, w, now), min(45));
        // Yesterday's session, and one that has not started: nothing.
        assert_eq!(overlap(at("2026-11-21T10:00:00Z"), Some(at("2026-11-21T11:00:00Z")), w, now), min(0));
        assert_eq!(overlap(at("2026-11-22T11:00:00Z"), None, w, now), min(0));
        let s =
            Standing { window_start: w.0, window_end: w.1, used: min(70), booked: min(0), limit: min(60) };
        assert!(s.exhausted() && s.remaining().is_zero());
    }

    #[test]
    fn a_running_session_books_the_rest_of_its_time_inside_the_window() {
        let w = (at("2026-11-22T00:00:00Z"), at("2026-11-23T00:00:00Z"));
        let now = at("2026-11-22T10:00:00Z");
        let min = |m: u64| Duration::from_secs(m * 60);
        let usage =
            |start, end: Option<&str>, booked_end| usage(at(start), end.map(at), at(booked_end), w, now);
        // Running since 09:15, booked until 10:30: 45 spent, 30 booked.
        assert_eq!(
            usage("2026-11-22T09:15:00Z", None, "2026-11-22T10:30:00Z"),
            Usage { used: min(45), booked: min(30) }
        );
        // Ended early: what it did not use is given back.
        assert_eq!(
            usage("2026-11-22T09:15:00Z", Some("2026-11-22T09:20:00Z"), "2026-11-22T10:30:00Z"),
            Usage { used: min(5), booked: min(0) }
        );
        // Booked past midnight: only today's part counts against today.
        assert_eq!(usage("2026-11-22T09:00:00Z", None, "2026-11-23T01:00:00Z").booked, min(14 * 60));
        // Past its booked end and not settled yet: spent up to now, nothing booked.
        assert_eq!(
            usage("2026-11-22T09:00:00Z", None, "2026-11-22T09:30:00Z"),
            Usage { used: min(60), booked: min(0) }
        );
        // Starting later (a registration ahead of time): all of it booked.
        assert_eq!(
            usage("2026-11-22T11:00:00Z", None, "2026-11-22T11:20:00Z"),
            Usage { used: min(0), booked: min(20) }
        );
        let s =
            Standing { window_start: w.0, window_end: w.1, used: min(45), booked: min(10), limit: min(60) };
        assert_eq!(s.remaining(), min(5));
    }
}
