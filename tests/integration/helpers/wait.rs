//! Waiting: polling until something holds, with the bounds tests wait for.

use std::future::Future;
use std::time::{Duration, Instant as StdInstant};

use super::time::now_ms;

/// Generous bounds for "eventually": they only matter when something is broken.
pub const SHORT: Duration = Duration::from_secs(20);
pub const LONG: Duration = Duration::from_secs(60);

/// Polls `probe` until it yields a value; panics after `timeout`, naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = StdInstant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` until it is true; panics after `timeout`, naming `what`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await;
}

/// Sleeps until the wall clock reads `at_ms` (for "nothing happened before X").
pub async fn wait_for_wall_clock(at_ms: i64) {
    let remaining = at_ms - now_ms();
    if remaining > 0 {
        tokio::time::sleep(Duration::from_millis(remaining as u64 + 1)).await;
    }
    assert!(now_ms() >= at_ms);
}
