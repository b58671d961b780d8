//! The clock's discipline across restarts. While callwarden's clock is
//! catching up with a forward step of the host's clock, it is behind the
//! host's clock on purpose; a daemon restarted then (an upgrade, a crash)
//! would start from the host's clock and make every deadline of the rest
//! of the step due at once. So the daemon keeps its reading, with the
//! kernel's boot id and boot-time clock (which, unlike a process's
//! monotonic clock, runs on across restarts), in a small file next to the
//! database, written every few seconds and at shutdown. A daemon started
//! in the same boot resumes from it: the saved time plus the boot-time
//! clock's advance, then slewing on as before and never ahead of the
//! host's clock. After a reboot (another boot id) the file is ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Clock;

/// How often the daemon writes its clock's reading.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);

/// A reading of the discipline, as written to the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// `/proc/sys/kernel/random/boot_id`: readings of the boot-time clock
    /// compare only within one boot.
    pub boot_id: String,
    /// The boot-time clock (CLOCK_BOOTTIME), in milliseconds.
    pub boot_ms: i64,
    /// callwarden's time then, in milliseconds since the epoch.
    pub now_ms: f64,
}

/// The kernel's id of this boot, if it can be read.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_string())
}

/// The boot-time clock in milliseconds: monotonic, counting suspend, and
/// the same for every process of one boot.
pub fn boot_ms() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    t.tv_sec.saturating_mul(1000).saturating_add(i64::from(t.tv_nsec as u32 / 1_000_000))
}

/// The file the clock is kept in: the database's path with `.clock` added.
pub fn path_for(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".clock");
    PathBuf::from(name)
}

/// The saved reading, when it is from this boot; anything else (no file,
/// another boot, a file that does not parse) is none, with a note in the log.
pub fn load(path: &Path) -> Option<Saved> {
    let text = std::fs::read_to_string(path).ok()?;
    let saved: Saved = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable clock file");
            return None;
        }
    };
    (Some(&saved.boot_id) == boot_id().as_ref() && saved.now_ms.is_finite()).then_some(saved)
}

/// Writes the reading: to a temporary file, then renamed over the old one,
/// so a crash mid-write leaves the previous reading.
pub fn store(path: &Path, saved: &Saved) -> std::io::Result<()> {
    let tmp = path.with_extension("clock.tmp");
    std::fs::write(&tmp, serde_json::to_vec(saved).unwrap_or_default())?;
    std::fs::rename(&tmp, path)
}

/// Writes the clock's reading every [`SAVE_EVERY`] and once more at
/// shutdown.
pub async fn save_periodically(clock: Clock, path: PathBuf, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        let stop = tokio::select! {
            () = tokio::time::sleep(SAVE_EVERY) => false,
            () = shutdown.cancelled() => true,
        };
        if let Some(saved) = clock.saved() {
            match tokio::task::spawn_blocking({
                let path = path.clone();
                move || store(&path, &saved)
            })
            .await
            {
                Ok(Ok(())) => failing = false,
                Ok(Err(e)) if !failing => {
                    failing = true;
                    tracing::warn!(path = %path.display(), error = %e, "cannot save the clock's discipline");
                }
                _ => {}
            }
        }
        if stop {
            return;
        }
    }
}
