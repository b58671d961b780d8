//! The clock's discipline survives a restart: a daemon keeps its clock's
//! reading next to the database, and one started in the same boot while
//! the clock was catching up with a forward step of the host's clock goes
//! on catching up instead of making the rest of the step due at once.

use std::time::Duration;

use callwarden::clock::saved::{Saved, boot_id, boot_ms, load, path_for, store};

use crate::helpers::*;

#[tokio::test]
async fn the_daemon_keeps_its_clock_reading_and_a_restart_goes_on_catching_up() {
    let Some(boot) = boot_id() else {
        eprintln!("skipped: no /proc/sys/kernel/random/boot_id on this machine");
        return;
    };
    let h = Harness::new().await;
    let clock_file = path_for(&h.db_path);

    // A daemon writes its reading, at the latest when it stops.
    let mut daemon = h.start_daemon().await;
    daemon.terminate();
    daemon.exit_status(SHORT).await;
    let saved = load(&clock_file).expect("the daemon saved its clock");
    assert_eq!(saved.boot_id, boot);
    assert!((saved.now_ms - now_ms() as f64).abs() < 60_000.0, "{saved:?}");

    // As if the last daemon stopped a minute into catching up with an
    // hour's step: its clock an hour behind the host's.
    let hour = 3_600_000.0;
    store(&clock_file, &Saved { boot_id: boot, boot_ms: boot_ms(), now_ms: now_ms() as f64 - hour }).unwrap();
    // Due ten minutes ago by the host's clock; fifty minutes from now by
    // the clock the daemon resumes.
    let ids = h.start_session("consultation", RoomArg::Num(4242), &[], Some("1s")).await;
    sqlx::query("UPDATE sessions SET deadline = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-10 minutes'), started_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-11 minutes') WHERE id = ?")
        .bind(&ids[0])
        .execute(h.db().await)
        .await
        .unwrap();
    let daemon = h.start_daemon().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(h.session(&ids[0]).await.state, "active", "the restart jumped the rest of the step");
    assert!(h.sandbox.api_requests().await.is_empty());
    let logs = daemon.logs();
    assert!(logs.contains("resuming the clock's catch-up"), "{logs}");
}
