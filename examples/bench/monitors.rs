//! Monitors: the fsync and wake-up threads that show disk stalls and CPU
//! contention during a run, and memory and CPU readings from /proc.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context;
use chrono::{DateTime, Utc};

use callwarden::scheduler::{CLAIM_LEAD, CLAIM_WINDOW};

use crate::figures::Figures;

/// A thread that writes and fsyncs a small file in the benchmark's
/// directory every 100 ms, timing each fsync: it shows when the disk (shared
/// with whatever else runs on the machine) stalls, independently of the
/// daemon's own connection.
pub(crate) struct FsyncMonitor {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Vec<(DateTime<Utc>, Duration)>>,
}

impl FsyncMonitor {
    pub(crate) fn start(dir: &Path) -> anyhow::Result<FsyncMonitor> {
        use std::io::Write;
        let mut file = std::fs::File::create(dir.join("fsync-monitor"))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let at = Utc::now();
                let started = StdInstant::now();
                if file.write_all(b"x").and_then(|()| file.sync_data()).is_err() {
                    break;
                }
                out.push((at, started.elapsed()));
                std::thread::sleep(Duration::from_millis(100));
            }
            out
        });
        Ok(FsyncMonitor { stop, handle })
    }

    pub(crate) fn finish(self) -> Vec<(DateTime<Utc>, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// A thread that sleeps 1 ms at a time and notes how much later than asked
/// it woke: CPU contention (run-queue delay) on this shared two-core machine,
/// independent of the disk. Keeps the wake-ups that overshot by more than
/// 1 ms, with the total count of sleeps.
pub(crate) struct WakeMonitor {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Wakes>,
}

/// How many 1 ms sleeps ran, and (start, overshoot) of those that overshot by > 1 ms.
pub(crate) type Wakes = (usize, Vec<(DateTime<Utc>, Duration)>);

impl WakeMonitor {
    pub(crate) fn start() -> WakeMonitor {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let (mut count, mut late) = (0usize, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                let at = Utc::now();
                let started = StdInstant::now();
                std::thread::sleep(Duration::from_millis(1));
                let over = started.elapsed().saturating_sub(Duration::from_millis(1));
                count += 1;
                if over > Duration::from_millis(1) {
                    late.push((at, over));
                }
            }
            (count, late)
        });
        WakeMonitor { stop, handle }
    }

    pub(crate) fn finish(self) -> Wakes {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

pub(crate) fn wake_figures(f: &mut Figures, (count, late): &Wakes) {
    let over = |ms: u64| late.iter().filter(|(_, d)| *d > Duration::from_millis(ms)).count() as f64;
    f.add("CPU monitor: 1 ms sleeps", *count as f64, "");
    f.add("CPU monitor: woke > 5 ms late", over(5), "");
    f.add("CPU monitor: woke > 20 ms late", over(20), "");
    let max = late.iter().map(|(_, d)| *d).max().unwrap_or_default();
    f.add("CPU monitor: latest wake-up", max.as_secs_f64() * 1000.0, "ms");
}

/// Whether any fsync slower than `slow` overlapped `[from, to]`.
pub(crate) fn stalled(
    samples: &[(DateTime<Utc>, Duration)],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    slow: Duration,
) -> bool {
    samples.iter().any(|(at, took)| {
        *took > slow && *at <= to && *at + chrono::Duration::from_std(*took).unwrap_or_default() >= from
    })
}

pub(crate) fn fsync_figures(f: &mut Figures, samples: &[(DateTime<Utc>, Duration)]) {
    let mut us: Vec<i64> = samples.iter().map(|(_, d)| d.as_micros() as i64).collect();
    us.sort_unstable();
    f.add_dist_us("fsync monitor (1-byte write + fdatasync every 100 ms)", &us);
    f.add("fsync monitor: fsyncs over 50 ms", us.iter().filter(|v| **v > 50_000).count() as f64, "");
}

/// How far ahead of its deadline a session can be claimed: the scheduler
/// claims at deadline - CLAIM_LEAD and takes what falls due within
/// CLAIM_WINDOW more. A disk stall that starts in this reach can delay a call.
pub(crate) fn claim_reach() -> chrono::Duration {
    chrono::Duration::from_std(CLAIM_LEAD + CLAIM_WINDOW).unwrap_or_default()
}

pub(crate) fn claim_reach_ms() -> u128 {
    (CLAIM_LEAD + CLAIM_WINDOW).as_millis()
}

/// VmRSS and VmHWM (kB) of a process, from /proc.
pub(crate) fn proc_memory_kb(pid: &str) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

pub(crate) fn mb(kb: u64) -> f64 {
    (kb as f64 / 1024.0 * 10.0).round() / 10.0
}

pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. indexes 11 and 12 here.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}
