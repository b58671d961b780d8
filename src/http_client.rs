//! The outgoing HTTP client: one builder for provider calls, notifications
//! and the sandbox, so every request carries the same user agent and
//! connection limits.

use std::time::Duration;

/// The most of an answer's body that is read; the rest is dropped. Provider
/// answers and notification receipts are a few hundred bytes.
pub const ANSWER_CAP: usize = 64 * 1024;

/// One HTTP client for every provider: shared connection pool, a user agent,
/// and a connect timeout (each request also gets its provider's timeout).
/// It follows no redirect: a 307 or 308 would send a signed request (its
/// body, its signature header) on to wherever the answer points.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("callwarden/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .expect("the TLS back-end is compiled in, so the client builds")
}

/// Reads an answer's body up to [`ANSWER_CAP`] bytes: a misbehaving peer
/// cannot make the daemon buffer more than that per call.
pub async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = ANSWER_CAP - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == ANSWER_CAP {
            break;
        }
    }
    Ok(body)
}

/// Whether `url` names this host (loopback), where plain http carries
/// nothing off the machine.
pub fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// A URL as it may be printed or logged: without a user name or password,
/// and with its query shown only as `?****` (callback and notification URLs
/// carry tokens there). Text that is not a URL is not shown at all.
pub fn display_url(url: &str) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return "(not a URL)".into();
    };
    let _ = u.set_username("");
    let _ = u.set_password(None);
    let query = u.query().is_some();
    u.set_query(None);
    u.set_fragment(None);
    if query { format!("{u}?****") } else { u.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_userinfo_or_query() {
        assert_eq!(display_url("https://user:pass@example.com/x?token=s3cret"), "https://example.com/x?****");
        assert_eq!(display_url("http://127.0.0.1:8080/"), "http://127.0.0.1:8080/");
        assert_eq!(display_url("no url: s3cret"), "(not a URL)");
    }

    #[test]
    fn loopback_is_this_host_only() {
        let yes = ["http://127.0.0.1:1/", "http://127.8.0.1/", "http://[::1]:80/", "http://LOCALHOST/"];
        for url in yes {
            assert!(is_loopback(&url.parse().unwrap()), "{url}");
        }
        for url in ["http://10.0.0.1/", "http://localhost.example.com/", "http://[::2]/"] {
            assert!(!is_loopback(&url.parse().unwrap()), "{url}");
        }
    }
}
