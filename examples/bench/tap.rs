//! The tap: a loopback TCP relay in front of the sandbox that timestamps
//! each HTTP/1 request, with the parser that splits the stream into requests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A request seen by the tap.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// When its first bytes arrived at the tap.
    pub(crate) at: DateTime<Utc>,
    pub(crate) action: String,
    /// TRTC: `RoomId` from the JSON body, as text; ACS: the call connection id from the path.
    pub(crate) room: String,
}

/// A loopback TCP relay in front of the sandbox that timestamps each HTTP
/// request. The request bytes pass through unchanged (the `Host` header, and
/// so the signature, name the tap).
pub(crate) struct Tap {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Tap {
    pub(crate) async fn start(upstream: SocketAddr, shutdown: CancellationToken) -> anyhow::Result<Tap> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    () = shutdown.cancelled() => return,
                };
                let Ok((client, _)) = accepted else { continue };
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    if let Err(e) = relay(client, upstream, log).await {
                        eprintln!("tap: {e}");
                    }
                });
            }
        });
        Ok(Tap { addr, seen })
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, log: Arc<Mutex<Vec<Seen>>>) -> anyhow::Result<()> {
    client.set_nodelay(true)?;
    let server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let mut parser = RequestParser::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = client_read.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let at = Utc::now();
        for seen in parser.feed(&buf[..n], at) {
            if let Ok(mut log) = log.lock() {
                log.push(seen);
            }
        }
        server_write.write_all(&buf[..n]).await?;
    }
    server_write.shutdown().await?;
    Ok(())
}

/// Splits an HTTP/1.1 byte stream into requests (Content-Length bodies).
#[derive(Default)]
struct RequestParser {
    pending: Vec<u8>,
    started: Option<DateTime<Utc>>,
}

impl RequestParser {
    fn feed(&mut self, data: &[u8], at: DateTime<Utc>) -> Vec<Seen> {
        if self.pending.is_empty() {
            self.started = Some(at);
        }
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(head_end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&self.pending[..head_end]).into_owned();
            let mut length = 0usize;
            let mut action = String::new();
            // ACS: POST /calling/callConnections/{call}/participants:remove or /{call}:terminate.
            let mut acs_call = None;
            let target = head.split("\r\n").next().and_then(|l| l.split(' ').nth(1)).unwrap_or_default();
            if let Some(rest) = target.strip_prefix("/calling/callConnections/") {
                let path = rest.split('?').next().unwrap_or_default();
                if let Some(call) = path.strip_suffix("/participants:remove") {
                    action = "RemoveParticipant".into();
                    acs_call = Some(call.to_string());
                } else if let Some(call) = path.strip_suffix(":terminate") {
                    action = "TerminateCall".into();
                    acs_call = Some(call.to_string());
                }
            }
            for line in head.split("\r\n").skip(1) {
                if let Some((key, value)) = line.split_once(':') {
                    match key.trim().to_ascii_lowercase().as_str() {
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        "x-tc-action" => action = value.trim().to_string(),
                        _ => {}
                    }
                }
            }
            let total = head_end + 4 + length;
            if self.pending.len() < total {
                break;
            }
            let room = acs_call.unwrap_or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&self.pending[head_end + 4..total])
                    .ok()
                    .and_then(|v| {
                        v.get("RoomId").map(|r| match r {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                    })
                    .unwrap_or_default()
            });
            out.push(Seen { at: self.started.unwrap_or(at), action, room });
            self.pending.drain(..total);
            self.started = if self.pending.is_empty() { None } else { Some(at) };
        }
        out
    }
}
