//! The daemon as its own process, as systemd runs it: the release binary
//! started on a rig's config, its log read line by line and timestamped on
//! arrival, and systemd's side of the notify protocol played by a datagram
//! socket passed as `NOTIFY_SOCKET`, with `WATCHDOG_USEC` set as the unit
//! sets it. The scenarios that need the daemon's own file descriptors, its
//! log or its watchdog pings (bulk insert, prune, connections, /metrics)
//! run it this way; the older ones run it in-process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};

use crate::figures::Figures;
use crate::scenarios::startup::{release_binary, target_dir};

/// `WatchdogSec=` in deploy/callwarden.service: systemd kills the daemon
/// when no `WATCHDOG=1` arrives for this long.
pub(crate) const WATCHDOG_SEC: Duration = Duration::from_secs(30);
/// `TimeoutStopSec=` in the unit: how long a stop may take before systemd
/// kills the daemon.
pub(crate) const TIMEOUT_STOP_SEC: Duration = Duration::from_secs(30);

/// One log line and when the bench read it.
pub(crate) type Line = (DateTime<Utc>, String);

pub(crate) struct DaemonProcess {
    child: Child,
    pub(crate) pid: u32,
    /// When the "callwarden running" line arrived.
    pub(crate) ready: DateTime<Utc>,
    log: Arc<Mutex<Vec<Line>>>,
    reader: std::thread::JoinHandle<()>,
    notify: NotifySocket,
}

impl DaemonProcess {
    /// Starts `callwarden --config <config> run` with `RUST_LOG=info` and
    /// the watchdog on, and waits for its ready line (at most 120 s).
    pub(crate) async fn start(config: &Path, dir: &Path) -> anyhow::Result<DaemonProcess> {
        let binary = release_binary(None)?;
        let notify = NotifySocket::bind(dir.join("notify.sock"))?;
        let mut child = Command::new(&binary)
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("NOTIFY_SOCKET", &notify.path)
            .env("WATCHDOG_USEC", WATCHDOG_SEC.as_micros().to_string())
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id();
        let stderr = child.stderr.take().context("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut log) = sink.lock() {
                    log.push((Utc::now(), line));
                }
            }
        });
        let mut daemon = DaemonProcess { child, pid, ready: Utc::now(), log, reader, notify };
        match daemon.wait_for("callwarden running", Duration::from_secs(120)).await {
            Ok((at, _)) => daemon.ready = at,
            Err(e) => {
                let _ = daemon.child.kill();
                let _ = daemon.child.wait();
                let lines: Vec<String> = daemon.lines().into_iter().map(|(_, l)| l).collect();
                bail!("{e}; its log:\n{}", lines.join("\n"));
            }
        }
        Ok(daemon)
    }

    pub(crate) fn lines(&self) -> Vec<Line> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The first log line containing `needle`, if one arrived.
    pub(crate) fn find(&self, needle: &str) -> Option<Line> {
        self.log.lock().ok()?.iter().find(|(_, l)| l.contains(needle)).cloned()
    }

    /// Waits for a log line containing `needle`.
    pub(crate) async fn wait_for(&self, needle: &str, timeout: Duration) -> anyhow::Result<Line> {
        let started = StdInstant::now();
        loop {
            if let Some(line) = self.find(needle) {
                return Ok(line);
            }
            if started.elapsed() > timeout {
                bail!("the daemon logged no {needle:?} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The listener's address, from the `http listening` line (the config
    /// asks for port 0).
    pub(crate) async fn http_addr(&self) -> anyhow::Result<SocketAddr> {
        let (_, line) = self.wait_for("http listening", Duration::from_secs(10)).await?;
        let addr = line.split_whitespace().find_map(|w| w.strip_prefix("addr=")).context("no addr= field")?;
        addr.trim_matches('"').parse().with_context(|| format!("bad listen address in {line:?}"))
    }

    /// File descriptors the daemon holds now.
    pub(crate) fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map_or(0, |d| d.count())
    }

    /// SIGKILL, as a crash or the OOM killer would; returns once reaped.
    pub(crate) fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits for the exit; after `TimeoutStopSec=` (30 s in
    /// the unit) it is killed, as systemd would.
    pub(crate) async fn stop(mut self) -> anyhow::Result<Stopped> {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        let started = StdInstant::now();
        let mut killed = false;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if !killed && started.elapsed() > TIMEOUT_STOP_SEC {
                self.child.kill()?;
                killed = true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let stop = started.elapsed();
        let _ = self.reader.join();
        let lines = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        let watchdog = Watchdog::from_messages(&self.notify.finish());
        Ok(Stopped { success: status.success(), killed, stop, lines, watchdog })
    }
}

/// What a stopped daemon left: its exit, its log, its watchdog pings.
pub(crate) struct Stopped {
    pub(crate) success: bool,
    /// Whether it had to be killed, still running [`TIMEOUT_STOP_SEC`] after SIGTERM.
    pub(crate) killed: bool,
    /// SIGTERM -> exit.
    pub(crate) stop: Duration,
    pub(crate) lines: Vec<Line>,
    pub(crate) watchdog: Watchdog,
}

impl Stopped {
    pub(crate) fn warnings(&self) -> usize {
        self.lines.iter().filter(|(_, l)| l.contains(" WARN ") || l.contains(" ERROR ")).count()
    }

    /// Log lines that say a file descriptor was refused (EMFILE/ENFILE).
    pub(crate) fn fd_errors(&self) -> usize {
        let fd = |l: &str| {
            l.contains("Too many open files") || l.contains("os error 24") || l.contains("os error 23")
        };
        self.lines.iter().filter(|(_, l)| fd(l)).count()
    }

    /// Keeps the daemon's log as `$CARGO_TARGET_DIR/bench-logs/<name>.log`
    /// (the last run's), for reading what the figures do not say.
    pub(crate) fn save_log(&self, name: &str) {
        let dir = target_dir().join("bench-logs");
        let text: String = self.lines.iter().map(|(_, l)| format!("{l}\n")).collect();
        if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join(format!("{name}.log")), text))
        {
            eprintln!("cannot keep the daemon's log: {e}");
        }
    }

    /// Exit, stop time, warnings and the watchdog (see [`Watchdog::figures`]
    /// for `from` and `to`).
    pub(crate) fn figures(&self, f: &mut Figures, from: DateTime<Utc>, to: DateTime<Utc>) {
        f.add("daemon exit status success", if self.success { 1.0 } else { 0.0 }, "");
        f.add("daemon stop: SIGTERM -> exit", self.stop.as_secs_f64() * 1000.0, "ms");
        f.add("daemon stop: killed after TimeoutStopSec=30 s", if self.killed { 1.0 } else { 0.0 }, "");
        f.add("daemon warnings and errors logged", self.warnings() as f64, "");
        self.watchdog.figures(f, from, to);
    }
}

/// The value of `key=` in a log line (human format), as a number.
pub(crate) fn field(line: &str, key: &str) -> Option<f64> {
    let prefix = format!("{key}=");
    line.split_whitespace().find_map(|w| w.strip_prefix(prefix.as_str())).and_then(|v| v.parse().ok())
}

/// systemd's end of `NOTIFY_SOCKET`: a thread that receives every datagram
/// and notes when it arrived.
struct NotifySocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<(DateTime<Utc>, String)>>,
}

impl NotifySocket {
    fn bind(path: PathBuf) -> anyhow::Result<NotifySocket> {
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).with_context(|| format!("cannot bind {}", path.display()))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
            while !flag.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    out.push((Utc::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
                }
            }
            out
        });
        Ok(NotifySocket { path, stop, handle })
    }

    fn finish(self) -> Vec<(DateTime<Utc>, String)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// The watchdog as systemd would have seen it: `READY=1`, then each
/// `WATCHDOG=1` until `STOPPING=1`.
#[derive(Default)]
pub(crate) struct Watchdog {
    pub(crate) ready: Option<DateTime<Utc>>,
    pub(crate) pings: Vec<DateTime<Utc>>,
    pub(crate) stopping: Option<DateTime<Utc>>,
}

impl Watchdog {
    fn from_messages(messages: &[(DateTime<Utc>, String)]) -> Watchdog {
        let has = |m: &str, what: &str| m.lines().any(|l| l == what);
        let mut w = Watchdog::default();
        for (at, m) in messages {
            if has(m, "READY=1") && w.ready.is_none() {
                w.ready = Some(*at);
            }
            if has(m, "STOPPING=1") {
                w.stopping = Some(*at);
                break;
            }
            if has(m, "WATCHDOG=1") {
                w.pings.push(*at);
            }
        }
        w
    }

    /// The gaps systemd timed, from `READY=1` through each ping to
    /// `STOPPING=1`: (gap end, gap).
    fn gaps(&self) -> Vec<(DateTime<Utc>, chrono::Duration)> {
        let marks: Vec<DateTime<Utc>> =
            self.ready.iter().chain(&self.pings).chain(&self.stopping).copied().collect();
        marks.windows(2).map(|w| (w[1], w[1] - w[0])).collect()
    }

    /// Pings, firings (gaps over [`WATCHDOG_SEC`], each a kill under
    /// systemd) over the whole run, and the longest gap that ended in
    /// `[from, to]`: with sessions due every 100 ms there, the scheduler
    /// loop turns (and pings) at least every few hundred ms, so a longer
    /// gap is a turn that was stuck. Outside it the loop may sleep up to
    /// half of `WatchdogSec` by design.
    pub(crate) fn figures(&self, f: &mut Figures, from: DateTime<Utc>, to: DateTime<Utc>) {
        let gaps = self.gaps();
        let limit = chrono::Duration::from_std(WATCHDOG_SEC).unwrap_or_default();
        let ms = |d: chrono::Duration| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
        let longest = gaps.iter().filter(|(end, _)| *end >= from && *end <= to).map(|(_, g)| *g).max();
        let overall = gaps.iter().map(|(_, g)| *g).max();
        f.add("watchdog: READY=1 received", if self.ready.is_some() { 1.0 } else { 0.0 }, "");
        f.add("watchdog: WATCHDOG=1 pings received", self.pings.len() as f64, "");
        f.add("watchdog: longest gap between pings while sessions fell due", longest.map_or(0.0, ms), "ms");
        f.add("watchdog: longest gap between pings, whole run", overall.map_or(0.0, ms), "ms");
        f.add(
            format!("watchdog: gaps over WatchdogSec={} s (firings)", WATCHDOG_SEC.as_secs()),
            gaps.iter().filter(|(_, g)| *g > limit).count() as f64,
            "",
        );
    }
}
