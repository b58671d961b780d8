//! The daemon as a child process: started, signalled, crashed, waited for,
//! and its HTTP listener's address read from its logs.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant as StdInstant};

use super::process::ChildGuard;
use super::wait::{SHORT, wait_for};

/// `callwarden --config PATH run`.
pub struct Daemon {
    process: ChildGuard,
}

impl Daemon {
    /// Starts the daemon and waits until it says it is running.
    pub async fn start(config: &Path) -> Daemon {
        let args = [OsStr::new("--config"), config.as_os_str(), OsStr::new("run")];
        let mut process = ChildGuard::spawn("daemon", &args, Stdio::null());
        let start = StdInstant::now();
        while !process.logs().contains("callwarden running") {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("the daemon exited at start ({status}); logs:\n{}", process.logs());
            }
            assert!(start.elapsed() < SHORT, "the daemon did not start; logs:\n{}", process.logs());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Daemon { process }
    }

    /// Asks the daemon to stop, as systemd would.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.process.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Asks the daemon to reload its configuration, as `systemctl reload` would.
    pub fn hangup(&self) {
        self.signal("HUP");
    }

    /// Sends `signal` (`STOP`, `CONT`, …) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.process.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Kills the daemon without warning (SIGKILL), as a crash or OOM would.
    pub fn crash(&mut self) {
        self.process.child.kill().expect("SIGKILL is delivered");
        self.process.child.wait().expect("the daemon is reaped");
    }

    /// Waits for the daemon to exit on its own; panics after `timeout`.
    pub async fn exit_status(&mut self, timeout: Duration) -> ExitStatus {
        let start = StdInstant::now();
        loop {
            if let Some(status) = self.process.child.try_wait().expect("waitpid works") {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "the daemon still runs {timeout:?} after being told to stop; logs:\n{}",
                self.process.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// `http://ADDR` of the daemon's listener, from its `http listening` log line.
    pub async fn http_url(&self) -> String {
        wait_for("the daemon's `http listening` log line", SHORT, || async {
            let logs = self.logs();
            let line = logs.lines().find(|l| l.contains("http listening"))?;
            let addr = line.split_whitespace().find_map(|w| w.strip_prefix("addr="))?;
            Some(format!("http://{}", addr.trim_matches('"')))
        })
        .await
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.child.try_wait(), Ok(None))
    }
}
