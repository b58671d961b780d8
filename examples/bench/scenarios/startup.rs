//! Scenario 4, startup: the release binary (and the baseline) over a large
//! database; time to ready, RSS, idle CPU and stop time of the process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant as StdInstant};

use anyhow::{Context, bail};

use callwarden::clock::Clock;
use callwarden::domain::Instant;
use callwarden::domain::session::NewSession;
use callwarden::store::Store;

use crate::args::{ProviderKind, StartupArgs};
use crate::clk_tck::clock_ticks_per_second;
use crate::daemon_process::DaemonProcess;
use crate::figures::Figures;
use crate::monitors::{cpu_ticks, mb, proc_memory_kb};
use crate::rig::{dismiss, sibling_binary, write_config, write_config_with};

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target"))
}

/// The release binary: the one next to this example (`build_companions` rebuilt it when run by cargo).
pub(crate) fn release_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    // target/release/examples/bench -> target/release/callwarden
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("callwarden"))
        .context("cannot locate the release directory")?;
    if !bin.exists() {
        bail!("{} not found; build it with cargo build --release, or pass --binary", bin.display());
    }
    Ok(bin)
}

/// The database with `n` active sessions, far in the future; filled once and kept.
pub(crate) async fn startup_database(n: usize, cache_dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(cache_dir)?;
    let db = cache_dir.join(format!("startup-{n}.db"));
    let marker = cache_dir.join(format!("startup-{n}.done"));
    if marker.exists() && db.exists() {
        // The cache is keyed by the session count only: bring a file filled
        // at an older schema up to date here, so no measured start includes
        // a migration.
        let started = StdInstant::now();
        Store::open(&db).await?.close().await;
        let took = started.elapsed().as_secs_f64();
        if took > 1.0 {
            eprintln!("migrated the cached {} in {took:.1} s", db.display());
        }
        return Ok(db);
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    eprintln!("filling {} with {n} sessions (once; cached afterwards)", db.display());
    let store = Store::open(&db).await?;
    let base = Instant::parse("2099-01-01T00:00:00Z")?;
    let now = Clock::system().now();
    let started = StdInstant::now();
    let batch = 20_000;
    let mut i = 0;
    while i < n {
        let chunk: Vec<NewSession> = (i..(i + batch).min(n))
            .map(|k| {
                dismiss(1 + (k % 4_000_000_000) as u32, Instant::from_millis(base.millis() + k as i64), now)
            })
            .collect();
        store.insert_sessions(&chunk, Clock::system().now(), "bench").await?;
        i += chunk.len();
        if i % 200_000 == 0 {
            eprintln!("  {i} sessions in {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    store.close().await;
    std::fs::write(&marker, format!("{n} sessions, filled in {:.1} s\n", started.elapsed().as_secs_f64()))?;
    Ok(db)
}

/// What one start of a long-running process showed.
struct ProcessRun {
    startup: Duration,
    rss_kb: u64,
    hwm_kb: u64,
    rss_end_kb: u64,
    hwm_end_kb: u64,
    idle_wall: f64,
    cpu_pct: f64,
    stop: Duration,
    success: bool,
    warnings: usize,
}

/// Spawns `cmd`, times it to the first stderr line containing `ready`, lets
/// it settle, reads its memory, measures its CPU over an idle window, then
/// stops it with SIGTERM.
async fn measure_process(
    mut cmd: Command,
    ready: &'static str,
    args: &StartupArgs,
) -> anyhow::Result<ProcessRun> {
    let spawned = StdInstant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the process under test")?;
    let pid = child.id();
    let stderr = child.stderr.take().context("no stderr")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(ready) {
                let _ = ready_tx.send(spawned.elapsed());
            }
            lines.push(line);
        }
        lines
    });
    let waited = tokio::task::spawn_blocking(move || ready_rx.recv_timeout(Duration::from_secs(120))).await?;
    let Ok(startup) = waited else {
        let _ = child.kill();
        let _ = child.wait();
        let lines = reader.join().unwrap_or_default();
        bail!("the process did not report {ready:?} within 120 s; its log:\n{}", lines.join("\n"));
    };
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    let (rss_kb, hwm_kb) = proc_memory_kb(&pid.to_string())?;
    let ticks_before = cpu_ticks(pid)?;
    let idle_started = StdInstant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.idle_secs)).await;
    let ticks_after = cpu_ticks(pid)?;
    let idle_wall = idle_started.elapsed().as_secs_f64();
    let (rss_end_kb, hwm_end_kb) = proc_memory_kb(&pid.to_string())?;
    let cpu_pct = (ticks_after - ticks_before) as f64 / clock_ticks_per_second() / idle_wall * 100.0;

    let stop_started = StdInstant::now();
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let stopped = tokio::task::spawn_blocking(move || child.wait()).await??;
    let stop = stop_started.elapsed();
    let lines = reader.join().unwrap_or_default();
    let warnings = lines.iter().filter(|l| l.contains("ERROR") || l.contains("WARN")).count();
    Ok(ProcessRun {
        startup,
        rss_kb,
        hwm_kb,
        rss_end_kb,
        hwm_end_kb,
        idle_wall,
        cpu_pct,
        stop,
        success: stopped.success(),
        warnings,
    })
}

pub(crate) async fn startup(args: &StartupArgs, binary: &Path, db: &Path) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let (config_path, _) = write_config(dir.path(), db, "http://127.0.0.1:9", 19, ProviderKind::Trtc)?;
    let db_mb = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;

    let mut cmd = Command::new(binary);
    cmd.arg("--config").arg(&config_path).arg("run").env("RUST_LOG", "info");
    let d = measure_process(cmd, "callwarden running", args).await?;

    let mut f = Figures::default();
    f.add("active sessions in the database", args.sessions as f64, "");
    f.add("database file", db_mb, "MB");
    f.add("startup: spawn -> \"callwarden running\"", d.startup.as_secs_f64() * 1000.0, "ms");
    f.add(format!("VmRSS after {:.0} s", args.settle_secs), mb(d.rss_kb), "MB");
    f.add(format!("VmHWM after {:.0} s", args.settle_secs), mb(d.hwm_kb), "MB");
    f.add("VmRSS at the end of the idle window", mb(d.rss_end_kb), "MB");
    f.add("VmHWM at the end of the idle window", mb(d.hwm_end_kb), "MB");
    f.add(format!("idle CPU over {:.0} s (% of one core)", d.idle_wall), d.cpu_pct, "%");
    f.add("stop: SIGTERM -> exit", d.stop.as_secs_f64() * 1000.0, "ms");
    f.add("exit status success", if d.success { 1.0 } else { 0.0 }, "");
    f.add("warnings and errors logged", d.warnings as f64, "");

    if args.baseline {
        // The baseline over the same database: its first poll finds nothing due.
        let mut cmd = Command::new(sibling_binary("baseline_poller")?);
        cmd.arg("--database").arg(db).arg("--endpoint").arg("http://127.0.0.1:9");
        let b = measure_process(cmd, "baseline running", args).await?;
        f.add("baseline: startup: spawn -> \"baseline running\"", b.startup.as_secs_f64() * 1000.0, "ms");
        f.add(format!("baseline: VmRSS after {:.0} s", args.settle_secs), mb(b.rss_kb), "MB");
        f.add("baseline: VmRSS at the end of the idle window", mb(b.rss_end_kb), "MB");
        f.add("baseline: VmHWM at the end of the idle window", mb(b.hwm_end_kb), "MB");
        f.add(format!("baseline: idle CPU over {:.0} s (% of one core)", b.idle_wall), b.cpu_pct, "%");
    }
    metrics_scrapes(args, db, &mut f).await?;
    Ok(f)
}

/// `/metrics` scraped `--scrapes` times, one after another over one
/// kept-alive connection as Prometheus does, from a second start of the
/// daemon over the same database (with `listen:`, as its own process).
async fn metrics_scrapes(args: &StartupArgs, db: &Path, f: &mut Figures) -> anyhow::Result<()> {
    if args.scrapes == 0 {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let listen = "listen: 127.0.0.1:0\n";
    let (config_path, _) =
        write_config_with(dir.path(), db, "http://127.0.0.1:9", 19, ProviderKind::Trtc, listen)?;
    let daemon = DaemonProcess::start(&config_path, dir.path()).await?;
    let url = format!("http://{}/metrics", daemon.http_addr().await?);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let (mut us, mut bytes) = (Vec::with_capacity(args.scrapes), 0);
    for _ in 0..args.scrapes {
        let started = StdInstant::now();
        let body = client.get(&url).send().await?.error_for_status()?.bytes().await?;
        us.push(started.elapsed().as_micros() as i64);
        bytes = body.len();
    }
    let stopped = daemon.stop().await?;
    stopped.save_log("metrics");
    let first = us.first().copied().unwrap_or(0);
    us.sort_unstable();
    f.add("GET /metrics: scrapes", us.len() as f64, "");
    f.add("GET /metrics: body size", bytes as f64, "bytes");
    f.add("GET /metrics: first scrape", first as f64 / 1000.0, "ms");
    f.add_dist_us("GET /metrics: answer time", &us);
    f.add("GET /metrics: daemon warnings and errors logged", stopped.warnings() as f64, "");
    Ok(())
}
