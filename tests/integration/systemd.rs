//! The systemd notify protocol, checked against a real datagram socket
//! passed as `NOTIFY_SOCKET` to the real binary: READY=1 once running,
//! WATCHDOG=1 pings at half of WATCHDOG_USEC from the scheduler loop, and
//! STOPPING=1 on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{Workdir, callwarden_command};

/// Reads notify messages until one contains `want`, or panics after `within`.
fn wait_for_message(socket: &UnixDatagram, want: &str, within: Duration, seen: &mut Vec<String>) {
    let end = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        socket
            .set_read_timeout(Some(
                end.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
            ))
            .unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = msg.lines().any(|l| l == want);
                seen.push(msg);
                if found {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                break;
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
    panic!("no {want} within {within:?}; got {seen:?}");
}

#[test]
fn the_daemon_speaks_the_notify_protocol_ready_watchdog_stopping() {
    let dir = Workdir::standard();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();

    let mut daemon = callwarden_command()
        .arg("--config")
        .arg(&dir.config)
        .arg("run")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    wait_for_message(&socket, "READY=1", Duration::from_secs(20), &mut seen);

    // Pings every 200 ms: count those in a second, while nothing is due.
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_secs(1) {
        wait_for_message(&socket, "WATCHDOG=1", Duration::from_secs(2), &mut seen);
        pings += 1;
    }
    assert!(pings >= 3, "only {pings} watchdog pings in a second with WatchdogSec=0.4s: {seen:?}");

    let status = Command::new("kill").arg("-TERM").arg(daemon.id().to_string()).status().unwrap();
    assert!(status.success());
    wait_for_message(&socket, "STOPPING=1", Duration::from_secs(10), &mut seen);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(code) = daemon.try_wait().unwrap() {
            assert!(code.success(), "daemon exited with {code}");
            break;
        }
        assert!(Instant::now() < end, "daemon did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
