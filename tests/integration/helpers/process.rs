//! Child processes of the real binary: a guard that kills on drop and
//! captures the logs, the clean command line, and CLI runs to completion.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use super::wait::LONG;

pub const BIN: &str = env!("CARGO_BIN_EXE_callwarden");

fn show_logs() -> bool {
    std::env::var_os("TEST_LOG").is_some()
}

/// A child process killed (SIGKILL) and reaped on drop, with its stderr captured.
pub(super) struct ChildGuard {
    pub(super) child: Child,
    logs: Arc<Mutex<String>>,
}

impl ChildGuard {
    pub(super) fn spawn<S: AsRef<OsStr>>(label: &str, args: &[S], stdout: Stdio) -> ChildGuard {
        let mut child = callwarden_command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN} ({label}): {e}"));
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let (sink, prefix) = (Arc::clone(&logs), format!("[{label} {}]", child.id()));
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if show_logs() {
                    eprintln!("{prefix} {line}");
                }
                let mut logs = sink.lock().unwrap_or_else(|e| e.into_inner());
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        ChildGuard { child, logs }
    }

    pub(super) fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The binary with a clean environment: no inherited config path or sandbox
/// credentials, info logs without colours.
pub fn callwarden_command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("CALLWARDEN_CONFIG")
        .env_remove("CALLWARDEN_SANDBOX_SECRET_ID")
        .env_remove("CALLWARDEN_SANDBOX_SECRET_KEY")
        .env_remove("CALLWARDEN_SANDBOX_ACS_ACCESS_KEY")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    cmd
}

/// What a finished CLI command left behind.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with the whole output unless the command exited 0.
    pub fn expect_ok(self, what: &str) -> CliOutput {
        assert!(self.ok(), "{what} failed: {self:#?}");
        self
    }
}

/// Runs `callwarden --config CONFIG ARGS...` to completion.
pub async fn run_cli<S: AsRef<OsStr>>(config: &Path, args: &[S]) -> CliOutput {
    let mut cmd = tokio::process::Command::from(callwarden_command());
    cmd.arg("--config").arg(config).args(args).stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(LONG, cmd.output())
        .await
        .expect("the command finished in time")
        .expect("the command starts");
    CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
