//! The accept loop: what a client can hold of the daemon, and for how long.
//!
//! Anyone who can reach the listener (the TRTC webhook must be reachable
//! from the internet) can open connections. Each costs a file descriptor,
//! and file descriptors are also what provider calls and the database need,
//! so the loop bounds them:
//! - at most [`max_connections`] at once; past that, new connections wait
//!   in the kernel's backlog (they hold no descriptor of ours) until one
//!   closes;
//! - a connection must send a complete request head within
//!   [`HEADER_READ_TIMEOUT`] of opening or of its previous response (hyper
//!   runs the same timer while a kept-alive connection idles), so idle and
//!   slow-loris connections are closed;
//! - a request's body is read inside the handler, under its time limit
//!   (`REQUEST_TIMEOUT`), and by the session API only after the bearer token
//!   was checked.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A connection that has not sent a full request head this long after it
/// opened, or after its last response, is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);
/// Connections served at once, at most (fewer when the file descriptor
/// limit is low; see [`max_connections`]).
pub const MAX_CONNECTIONS: usize = 1024;
/// File descriptors kept for everything that is not a client connection:
/// provider calls, notifications, the database and its WAL, the runtime.
pub const RESERVED_FDS: u64 = 512;
/// How long shutdown waits for requests under way before closing.
pub const DRAIN: Duration = Duration::from_secs(11);

/// How many client connections to serve at once: [`MAX_CONNECTIONS`], or
/// fewer if the process may open few files, so that [`RESERVED_FDS`] stay
/// free for provider calls and the database.
pub fn max_connections() -> usize {
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    let room = limit.saturating_sub(RESERVED_FDS).max(16);
    usize::try_from(room).unwrap_or(usize::MAX).min(MAX_CONNECTIONS)
}

/// What a connection may hold: how long it may take to send a request
/// head, and how many are served at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// The daemon's limits: [`HEADER_READ_TIMEOUT`] and [`max_connections`].
    pub fn daemon() -> Limits {
        Limits { header_read_timeout: HEADER_READ_TIMEOUT, max_connections: max_connections() }
    }
}

/// Serves `app` on `listener` until `shutdown`, then stops accepting and
/// lets requests under way finish (up to [`DRAIN`]).
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut accept_errors = AcceptErrors::default();
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: wait a little rather than spin.
                    accept_errors.log(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Errors here are the client's (a reset, a timeout, a bad
            // request line); hyper answered what could be answered.
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN) => {
            tracing::warn!("http: requests still under way at shutdown were cut off");
        }
    }
}

/// Logs failed accepts at most once a second, with how many there were.
#[derive(Default)]
struct AcceptErrors {
    last: Option<std::time::Instant>,
    since: u64,
}

impl AcceptErrors {
    fn log(&mut self, e: &std::io::Error) {
        self.since += 1;
        if self.last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!(error = %e, failures = self.since, "http: cannot accept connections");
            self.last = Some(std::time::Instant::now());
            self.since = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn serving(limits: Limits) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let stop = CancellationToken::new();
        tokio::spawn(serve_connections(listener, app, limits, stop.clone()));
        (addr, stop)
    }

    /// Reads until the server closes the connection; what it sent.
    async fn until_closed(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the server kept the connection open");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Idle connections and slow-loris heads are closed after the header
    /// read timeout, not held forever.
    #[tokio::test]
    async fn idle_and_slow_connections_are_closed() {
        let timeout = Duration::from_millis(300);
        let (addr, stop) = serving(Limits { header_read_timeout: timeout, max_connections: 8 }).await;
        let started = std::time::Instant::now();
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        until_closed(&mut idle).await;
        until_closed(&mut slow).await;
        assert!(started.elapsed() >= timeout, "closed after {:?}", started.elapsed());
        // A kept-alive connection that goes quiet after a response is closed too.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let answer = until_closed(&mut kept).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        stop.cancel();
    }

    /// Past the cap, a new connection waits (in the kernel's backlog) until
    /// one closes, and is then served.
    #[tokio::test]
    async fn connections_past_the_cap_wait_for_a_free_slot() {
        let timeout = Duration::from_millis(400);
        let (addr, stop) = serving(Limits { header_read_timeout: timeout, max_connections: 2 }).await;
        let started = std::time::Instant::now();
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let answer = until_closed(&mut c).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(started.elapsed() >= timeout, "served after {:?}, before a slot was free", started.elapsed());
        stop.cancel();
    }
}
