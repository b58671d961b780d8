//! The connection flood of the connections scenario: clients that open a
//! TCP connection to the daemon's listener and hold it without a word
//! (idle), or send a request head one byte every few seconds and never
//! finish it (slow-loris). Each reconnects as soon as the daemon closes it,
//! as an attacker would, until the flood stops. And the probes that read
//! what the flood does: a normal `GET /healthz`, the listener's accept
//! queue, the kernel's count of refused handshakes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant as StdInstant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// What the flood's clients saw, summed over all of them.
#[derive(Default)]
pub(crate) struct Counters {
    /// Handshakes completed (the kernel's; the daemon may not have accepted yet).
    pub(crate) connected: AtomicU64,
    pub(crate) connect_errors: AtomicU64,
    /// Connections the daemon closed (EOF or reset seen by the client).
    pub(crate) closed_by_daemon: AtomicU64,
    /// Connections open now, from the clients' side.
    pub(crate) open: AtomicU64,
    /// Clients waiting in `connect` now (their SYN unanswered: queue full).
    pub(crate) connecting: AtomicU64,
    pub(crate) slow_bytes: AtomicU64,
    /// Slow-loris connections made (handshake completed).
    pub(crate) slow_connected: AtomicU64,
}

impl Counters {
    pub(crate) fn get(c: &AtomicU64) -> f64 {
        c.load(Ordering::Relaxed) as f64
    }
}

/// The flood: `idle` + `slow` client tasks.
pub(crate) struct Flood {
    pub(crate) counters: Arc<Counters>,
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

/// A request head that is never finished: its header line grows by one byte
/// at a time.
const SLOW_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Slow: ";

impl Flood {
    pub(crate) fn start(addr: SocketAddr, idle: usize, slow: usize, slow_every: Duration) -> Flood {
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        // Interleaved, so that both kinds are among the first to connect:
        // once the listener is full, the clients it closes reconnect first
        // (the others wait in SYN retransmission backoff).
        let total = idle + slow;
        for i in 0..total {
            let is_slow = (i + 1) * slow / total.max(1) > i * slow / total.max(1);
            tasks.spawn(client(addr, is_slow.then_some(slow_every), Arc::clone(&counters), stop.clone()));
        }
        Flood { counters, stop, tasks }
    }

    /// Stops every client and closes its connection.
    pub(crate) async fn stop(mut self) -> Arc<Counters> {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.counters
    }
}

async fn client(addr: SocketAddr, slow: Option<Duration>, c: Arc<Counters>, stop: CancellationToken) {
    let mut buf = [0u8; 1024];
    while !stop.is_cancelled() {
        c.connecting.fetch_add(1, Ordering::Relaxed);
        let connected = tokio::select! {
            s = TcpStream::connect(addr) => Some(s),
            () = stop.cancelled() => None,
        };
        c.connecting.fetch_sub(1, Ordering::Relaxed);
        let mut stream = match connected {
            None => return,
            Some(Ok(s)) => s,
            Some(Err(_)) => {
                c.connect_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        c.connected.fetch_add(1, Ordering::Relaxed);
        if slow.is_some() {
            c.slow_connected.fetch_add(1, Ordering::Relaxed);
        }
        c.open.fetch_add(1, Ordering::Relaxed);
        let (mut reader, mut writer) = stream.split();
        let mut sent = 0usize;
        let closed = loop {
            let tick = async {
                match slow {
                    Some(every) => tokio::time::sleep(every).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Anything from the daemon (an error answer, EOF, a reset) ends it.
                _ = reader.read(&mut buf) => break true,
                () = tick => {
                    let byte = SLOW_HEAD.get(sent).copied().unwrap_or(b'a');
                    if writer.write_all(&[byte]).await.is_err() {
                        break true;
                    }
                    sent += 1;
                    c.slow_bytes.fetch_add(1, Ordering::Relaxed);
                }
                () = stop.cancelled() => break false,
            }
        };
        c.open.fetch_sub(1, Ordering::Relaxed);
        if closed {
            c.closed_by_daemon.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A normal `GET /healthz` on a new connection: how long until the whole
/// answer arrived, or why there was none within `timeout`.
pub(crate) async fn healthz(addr: SocketAddr, timeout: Duration) -> Result<Duration, &'static str> {
    let started = StdInstant::now();
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.map_err(|_| "connect failed")?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|_| "write failed")?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.map_err(|_| "read failed")?;
        if answer.starts_with(b"HTTP/1.1 200") { Ok(()) } else { Err("not 200") }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("timed out"),
    }
}

/// `addr` as /proc/net/tcp writes a local address.
fn proc_net_addr(addr: SocketAddr) -> Option<String> {
    let std::net::IpAddr::V4(ip) = addr.ip() else { return None };
    Some(format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), addr.port()))
}

/// The current length of the accept queue of the listener on `addr`
/// (`rx_queue` of its LISTEN row in /proc/net/tcp).
pub(crate) fn accept_queue(addr: SocketAddr) -> Option<u64> {
    let local = proc_net_addr(addr)?;
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A") {
            let (_, rx) = f.get(4)?.split_once(':')?;
            u64::from_str_radix(rx, 16).ok()
        } else {
            None
        }
    })
}

/// The listen backlog (accept queue capacity) of the listener on `addr`:
/// the Send-Q that `ss -ltn` shows for it.
pub(crate) fn listen_backlog(addr: SocketAddr) -> Option<u64> {
    let out = std::process::Command::new("ss").args(["-Hltn"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(3) == Some(&addr.to_string().as_str())).then(|| f.get(2)?.parse().ok()).flatten()
    })
}

/// Client connections process `pid` holds on its listener `addr`: the
/// sockets among its file descriptors whose /proc/net/tcp row is a
/// connection to `addr` (not the listener itself, not its outgoing calls).
pub(crate) fn held_connections(pid: u32, addr: SocketAddr) -> usize {
    let Some(local) = proc_net_addr(addr) else { return 0 };
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    let inodes: std::collections::HashSet<String> = fds
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')).map(str::to_string)
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&local.as_str())
                && f.get(3) != Some(&"0A")
                && f.get(9).is_some_and(|inode| inodes.contains(*inode))
        })
        .count()
}

/// `TcpExt: ListenOverflows` from /proc/net/netstat: handshakes the kernel
/// dropped because a listener's accept queue was full (whole machine).
pub(crate) fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names.split_whitespace().position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}
