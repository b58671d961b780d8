//! `callwarden demo --database postgres://… --instances N`: the TRTC demo's
//! scenario with N daemons sharing one PostgreSQL database. The daemons
//! are this binary's `run`, as child processes in one process group (their
//! logs go to files next to the config); the sandbox runs in-process. Three
//! seconds into the burst the demo kills the daemon that leads the TRTC
//! bucket (SIGKILL, as a crash would), and shows which instance took over,
//! how long no provider call left, whether any call was doubled, and the
//! quota the sandbox saw.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant as StdInstant};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use super::{DemoProvider, Plan, demo_config, plan_trtc, stage};
use crate::clock::Clock;
use crate::config::Config;
use crate::sandbox::{Sandbox, SandboxOptions};
use crate::store::Store;

/// The daemons, killed together (SIGKILL to the group) when dropped.
struct Group {
    children: Vec<Option<Child>>,
    pgid: i32,
}

impl Group {
    fn spawn(config: &Path, dir: &Path, n: u32) -> anyhow::Result<Group> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().context("cannot find this binary")?;
        let mut group = Group { children: Vec::new(), pgid: 0 };
        for i in 1..=n {
            let log = std::fs::File::create(dir.join(format!("daemon-{i}.log")))?;
            let mut command = Command::new(&exe);
            command
                .args(["--config".as_ref(), config.as_os_str(), "run".as_ref()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .env("NO_COLOR", "1")
                .process_group(group.pgid);
            let child = command.spawn().context("cannot start a daemon")?;
            if group.pgid == 0 {
                group.pgid = i32::try_from(child.id()).unwrap_or(0);
            }
            group.children.push(Some(child));
        }
        Ok(group)
    }

    /// The instance (1-based) whose process is `pid`.
    fn instance_of(&self, pid: u32) -> Option<usize> {
        self.children.iter().position(|c| c.as_ref().is_some_and(|c| c.id() == pid)).map(|i| i + 1)
    }

    fn pid(&self, instance: usize) -> Option<u32> {
        self.children.get(instance - 1)?.as_ref().map(Child::id)
    }

    /// SIGKILL to one instance, reaped.
    fn kill(&mut self, instance: usize) {
        if let Some(mut child) = self.children.get_mut(instance - 1).and_then(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM to the rest; waits for them to hand over and stop.
    fn stop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        }
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.wait();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.pgid > 0 && self.children.iter().any(Option::is_some) {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.pgid)]).status();
        }
    }
}

/// Who leads the TRTC bucket now, by the lease rows: the instance number.
async fn trtc_leader(store: &Store, group: &Group) -> Option<usize> {
    let mut conn = store.lease_connection().await.ok()??;
    let leases = conn.leases().await.ok()?;
    conn.close().await;
    let (_, holder, _, expires_in) = leases.into_iter().find(|(bucket, ..)| bucket == "trtc")?;
    if expires_in <= 0 {
        return None;
    }
    // holder = host:pid:random
    let pid: u32 = holder.rsplit(':').nth(1)?.parse().ok()?;
    group.instance_of(pid)
}

pub async fn run(url: &str, instances: u32, spread: u32, burst: u32) -> anyhow::Result<()> {
    if !crate::config::Database::is_postgres_url(url) {
        bail!("--instances needs --database postgres://… (several daemons share a PostgreSQL database)");
    }
    let dir =
        std::env::temp_dir().join(format!("callwarden-demo-{}", &uuid::Uuid::new_v4().to_string()[..8]));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config_path = dir.join("demo.yaml");
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot bind loopback")?;
    let sandbox = Sandbox::start(listener, SandboxOptions::default(), shutdown.clone()).await?;
    std::fs::write(&config_path, demo_config(Path::new(url), &sandbox.url()))
        .context("cannot write the demo config")?;
    let config = Config::load(&config_path)?;
    let store = Store::connect(&config.database).await?;
    let existing: i64 = store.state_counts().await?.iter().map(|(_, n)| n).sum();
    if existing > 0 {
        bail!("{} holds {existing} sessions already; the demo needs an empty database", store.location());
    }

    println!("callwarden demo, {instances} instances on PostgreSQL");
    println!("  sandbox TRTC API   {} (quota 20 requests/s per action)", sandbox.url());
    println!("  database           {}", store.location());
    println!("  daemon logs        {}/daemon-N.log", dir.display());
    println!("  daemon rate        19 requests/s per action, held by whichever instance leads\n");
    let mut group = Group::spawn(&config_path, &dir, instances)?;
    let first = wait_for_leader(&store, &group, None).await?;
    println!("instance {first} leads the TRTC bucket (pid {})", group.pid(first).unwrap_or(0));

    let clock = Clock::system();
    let now = clock.now();
    let Plan { sessions, burst: burst_ids, to_end: _ } = plan_trtc(now, spread, burst);
    stage(&sandbox, DemoProvider::Trtc);
    store.insert_sessions(&sessions, now, "registered by the demo").await?;
    let total = sessions.len();
    println!(
        "registered {total} sessions: {} over the next 2-6 s, {} expiring together at +7 s\n",
        total - burst_ids.len(),
        burst_ids.len()
    );

    let started = StdInstant::now();
    let mut killed: Option<(usize, StdInstant)> = None;
    let mut took_over: Option<usize> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if killed.is_none()
            && instances > 1
            && started.elapsed() >= Duration::from_secs(10)
            && let Some(leader) = trtc_leader(&store, &group).await
        {
            group.kill(leader);
            println!(
                "killed instance {leader}, the leader, with SIGKILL at +{:.1}s",
                started.elapsed().as_secs_f64()
            );
            killed = Some((leader, StdInstant::now()));
        }
        if let (Some((dead, at)), None) = (killed, took_over)
            && let Some(leader) = trtc_leader(&store, &group).await
            && leader != dead
        {
            println!("instance {leader} took over {:.1} s after the kill", at.elapsed().as_secs_f64());
            took_over = Some(leader);
        }
        let counts: HashMap<String, i64> = store.state_counts().await?.into_iter().collect();
        let count = |s: &str| counts.get(s).copied().unwrap_or(0);
        let leader = trtc_leader(&store, &group).await.map_or("none".to_string(), |i| format!("#{i}"));
        println!(
            "[{:>5.1}s] leader {leader:<4}  waiting {:>4}  enforcing {:>4}  enforced {:>4}  already ended {:>3}  failed {:>2}  provider calls {:>4}",
            started.elapsed().as_secs_f64(),
            count("active"),
            count("enforcing"),
            count("enforced"),
            count("already_ended"),
            count("failed"),
            sandbox.state.stats().requests,
        );
        std::io::stdout().flush().ok();
        if count("active") + count("enforcing") == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("the demo did not finish in 5 minutes; see the daemons' logs in {}", dir.display());
        }
    }
    group.stop();
    shutdown.cancel();
    summarize(&sandbox, &store, killed.map(|(i, _)| i), took_over).await?;
    println!("\nthe database stays for you to query, and the config: {}", config_path.display());
    store.close().await;
    Ok(())
}

/// Waits (up to 10 s) for an instance other than `not` to lead TRTC.
async fn wait_for_leader(store: &Store, group: &Group, not: Option<usize>) -> anyhow::Result<usize> {
    let started = StdInstant::now();
    loop {
        if let Some(leader) = trtc_leader(store, group).await.filter(|l| Some(*l) != not) {
            return Ok(leader);
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("no instance took the TRTC lease within 10 s; see the daemons' logs");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn summarize(
    sandbox: &Sandbox,
    store: &Store,
    killed: Option<usize>,
    took_over: Option<usize>,
) -> anyhow::Result<()> {
    let mut requests = sandbox.state.requests();
    requests.retain(|r| r.room.is_some());
    requests.sort_by_key(|r| r.at_ms);
    let gap = requests.windows(2).map(|w| w[1].at_ms - w[0].at_ms).max().unwrap_or(0);
    // A target (room, or room and users) that two requests ended with success.
    let mut successes: HashMap<String, u32> = HashMap::new();
    for r in &requests {
        if r.answer == "success" {
            *successes.entry(format!("{:?}/{:?}", r.room, r.users)).or_default() += 1;
        }
    }
    let doubled = successes.values().filter(|&&n| n > 1).count();
    let stats = sandbox.state.stats();
    println!("\nsummary");
    for (state, n) in store.state_counts().await? {
        println!("  {state:<14} {n:>5}");
    }
    if let Some(dead) = killed {
        println!(
            "  instance {dead} killed; instance {} took over; longest time without a provider call: {:.2} s",
            took_over.map_or("?".to_string(), |i| i.to_string()),
            gap as f64 / 1000.0
        );
    }
    println!("  calls that ended a room or removed a user twice: {doubled}");
    println!(
        "  provider calls {}; most in any one second: {} (quota 20); quota errors: {}",
        stats.requests, stats.max_per_second, stats.rate_limited
    );
    Ok(())
}
