//! Warnings before a deadline, as rows to arm: which points of a session's
//! booked time get one. The same for every backend; each writes the rows
//! into its own `notifications` table.

use std::time::Duration;

use crate::domain::session::NewSession;
use crate::domain::{Instant, SessionId, duration_millis_ceil};

/// A warning to arm: due `offset_ms` before the end of the booked time.
#[derive(Debug, Clone)]
pub(super) struct WarningRow {
    pub(super) session: SessionId,
    pub(super) offset_ms: i64,
    pub(super) due: Instant,
}

/// The warnings of a session whose booked time ends at `booked_end`; points
/// already past at `now` are skipped.
pub(super) fn warning_points(
    session: SessionId,
    booked_end: Instant,
    warn_before: &[Duration],
    now: Instant,
) -> Vec<WarningRow> {
    warn_before
        .iter()
        .map(|w| {
            let offset_ms = duration_millis_ceil(*w);
            WarningRow { session, offset_ms, due: Instant::from_millis(booked_end.millis() - offset_ms) }
        })
        .filter(|w| w.due > now)
        .collect()
}

/// The warnings of a session about to be registered.
pub(super) fn warnings_of(s: &NewSession, now: Instant) -> Vec<WarningRow> {
    warning_points(s.id, s.booked_end(), &s.warn_before, now)
}
