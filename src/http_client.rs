//! The outgoing HTTP client: one builder for provider calls, notifications
//! and the sandbox, so every request carries the same user agent and
//! connection limits.

use std::time::Duration;

/// One HTTP client for every provider: shared connection pool, a user agent,
/// and a connect timeout (each request also gets its provider's timeout).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("callwarden/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .expect("the TLS back-end is compiled in, so the client builds")
}
