//! The accept loop: what a client can hold of the daemon, and for how long.
//!
//! Anyone who can reach the listener (the TRTC webhook must be reachable
//! from the internet) can open connections. Each costs a file descriptor,
//! and file descriptors are also what provider calls and the database need,
//! so the loop bounds them:
//! - at most [`max_connections`] at once; past that, the connection idle
//!   longest (at least [`EVICTABLE_AFTER`]) is closed to make room (see
//!   `slots`); when none is, the connection just accepted waits for the
//!   first slot given back, and the ones after it wait in the kernel's
//!   backlog (they hold no descriptor of ours);
//! - a connection must send a complete request head within
//!   [`HEADER_READ_TIMEOUT`] of opening or of its previous response (hyper
//!   runs the same timer while a kept-alive connection idles), so idle and
//!   slow-loris connections are closed;
//! - a request's body is read inside the handler, under its time limit
//!   (`REQUEST_TIMEOUT`), and by the session API only after the bearer token
//!   was checked.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod slots;

/// A connection that has not sent a full request head this long after it
/// opened, or after its last response, is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a connection must have been idle (no request under way) before
/// it may be closed to make room for a new one when every slot is taken.
pub const EVICTABLE_AFTER: Duration = Duration::from_millis(500);
/// Connections served at once, at most (fewer when the file descriptor
/// limit is low; see [`max_connections`]).
pub const MAX_CONNECTIONS: usize = 1024;
/// File descriptors kept for everything that is not a client connection:
/// provider calls, notifications, the database and its WAL, the runtime.
pub const RESERVED_FDS: u64 = 512;
/// How long shutdown waits for requests under way before closing.
pub const DRAIN: Duration = Duration::from_secs(11);

/// Connections the kernel queues, handshake done, until the accept loop
/// takes them (capped by `net.core.somaxconn`, 4096 by default). The
/// standard library's and mio's 128 overflow at once under a connection
/// flood, and a dropped handshake is retried by the client only after 1 s,
/// then 3 s, then 7 s.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the daemon's listener, with [`LISTEN_BACKLOG`].
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

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
    /// See [`EVICTABLE_AFTER`].
    pub evictable_after: Duration,
}

impl Limits {
    /// The daemon's limits: [`HEADER_READ_TIMEOUT`], [`max_connections`]
    /// and [`EVICTABLE_AFTER`].
    pub fn daemon() -> Limits {
        Limits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connections: max_connections(),
            evictable_after: EVICTABLE_AFTER,
        }
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
    let slots = slots::Slots::new(limits.max_connections, limits.evictable_after);
    let graceful = GracefulShutdown::new();
    let mut accept_errors = AcceptErrors::default();
    loop {
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
        // At most this one accepted connection waits for a slot; the rest
        // wait in the kernel's backlog.
        let slot = tokio::select! {
            (slot, evicted) = slots.take() => {
                if evicted > 0 {
                    crate::metrics::connections_closed_for_room(evicted);
                }
                slot
            }
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        // The app, with each request marking the connection busy while it
        // is under way (a busy connection is never closed to make room).
        let (inner, tracker) = (TowerToHyperService::new(app.clone()), slot.tracker());
        let service = hyper::service::service_fn(move |request| {
            let busy = tracker.busy();
            let call = hyper::service::Service::call(&inner, request);
            async move {
                let response = call.await;
                drop(busy);
                response
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        let closing = slot.closing();
        tokio::spawn(async move {
            tokio::select! {
                // Errors here are the client's (a reset, a timeout, a bad
                // request line); hyper answered what could be answered.
                _ = connection => {}
                // Idle longest while every slot is taken: dropping the
                // connection closes it.
                () = closing.cancelled() => {}
            }
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
        let (addr, stop) = serving(Limits {
            header_read_timeout: timeout,
            max_connections: 8,
            evictable_after: Duration::from_secs(3600),
        })
        .await;
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

    /// Past the cap, the connection idle longest is closed for a new one,
    /// which is served at once; one with a request under way is not.
    #[tokio::test]
    async fn past_the_cap_an_idle_connection_makes_room_for_a_new_one() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(30),
            max_connections: 2,
            evictable_after: Duration::from_millis(100),
        };
        let (addr, stop) = serving(limits).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let started = std::time::Instant::now();
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let answer = until_closed(&mut c).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(10), "served only after {:?}", started.elapsed());
        // The one idle longest was closed for it; the other is still open.
        assert_eq!(until_closed(&mut idle).await, "");
        let mut byte = [0u8; 1];
        let still_open = tokio::time::timeout(Duration::from_millis(200), slow.read(&mut byte)).await;
        assert!(still_open.is_err(), "the newer connection was closed too");
        stop.cancel();
    }

    /// Past the cap, with no connection idle long enough to be closed, a
    /// new connection waits (in the kernel's backlog) until one closes, and
    /// is then served.
    #[tokio::test]
    async fn connections_past_the_cap_wait_for_a_free_slot() {
        let timeout = Duration::from_millis(400);
        let (addr, stop) = serving(Limits {
            header_read_timeout: timeout,
            max_connections: 2,
            evictable_after: Duration::from_secs(3600),
        })
        .await;
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
