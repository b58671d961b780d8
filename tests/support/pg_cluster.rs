//! Throwaway PostgreSQL clusters for the tests: `initdb` into a temporary
//! folder, a server on a free loopback port with trust authentication, and
//! a fresh database per test. A test that needs to stop, restart or pause
//! its database starts a [`Cluster`] of its own; the others share one per
//! test process ([`shared`]).
//!
//! The server binaries are found through `CALLWARDEN_PG_BIN`, `pg_config
//! --bindir`, or `/usr/lib/postgresql/<newest>/bin`. Without them the
//! PostgreSQL tests print why and pass without running, unless
//! `CALLWARDEN_REQUIRE_POSTGRES=1` (set by `.ci/run`), which makes that a
//! failure: CI can never pass by skipping them.
//!
//! `initdb` refuses to run as root; as root (CI), the cluster belongs to the
//! `postgres` user and its commands run through `runuser`. Each cluster has
//! a watcher process that stops the server and removes its folder when the
//! test process ends, however it ends.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether a missing PostgreSQL fails the test instead of skipping it.
pub fn required() -> bool {
    std::env::var("CALLWARDEN_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// A PostgreSQL server of the test's own.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    /// The data folder (its parent is removed by the watcher).
    data: PathBuf,
    pub port: u16,
    /// `postgres` when this process runs as root.
    owner: Option<&'static str>,
    watcher: std::process::Child,
}

/// Why PostgreSQL tests cannot run here.
#[derive(Debug)]
pub struct Unavailable(pub String);

fn bin_dir() -> Result<PathBuf, Unavailable> {
    if let Some(dir) = std::env::var_os("CALLWARDEN_PG_BIN") {
        let dir = PathBuf::from(dir);
        if !dir.join("initdb").exists() {
            return Err(Unavailable(format!("CALLWARDEN_PG_BIN={}: no initdb there", dir.display())));
        }
        return Ok(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.flatten()
                .filter_map(|d| {
                    let version = d.file_name().to_string_lossy().parse::<u32>().ok()?;
                    let bin = d.path().join("bin");
                    bin.join("initdb").exists().then_some((version, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        Unavailable(
            "PostgreSQL's server binaries (initdb, pg_ctl) are not installed; \
             `apt-get install postgresql` (or set CALLWARDEN_PG_BIN)"
                .into(),
        )
    })
}

fn is_root() -> bool {
    // The tests may not use unsafe code (no geteuid): /proc says.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    /// Initialises and starts a new cluster.
    pub fn start() -> Result<Cluster, Unavailable> {
        let bin = bin_dir()?;
        let owner = is_root().then_some("postgres");
        let root = tempfile::Builder::new().prefix("callwarden-pg-").tempdir().unwrap().keep();
        let data = root.join("data");
        if let Some(user) = owner {
            // The postgres user must own the folder it initialises.
            let status = Command::new("chown").args(["-R", user]).arg(&root).status().unwrap();
            assert!(status.success(), "cannot chown {} to {user}", root.display());
        }
        let mut watcher = Self::watcher(&bin, &root, &data, owner);
        let init = Self::command_as(owner, &bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C.UTF-8"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        if !init.status.success() {
            let _ = watcher.kill();
            let _ = watcher.wait();
            return Err(Unavailable(format!("initdb failed: {}", String::from_utf8_lossy(&init.stderr))));
        }
        let cluster = Cluster { bin, data, port: free_port(), owner, watcher };
        cluster.start_server()?;
        Ok(cluster)
    }

    /// A process that waits for this test process to end, then stops the
    /// server and removes the folder.
    fn watcher(bin: &Path, root: &Path, data: &Path, owner: Option<&str>) -> std::process::Child {
        let pg_ctl = format!("{} -D {} stop -m immediate", bin.join("pg_ctl").display(), data.display());
        let stop = match owner {
            Some(user) => format!("runuser -u {user} -- {pg_ctl}"),
            None => pg_ctl,
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {root}",
            pid = std::process::id(),
            root = root.display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn command_as(owner: Option<&str>, program: &Path) -> Command {
        match owner {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn pg_ctl(&self) -> Command {
        let mut c = Self::command_as(self.owner, &self.bin.join("pg_ctl"));
        c.arg("-D").arg(&self.data);
        c
    }

    fn start_server(&self) -> Result<(), Unavailable> {
        // Durability is not what these tests measure: no fsync, for speed.
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=400 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.data.display()
        );
        let out = self
            .pg_ctl()
            .args(["-w", "-t", "60", "-l"])
            .arg(self.data.join("server.log"))
            .args(["-o", &options, "start"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        if !out.status.success() {
            let log = std::fs::read_to_string(self.data.join("server.log")).unwrap_or_default();
            return Err(Unavailable(format!(
                "the PostgreSQL server did not start: {}{log}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Stops the server (`fast`: sessions are ended, as in a restart).
    pub fn stop(&self) {
        let out = self.pg_ctl().args(["-w", "-m", "fast", "stop"]).stdout(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts the server again on the same port.
    pub fn restart(&self) {
        self.start_server().unwrap();
    }

    /// The URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a fresh, empty database and returns its URL.
    pub async fn fresh_database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        use sqlx::Connection;
        let name = format!("cw_test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres")).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE template0")).execute(&mut admin).await.unwrap();
        admin.close().await.unwrap();
        self.url(&name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .pg_ctl()
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.watcher.kill();
        let _ = self.watcher.wait();
        if let Some(root) = self.data.parent() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

/// The cluster this test process shares, started on first use; `None`
/// (with the reason printed once) where PostgreSQL is not installed and
/// not required.
pub fn shared() -> Option<&'static Cluster> {
    static SHARED: OnceLock<Result<Cluster, Unavailable>> = OnceLock::new();
    match SHARED.get_or_init(Cluster::start) {
        Ok(cluster) => Some(cluster),
        Err(Unavailable(why)) => skip(why),
    }
}

/// A cluster of the test's own, to stop and restart; `None` as for
/// [`shared`].
pub fn own() -> Option<Cluster> {
    match Cluster::start() {
        Ok(cluster) => Some(cluster),
        Err(Unavailable(why)) => skip(&why),
    }
}

fn skip<T>(why: &str) -> Option<T> {
    if required() {
        panic!("CALLWARDEN_REQUIRE_POSTGRES=1 but PostgreSQL cannot run: {why}");
    }
    // Straight to stderr, past the test harness's capture, so the skip
    // shows in a passing run.
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "skipping the PostgreSQL tests: {why}");
    });
    None
}
