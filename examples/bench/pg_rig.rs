//! Several daemons on a throwaway PostgreSQL cluster, for issue 14's
//! scenarios: the cluster (`tests/support/pg_cluster.rs`, fsync on) and a
//! fresh database on it, the sandbox behind the tap, a configuration that
//! names them, and the daemon processes (the release binary), each in a
//! folder of its own. Which one leads a bucket is read from the lease rows;
//! a disrupted leader is replaced by a fresh instance, so as many run as
//! at the start.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use callwarden::sandbox::{Sandbox, SandboxOptions};
use callwarden::store::Store;

use crate::args::ProviderKind;
use crate::daemon_process::DaemonProcess;
use crate::pg_cluster;
use crate::rig::write_config;
use crate::tap::Tap;

/// How a leader is taken away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disruption {
    /// SIGKILL: its leases run out.
    Kill,
    /// SIGTERM: it hands its work back and gives its leases up.
    Stop,
}

pub(crate) struct PgRig {
    pub(crate) url: String,
    pub(crate) sandbox: Sandbox,
    pub(crate) tap: Tap,
    pub(crate) store: Store,
    /// Running instances; `None` only between a disruption and its
    /// replacement.
    pub(crate) daemons: Vec<Option<DaemonProcess>>,
    config_path: PathBuf,
    started: u32,
    shutdown: CancellationToken,
    dir: tempfile::TempDir,
    // Last: the cluster stops after everything that uses it.
    _cluster: pg_cluster::Cluster,
}

impl PgRig {
    /// A cluster, a fresh database and `instances` daemons enforcing TRTC
    /// at `rate` requests per second.
    pub(crate) async fn start(instances: usize, rate: u32) -> anyhow::Result<PgRig> {
        let cluster =
            pg_cluster::Cluster::start().map_err(|e| anyhow!("PostgreSQL cannot run here: {}", e.0))?;
        let url = cluster.fresh_database().await;
        let dir = tempfile::tempdir()?;
        let shutdown = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let sandbox = Sandbox::start(listener, SandboxOptions::default(), shutdown.clone()).await?;
        let tap = Tap::start(sandbox.addr, shutdown.clone()).await?;
        let (config_path, config) =
            write_config(dir.path(), std::path::Path::new(&url), &tap.url(), rate, ProviderKind::Trtc)?;
        let store = Store::connect(&config.database).await?;
        let mut rig = PgRig {
            url,
            sandbox,
            tap,
            store,
            daemons: Vec::new(),
            config_path,
            started: 0,
            shutdown,
            dir,
            _cluster: cluster,
        };
        for _ in 0..instances {
            let d = rig.start_daemon().await?;
            rig.daemons.push(Some(d));
        }
        Ok(rig)
    }

    /// A new instance, in a folder of its own.
    async fn start_daemon(&mut self) -> anyhow::Result<DaemonProcess> {
        self.started += 1;
        let d = self.dir.path().join(format!("instance-{}", self.started));
        std::fs::create_dir_all(&d)?;
        DaemonProcess::start(&self.config_path, &d).await
    }

    /// The index of the running daemon that leads `bucket`, by the lease
    /// rows (holder = host:pid:random); waits up to 10 s for one.
    pub(crate) async fn leader_of(&self, bucket: &str) -> anyhow::Result<usize> {
        let started = std::time::Instant::now();
        loop {
            let mut conn = self.store.lease_connection().await?.context("a shared database has leases")?;
            let leases = conn.leases().await?;
            conn.close().await;
            let pid = leases
                .iter()
                .find(|(b, _, _, expires_in)| b == bucket && *expires_in > 0)
                .and_then(|(_, holder, _, _)| holder.rsplit(':').nth(1)?.parse::<u32>().ok());
            if let Some(i) =
                pid.and_then(|pid| self.daemons.iter().position(|d| d.as_ref().is_some_and(|d| d.pid == pid)))
            {
                return Ok(i);
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("no running instance leads the {bucket} bucket: {leases:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes the leader of `bucket` away as `how` says and starts a fresh
    /// instance in its place; the moment of the signal.
    pub(crate) async fn disrupt_leader(
        &mut self,
        bucket: &str,
        how: Disruption,
    ) -> anyhow::Result<DateTime<Utc>> {
        let leader = self.leader_of(bucket).await?;
        let daemon = self.daemons[leader].take().context("the leader is running")?;
        let at = Utc::now();
        match how {
            Disruption::Kill => daemon.kill()?,
            Disruption::Stop => {
                if !daemon.stop().await?.success {
                    bail!("an instance stopped with SIGTERM exited unsuccessfully");
                }
            }
        }
        self.daemons[leader] = Some(self.start_daemon().await?);
        Ok(at)
    }

    /// Rooms the sandbox dismissed with success more than once, and rooms
    /// it dismissed.
    pub(crate) fn dismissals(&self) -> (usize, usize) {
        let mut successes: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
        for r in self.sandbox.state.requests() {
            if let (Some(room), "success") = (r.room, r.answer.as_str()) {
                *successes.entry(room).or_default() += 1;
            }
        }
        (successes.values().filter(|&&c| c > 1).count(), successes.len())
    }

    /// Connections the database server has for the daemons, per daemon
    /// (application_name callwarden, this database), sampled once. Closes
    /// the bench's own pool first, so call it last.
    pub(crate) async fn connections_per_instance(&self) -> anyhow::Result<f64> {
        use sqlx::Connection;
        self.store.close().await;
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'callwarden' AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut conn)
        .await?;
        let running = self.daemons.iter().flatten().count().max(1);
        Ok(n as f64 / running as f64)
    }

    /// Stops every instance (SIGTERM), then the sandbox and the tap.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        for d in self.daemons.into_iter().flatten() {
            d.stop().await?;
        }
        self.shutdown.cancel();
        Ok(())
    }
}

/// Milliseconds from `at` to the first request the tap saw after it.
pub(crate) fn gap_ms(seen: &[crate::tap::Seen], at: DateTime<Utc>) -> Option<i64> {
    seen.iter().filter(|s| s.at > at).map(|s| (s.at - at).num_milliseconds()).min()
}
