//! systemd integration: the `Type=notify` readiness protocol and the
//! watchdog, through `$NOTIFY_SOCKET`. Outside systemd (no socket) every
//! call here does nothing.
//!
//! `READY=1` goes out once the database is migrated and the scheduler is
//! about to run; `STOPPING=1` when shutdown begins; `WATCHDOG=1` from the
//! scheduler's own loop (see `scheduler::Scheduler::run`), so a scheduler
//! that stops turning is restarted by systemd rather than pinged for by a
//! timer that would keep running.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping: draining provider calls")]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to ping the watchdog: half of `WatchdogSec=`, or `None` when
/// the watchdog is off.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|limit| limit / 2)
}
