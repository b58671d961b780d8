//! The ACS demo's stand-in for the application: it receives the callbacks
//! callwarden relays (`webhooks.acs.forward_to`) and counts them, and those
//! that still carry ACS's `Authorization: Bearer` token for it to verify.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio_util::sync::CancellationToken;

/// What the application received.
#[derive(Debug, Default)]
pub struct Received {
    pub callbacks: AtomicU64,
    pub with_token: AtomicU64,
}

/// Serves `POST /calling/events` on a free loopback port until `shutdown`;
/// returns its address and the counts.
pub async fn start(shutdown: CancellationToken) -> std::io::Result<(std::net::SocketAddr, Arc<Received>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received = Arc::new(Received::default());
    let app = axum::Router::new().route("/calling/events", post(receive)).with_state(Arc::clone(&received));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok((addr, received))
}

async fn receive(
    State(received): State<Arc<Received>>,
    headers: HeaderMap,
    _body: axum::body::Bytes,
) -> StatusCode {
    received.callbacks.fetch_add(1, Ordering::Relaxed);
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "));
    if bearer {
        received.with_token.fetch_add(1, Ordering::Relaxed);
    }
    StatusCode::OK
}
