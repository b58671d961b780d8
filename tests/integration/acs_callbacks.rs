//! ACS callbacks as a real deployment gets them: the application created
//! the call with callwarden's webhook as its callback URI, the sandbox
//! (playing ACS) posts the call's events there signed with its own key,
//! callwarden verifies the JWT, applies the events and relays each callback
//! to the application, answering ACS with the application's status.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use axum::http::{HeaderMap, StatusCode};
use callwarden::http::webhooks::acs_jwt::ACS_ISSUER;
use callwarden::sandbox::acs_calls::{SANDBOX_ACS_KEY_ID, SANDBOX_ACS_RESOURCE_ID, SANDBOX_APP_LEG_PREFIX};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use callwarden::sandbox::SANDBOX_ACS_ACCESS_KEY;

use crate::helpers::*;

/// The sandbox's signing key (test material, see src/sandbox/keys) and a
/// key nobody publishes.
const SANDBOX_KEY: &str = include_str!("../../src/sandbox/keys/acs-callback-signing.pem");
const FORGER_KEY: &str = include_str!("../fixtures/keys/forger.pem");

const POLICIES: &str = "  acs-people: { provider: acs, match: { room: 'people-*' }, max_duration: 3s, action: remove_participant }\n";

/// The application behind `forward_to`: counts what it receives, and
/// answers with a status the test sets.
#[derive(Default)]
struct App {
    received: AtomicU64,
    with_bearer: AtomicU64,
    status: AtomicU16,
}

async fn start_app() -> (String, Arc<App>) {
    let app = Arc::new(App { status: AtomicU16::new(200), ..App::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::clone(&app);
    let router = axum::Router::new().route(
        "/calling/events",
        axum::routing::post(move |headers: HeaderMap, _body: axum::body::Bytes| {
            let app = Arc::clone(&state);
            async move {
                app.received.fetch_add(1, Ordering::SeqCst);
                let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
                if bearer.starts_with("Bearer ") && bearer.len() > 100 {
                    app.with_bearer.fetch_add(1, Ordering::SeqCst);
                }
                StatusCode::from_u16(app.status.load(Ordering::SeqCst)).unwrap()
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}/calling/events"), app)
}

/// A config whose ACS webhook wants the sandbox's JWT and the token, and
/// relays to `forward_to`.
async fn harness(forward_to: &str) -> Harness {
    let forward_to = forward_to.to_string();
    Harness::with_config(move |db, url| {
        let mut text = http_config_text(db, url, Listener { acs: true, ..Listener::default() }, POLICIES);
        text.push_str(&format!(
            "    jwt_audience: {SANDBOX_ACS_RESOURCE_ID}\n    openid_configuration_url: {url}/calling/.well-known/acsopenidconfiguration\n    \
             forward_to: {forward_to}\n    app_identities: [\"{SANDBOX_APP_LEG_PREFIX}*\"]\n"
        ));
        text
    })
    .await
}

async fn sandbox_post(h: &Harness, path: &str, body: Value) {
    let r = reqwest::Client::new().post(format!("{}{path}", h.sandbox.url)).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
}

/// The application creates a call with callwarden's webhook as its
/// callback URI; the sandbox (ACS) connects it and posts its roster there.
async fn create_call(
    h: &Harness,
    daemon: &Daemon,
    call: &str,
    participants: &[&str],
    sequence_numbers: bool,
) {
    let callback = format!("{}/webhooks/acs?token={ACS_WEBHOOK_SECRET}", daemon.http_url().await);
    let body = json!({
        "callConnectionId": call, "callbackUri": callback, "participants": participants,
        "sequenceNumbers": sequence_numbers,
    });
    sandbox_post(h, "/_sandbox/acs/calls", body).await;
}

#[tokio::test]
async fn call_events_reach_callwarden_through_the_call_callback_and_are_relayed_to_the_app() {
    let (app_url, app) = start_app().await;
    let h = harness(&app_url).await;
    let daemon = h.start_daemon().await;
    let (a, b) = ("8:acs:res_a", "4:+15551230000");
    create_call(&h, &daemon, "people-1", &[a, b], true).await;
    // The roster opens a session per participant; never one for the
    // application's own leg, which ACS lists too.
    wait_until("two participant sessions", SHORT, || async {
        h.sessions().await.iter().filter(|r| r.room_id == "people-1").count() == 2
    })
    .await;
    let rows = h.sessions().await;
    let mut users: Vec<String> = rows.iter().filter_map(|r| r.user_id.clone()).collect();
    users.sort();
    assert_eq!(users, [b, a], "{rows:#?}");
    // At their deadline both are removed; ACS's roster and outcomes follow.
    for row in &rows {
        let row = h.wait_for_state(&row.id, "enforced", SHORT).await;
        assert_eq!(row.attempts, 1, "{row:#?}");
    }
    // Every callback went on to the application with ACS's token intact:
    // CallConnected, the first roster, and the roster after each removal.
    wait_until("the relays", SHORT, || async { app.received.load(Ordering::SeqCst) >= 4 }).await;
    assert_eq!(app.received.load(Ordering::SeqCst), app.with_bearer.load(Ordering::SeqCst));
    let stats = h.sandbox.stats().await;
    assert_eq!(stats.events_undelivered, 0, "{stats:?}");

    // The application fails: callwarden still applies the event, and ACS
    // hears the application's 500.
    app.status.store(500, Ordering::SeqCst);
    sandbox_post(&h, "/_sandbox/acs/calls/people-1/participants", json!({ "join": ["8:acs:res_c"] })).await;
    wait_until("c's session", SHORT, || async {
        h.sessions().await.iter().any(|r| r.user_id.as_deref() == Some("8:acs:res_c") && r.state == "active")
    })
    .await;
    wait_until("ACS hears the app's 500", SHORT, || async {
        h.sandbox.stats().await.events_undelivered >= 1
    })
    .await;
}

/// A token as ACS's would look, signed with `key`, with `claims` changed.
fn token(key: &str, kid: &str, alg: Algorithm, claims: Value) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut all = json!({ "iss": ACS_ISSUER, "aud": SANDBOX_ACS_RESOURCE_ID, "iat": now, "nbf": now, "exp": now + 300 });
    for (k, v) in claims.as_object().unwrap() {
        all[k] = v.clone();
    }
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(b"anything").unwrap(),
        _ => EncodingKey::from_rsa_pem(key.as_bytes()).unwrap(),
    };
    jsonwebtoken::encode(&header, &all, &key).unwrap()
}

#[tokio::test]
async fn a_callback_without_acs_valid_jwt_is_refused_and_changes_nothing() {
    let (app_url, app) = start_app().await;
    let h = harness(&app_url).await;
    let daemon = h.start_daemon().await;
    let url = format!("{}/webhooks/acs?token={ACS_WEBHOOK_SECRET}", daemon.http_url().await);
    let now = chrono::Utc::now();
    let roster = json!([{
        "type": "Microsoft.Communication.ParticipantsUpdated", "time": now.to_rfc3339(), "specversion": "1.0",
        "data": { "callConnectionId": "people-9", "participants": [{ "identifier": { "rawId": "8:acs:res_z" } }] },
    }]);
    let post = |auth: Option<String>| {
        let mut r = reqwest::Client::new().post(&url).json(&roster);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    let t = chrono::Utc::now().timestamp();
    let alg_none = {
        let header = base64_url(r#"{"alg":"none","typ":"JWT","kid":"callwarden-sandbox-2026"}"#);
        let claims = base64_url(
            &json!({ "iss": ACS_ISSUER, "aud": SANDBOX_ACS_RESOURCE_ID, "exp": t + 300 }).to_string(),
        );
        format!("{header}.{claims}.")
    };
    let refused = [
        ("no Authorization", None),
        ("not a bearer", Some("Basic YTpi".to_string())),
        ("garbage", Some("Bearer not.a.jwt".to_string())),
        ("alg none", Some(format!("Bearer {alg_none}"))),
        ("HS256", Some(format!("Bearer {}", token("", SANDBOX_ACS_KEY_ID, Algorithm::HS256, json!({}))))),
        (
            "forged",
            Some(format!("Bearer {}", token(FORGER_KEY, SANDBOX_ACS_KEY_ID, Algorithm::RS256, json!({})))),
        ),
        (
            "unknown kid",
            Some(format!("Bearer {}", token(FORGER_KEY, "someone-else", Algorithm::RS256, json!({})))),
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                token(
                    SANDBOX_KEY,
                    SANDBOX_ACS_KEY_ID,
                    Algorithm::RS256,
                    json!({ "iat": t - 900, "nbf": t - 900, "exp": t - 600 })
                )
            )),
        ),
        (
            "not yet valid",
            Some(format!(
                "Bearer {}",
                token(
                    SANDBOX_KEY,
                    SANDBOX_ACS_KEY_ID,
                    Algorithm::RS256,
                    json!({ "nbf": t + 600, "exp": t + 900 })
                )
            )),
        ),
        (
            "lives a day",
            Some(format!(
                "Bearer {}",
                token(SANDBOX_KEY, SANDBOX_ACS_KEY_ID, Algorithm::RS256, json!({ "exp": t + 86_400 }))
            )),
        ),
        (
            "wrong audience",
            Some(format!(
                "Bearer {}",
                token(
                    SANDBOX_KEY,
                    SANDBOX_ACS_KEY_ID,
                    Algorithm::RS256,
                    json!({ "aud": "another-resource" })
                )
            )),
        ),
        (
            "wrong issuer",
            Some(format!(
                "Bearer {}",
                token(
                    SANDBOX_KEY,
                    SANDBOX_ACS_KEY_ID,
                    Algorithm::RS256,
                    json!({ "iss": "https://evil.example" })
                )
            )),
        ),
    ];
    for (what, auth) in refused {
        assert_eq!(post(auth).await, 401, "{what}");
    }
    assert_eq!(h.row_counts().await, (0, 0), "a refused callback changed the database");
    assert_eq!(app.received.load(Ordering::SeqCst), 0, "a refused callback was relayed");
    // The same body with ACS's token applies, and is relayed.
    let valid = token(SANDBOX_KEY, SANDBOX_ACS_KEY_ID, Algorithm::RS256, json!({}));
    assert_eq!(post(Some(format!("Bearer {valid}"))).await, 200);
    assert_eq!(h.sessions().await.len(), 1);
    assert_eq!(app.received.load(Ordering::SeqCst), 1);
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn a_route_acs_does_not_serve_fails_the_session_instead_of_calling_it_ended() {
    // A retired api-version answers ASP.NET's "No HTTP resource was found",
    // a 404 without a subcode: a configuration error, not a call that ended.
    let h = Harness::with_config(|db, url| {
        acs_config_text(db, url, SANDBOX_ACS_ACCESS_KEY)
            .replace("api_version: 2024-09-15", "api_version: 2023-01-15")
    })
    .await;
    let daemon = h.start_daemon().await;
    let ids = h.start_acs_session("acs-consultation", "c-route", &[], Some("1s")).await;
    let row = h.wait_for_state(&ids[0], "failed", SHORT).await;
    assert_eq!(row.attempts, 1, "{row:#?}");
    let audit = h.audit_of(&ids[0]).await;
    let failed = audit.iter().find(|a| a.event == "failed").unwrap();
    assert!(
        failed.error_code.as_deref().is_some_and(|c| c.starts_with("HTTP404") && c.ends_with("/route")),
        "{failed:#?}"
    );
    assert!(failed.detail.as_deref().is_some_and(|d| d.contains("api_version")), "{failed:#?}");
    // The start-up probe said so before any session was due.
    let logs = daemon.logs();
    assert!(logs.contains("ACS does not serve this endpoint path or api_version"), "{logs}");
}

#[tokio::test]
async fn removal_outcomes_arrive_signed_and_settle_accepted_removals_as_acs_means_them() {
    // callback_url must name the listener, so the port is chosen first.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let h = Harness::with_config(move |db, url| {
        let text = http_config_text(db, url, Listener { acs: true, ..Listener::default() }, "")
            .replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}"));
        let with_callback = text.replace(
            "    api_version: 2024-09-15\n",
            &format!("    api_version: 2024-09-15\n    callback_url: http://127.0.0.1:{port}/webhooks/acs\n"),
        );
        format!(
            "{with_callback}    jwt_audience: {SANDBOX_ACS_RESOURCE_ID}\n    openid_configuration_url: {url}/calling/.well-known/acsopenidconfiguration\n"
        )
    })
    .await;
    // ACS accepts each removal, then reports: done; the participant had
    // already hung up (8558); a genuine failure.
    for (call, outcome) in [("gone-1", Some("gone")), ("broken-1", Some("failed"))] {
        h.sandbox
            .inject(callwarden::sandbox::Fault {
                room: Some(call.into()),
                outcome_event: outcome.map(str::to_string),
                ..Default::default()
            })
            .await;
    }
    let _daemon = h.start_daemon().await;
    let mut ids = Vec::new();
    for call in ["done-1", "gone-1", "broken-1"] {
        ids.push(h.start_acs_session("acs-paid-chat", call, &["8:acs:res_x"], Some("1s")).await.remove(0));
    }
    for (id, state, event) in [
        (&ids[0], "enforced", "confirmed"),
        (&ids[1], "already_ended", "already_ended"),
        (&ids[2], "failed", "failed"),
    ] {
        let row = h.wait_for_state(id, state, SHORT).await;
        assert_eq!(row.attempts, 1, "{row:#?}");
        let audit = h.audit_of(id).await;
        assert!(audit.iter().any(|a| a.event == "accepted"), "{audit:#?}");
        assert_eq!(audit.last().map(|a| a.event.as_str()), Some(event), "{audit:#?}");
    }
}

#[tokio::test]
async fn unknown_key_ids_cannot_make_callwarden_hammer_the_key_endpoint() {
    let (app_url, _app) = start_app().await;
    let h = harness(&app_url).await;
    let daemon = h.start_daemon().await;
    let url = format!("{}/webhooks/acs?token={ACS_WEBHOOK_SECRET}", daemon.http_url().await);
    wait_until("the keys fetched at start", SHORT, || async {
        h.sandbox.stats().await.signing_keys_served == 1
    })
    .await;
    // Forty tokens, each naming a key nobody published.
    for i in 0..40 {
        let forged = token(FORGER_KEY, &format!("kid-{i}"), Algorithm::RS256, json!({}));
        let status = reqwest::Client::new()
            .post(&url)
            .bearer_auth(forged)
            .json(&json!([]))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
    }
    // At most one fetch per 30 s: none within the first 30 s after start.
    assert_eq!(h.sandbox.stats().await.signing_keys_served, 1);
}

#[tokio::test]
async fn rosters_without_sequence_numbers_are_ordered_by_time() {
    let (app_url, _app) = start_app().await;
    let h = harness(&app_url).await;
    let daemon = h.start_daemon().await;
    let (a, b) = ("8:acs:res_a", "8:acs:res_b");
    create_call(&h, &daemon, "people-7", &[a, b], false).await;
    let active = |user: &'static str| {
        let h = &h;
        async move { h.sessions().await.iter().any(|r| r.user_id.as_deref() == Some(user) && r.state == "active") }
    };
    wait_until("a and b", SHORT, || async { active(a).await && active(b).await }).await;
    sandbox_post(&h, "/_sandbox/acs/calls/people-7/participants", json!({ "leave": [a] })).await;
    wait_until("a's session ends", SHORT, || async { !active(a).await }).await;
    assert!(active(b).await);
}
