//! The session API over HTTP (`/v1/sessions`, `listen` + `api_token`), the
//! documents it serves, and /metrics: real requests over loopback to the
//! daemon's listener, outcomes checked in answers, the SQLite file and the
//! sandbox. Every 2xx body is checked against docs/openapi.json's `Session`
//! (or the list shape), every error body against `Error`.

use serde_json::{Value, json};

use crate::helpers::DeadlineMs;
use crate::helpers::{
    ACS_WEBHOOK_SECRET, Client, Daemon, Harness, Listener, Reply, SHORT, SchemaCheck, TRTC_CALLBACK_KEY,
    metric_sum, ms_of, now_ms, openapi_document, parse_metrics, text_of, wait_until,
};

/// How far the daemon's disciplined clock may read from the host's UTC
/// clock at the same instant: it adds whole monotonic milliseconds and slews
/// toward whole UTC milliseconds by at most 10 % of the time between
/// readings, so readings close together can trail the host by a truncated
/// millisecond or two.
const CLOCK_SKEW_MS: i64 = 5;

/// The schemas every answer is checked against.
struct Schemas {
    session: SchemaCheck,
    list: SchemaCheck,
    error: SchemaCheck,
}

impl Schemas {
    fn new() -> Schemas {
        Schemas {
            session: SchemaCheck::session(),
            list: SchemaCheck::session_list(),
            error: SchemaCheck::error(),
        }
    }

    /// Asserts the status, then that the body is a `Session`; returns it.
    #[track_caller]
    fn session(&self, reply: &Reply, status: u16, what: &str) -> Value {
        reply.expect(status, what);
        self.session.check(&reply.json, what);
        reply.json.clone()
    }

    /// Asserts the status, then that the body is an `Error` naming `field`.
    #[track_caller]
    fn error(&self, reply: &Reply, status: u16, field: Option<&str>, what: &str) {
        reply.expect(status, what);
        self.error.check(&reply.json, what);
        assert_eq!(reply.json["error"]["field"].as_str(), field, "{what}: {reply:#?}");
        assert!(!reply.json["error"]["reason"].as_str().unwrap_or_default().is_empty(), "{what}: {reply:#?}");
    }

    /// Asserts 200 and the list shape; returns the sessions.
    #[track_caller]
    fn list(&self, reply: &Reply, what: &str) -> Vec<Value> {
        reply.expect(200, what);
        self.list.check(&reply.json, what);
        reply.json["sessions"].as_array().cloned().unwrap_or_default()
    }
}

fn text<'a>(session: &'a Value, field: &str) -> &'a str {
    session[field].as_str().unwrap_or_else(|| panic!("no string {field} in {session:#}"))
}

fn ms(session: &Value, field: &str) -> i64 {
    ms_of(text(session, field))
}

fn ids(sessions: &[Value]) -> Vec<String> {
    sessions.iter().map(|s| text(s, "id").to_string()).collect()
}

/// A daemon with the session API on, and a client with its token.
async fn api_daemon(h: &Harness) -> (Daemon, Client) {
    let daemon = h.start_daemon().await;
    let client = Client::new(&daemon.http_url().await);
    (daemon, client)
}

#[tokio::test]
async fn the_session_api_registers_reads_lists_extends_and_ends_sessions() {
    let h = Harness::http(Listener { api: true, ..Listener::default() }, "").await;
    let clock = h.sandbox.clock().await;
    let (_daemon, api) = api_daemon(&h).await;
    let schemas = Schemas::new();

    // The served document is docs/openapi.json, and the probes answer.
    let served = api.with_token(None).get("/v1/openapi.json").await;
    served.expect(200, "GET /v1/openapi.json");
    assert!(served.header("content-type").unwrap_or_default().starts_with("application/json"), "{served:#?}");
    assert_eq!(served.json, openapi_document(), "the served OpenAPI document differs from docs/openapi.json");
    let health = api.with_token(None).get("/healthz").await;
    assert_eq!((health.status, health.text.trim()), (200, "ok"), "{health:#?}");
    api.with_token(None).get("/readyz").await.expect(200, "GET /readyz");

    // A numeric TRTC room, its limit below the policy's.
    let before = now_ms();
    let reply =
        api.post("/v1/sessions", &json!({"policy": "consultation", "room": 1234, "limit": "10m"})).await;
    let numeric = schemas.session(&reply, 201, "create a numeric room session");
    let numeric_id = text(&numeric, "id").to_string();
    assert_eq!(reply.header("location"), Some(format!("/v1/sessions/{numeric_id}").as_str()), "{reply:#?}");
    assert_eq!(numeric["room_id"], "1234");
    assert_eq!(numeric["room_kind"], "numeric");
    assert_eq!(
        (&numeric["provider"], &numeric["user_id"], &numeric["state"]),
        (&json!("trtc"), &Value::Null, &json!("active"))
    );
    // The daemon's clock follows the host's through a discipline that may
    // read a millisecond or two behind it (see src/clock.rs): allow that.
    let after = now_ms();
    let started_at = ms(&numeric, "started_at");
    assert!(
        (before - CLOCK_SKEW_MS..=after + CLOCK_SKEW_MS).contains(&started_at),
        "started at {started_at}, outside {before}..={after} (± {CLOCK_SKEW_MS} ms): {numeric:#}"
    );
    assert_eq!(ms(&numeric, "deadline") - ms(&numeric, "started_at"), 600_000, "{numeric:#}");

    // A string room and a user, started a minute ago: due in a minute.
    let started = now_ms() - 60_000;
    let reply = api
        .post(
            "/v1/sessions",
            &json!({"policy": "paid-chat", "room": "chat-7", "user": "alice", "limit": "2m",
                    "started_at": text_of(started)}),
        )
        .await;
    let string = schemas.session(&reply, 201, "create a string room session");
    assert_eq!((&string["room_id"], &string["room_kind"]), (&json!("chat-7"), &json!("string")));
    assert_eq!(string["user_id"], "alice");
    assert_eq!((ms(&string, "started_at"), ms(&string, "deadline")), (started, started + 120_000));

    // An ACS call and a participant, with the policy's own limit.
    let reply = api
        .post(
            "/v1/sessions",
            &json!({"policy": "acs-paid-chat", "call": "call-api-1", "participant": "8:acs:bob"}),
        )
        .await;
    let call = schemas.session(&reply, 201, "create an ACS participant session");
    assert_eq!((&call["room_id"], &call["room_kind"]), (&json!("call-api-1"), &json!("call")));
    assert_eq!((&call["provider"], &call["user_id"]), (&json!("acs"), &json!("8:acs:bob")));
    assert_eq!(ms(&call, "deadline") - ms(&call, "started_at"), 20 * 60_000, "{call:#}");

    // The schema checks can fail: a session with a wrong state, an unknown
    // field or a missing field does not fit, nor does an error.
    let mut wrong = numeric.clone();
    wrong["state"] = json!("sleeping");
    assert!(!schemas.session.fits(&wrong));
    let mut extra = numeric.clone();
    extra["colour"] = json!("red");
    assert!(!schemas.session.fits(&extra));
    let mut missing = numeric.clone();
    missing.as_object_mut().unwrap().remove("deadline");
    assert!(!schemas.session.fits(&missing));
    assert!(!schemas.error.fits(&numeric) && !schemas.list.fits(&numeric));

    // Each reads back as it was created, and as stored.
    for created in [&numeric, &string, &call] {
        let id = text(created, "id");
        let read = schemas.session(&api.get(&format!("/v1/sessions/{id}")).await, 200, "GET a session");
        assert_eq!(&read, created);
        let row = h.session(id).await;
        assert_eq!(
            (row.policy.as_str(), row.room_id.as_str(), row.state.as_str(), row.deadline.as_deref()),
            (text(created, "policy"), text(created, "room_id"), "active", created["deadline"].as_str())
        );
    }
    let unknown = api.get(&format!("/v1/sessions/{}", uuid::Uuid::new_v4())).await;
    schemas.error(&unknown, 404, None, "GET an unknown session");
    schemas.error(&api.get("/v1/sessions/not-a-uuid").await, 404, None, "GET a malformed id");

    // Listed by state, earliest deadline first.
    let active = schemas.list(&api.get("/v1/sessions?state=active").await, "list active sessions");
    assert_eq!(ids(&active), [text(&string, "id"), &numeric_id, text(&call, "id")], "{active:#?}");
    let first_page = api.get("/v1/sessions?state=active&limit=1").await;
    let first = schemas.list(&first_page, "list with a limit");
    assert_eq!(ids(&first), [text(&string, "id")]);
    // A page at a time: `next` leads to the following page, and the last
    // page has none.
    let mut paged = first.clone();
    let mut next = first_page.json["next"].as_str().map(str::to_string);
    while let Some(token) = next {
        let page = api.get(&format!("/v1/sessions?state=active&limit=1&after={token}")).await;
        paged.extend(schemas.list(&page, "the next page"));
        next = page.json["next"].as_str().map(str::to_string);
        assert!(paged.len() <= 3, "{paged:#?}");
    }
    assert_eq!(ids(&paged), ids(&active), "paging lost or repeated a session");
    let none = schemas.list(&api.get("/v1/sessions?state=cancelled").await, "list cancelled sessions");
    assert!(none.is_empty(), "{none:#?}");
    assert_eq!(schemas.list(&api.get("/v1/sessions").await, "list all").len(), 3);

    // Extended before it is due: the deadline moves, and the daemon keeps
    // to the new one.
    let reply =
        api.post("/v1/sessions", &json!({"policy": "consultation", "room": 7001, "limit": "3s"})).await;
    let extended = schemas.session(&reply, 201, "create a session to extend");
    let extended_id = text(&extended, "id").to_string();
    let old_deadline = ms(&extended, "deadline");
    let reply = api.post(&format!("/v1/sessions/{extended_id}/extend"), &json!({"by": "2s"})).await;
    let after = schemas.session(&reply, 200, "extend");
    assert!(now_ms() < old_deadline, "the extension came too late to test anything");
    assert_eq!(ms(&after, "deadline"), old_deadline + 2_000, "{after:#}");
    assert_eq!((after["extended_ms"].as_i64(), &after["state"]), (Some(2_000), &json!("active")));
    assert_eq!(h.session(&extended_id).await.deadline_ms(), old_deadline + 2_000);

    // Ended before it is due (a second before the extended one): never enforced.
    let reply =
        api.post("/v1/sessions", &json!({"policy": "consultation", "room": 7002, "limit": "4s"})).await;
    let ended_id = text(&schemas.session(&reply, 201, "create a session to end"), "id").to_string();
    let ended =
        schemas.session(&api.post(&format!("/v1/sessions/{ended_id}/end"), &json!({})).await, 200, "end");
    assert_eq!(ended["state"], "cancelled");
    let again = api.post(&format!("/v1/sessions/{ended_id}/end"), &json!({})).await;
    schemas.error(&again, 409, None, "end a cancelled session");
    let late = api.post(&format!("/v1/sessions/{ended_id}/extend"), &json!({"by": "1m"})).await;
    schemas.error(&late, 409, None, "extend a cancelled session");
    let nobody = api.post(&format!("/v1/sessions/{}/end", uuid::Uuid::new_v4()), &json!({})).await;
    schemas.error(&nobody, 404, None, "end an unknown session");

    let row = h.wait_for_state(&extended_id, "enforced", SHORT).await;
    assert_eq!(row.attempts, 1, "{row:#?}");
    let calls = h.sandbox.requests_for("7001").await;
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert!(
        clock.latest_wall_ms(&calls[0]) >= old_deadline + 2_000,
        "the sandbox saw the call before the extended deadline {}: {calls:#?}",
        text_of(old_deadline + 2_000)
    );
    h.assert_never_early(Some(clock)).await;
    let ended_row = h.session(&ended_id).await;
    assert_eq!((ended_row.state.as_str(), ended_row.attempts), ("cancelled", 0), "{ended_row:#?}");
    assert!(h.sandbox.requests_for("7002").await.is_empty(), "an ended session was enforced");
    let events: Vec<String> = h.audit_of(&ended_id).await.into_iter().map(|a| a.event).collect();
    assert_eq!(events, ["registered", "cancelled"]);

    // An enforced session can be neither ended nor extended, and reads back enforced.
    let reply = api.post(&format!("/v1/sessions/{extended_id}/end"), &json!({})).await;
    schemas.error(&reply, 409, None, "end an enforced session");
    assert!(reply.json["error"]["reason"].as_str().unwrap_or_default().contains("enforced"), "{reply:#?}");
    let reply = api.post(&format!("/v1/sessions/{extended_id}/extend"), &json!({"by": "1m"})).await;
    schemas.error(&reply, 409, None, "extend an enforced session");
    let read = schemas.session(&api.get(&format!("/v1/sessions/{extended_id}")).await, 200, "GET enforced");
    assert_eq!((&read["state"], read["attempts"].as_i64()), (&json!("enforced"), Some(1)));
    let enforced = schemas.list(&api.get("/v1/sessions?state=enforced").await, "list enforced");
    assert_eq!(ids(&enforced), [extended_id.as_str()]);
    assert_eq!(h.session(&extended_id).await.state, "enforced", "a refused end changed the session");
}

/// One request to every API route.
async fn every_route(api: &Client, id: &str) -> Vec<(String, Reply)> {
    let create = json!({"policy": "consultation", "room": 4321, "limit": "5m"});
    vec![
        ("POST /v1/sessions".into(), api.post("/v1/sessions", &create).await),
        ("GET /v1/sessions".into(), api.get("/v1/sessions?state=active").await),
        ("GET /v1/sessions/{id}".into(), api.get(&format!("/v1/sessions/{id}")).await),
        ("POST extend".into(), api.post(&format!("/v1/sessions/{id}/extend"), &json!({"by": "5m"})).await),
        ("POST end".into(), api.post(&format!("/v1/sessions/{id}/end"), &json!({})).await),
    ]
}

#[tokio::test]
async fn without_the_right_token_every_route_is_refused_and_bad_requests_name_the_field() {
    let h = Harness::http(Listener { api: true, ..Listener::default() }, "").await;
    let (_daemon, api) = api_daemon(&h).await;
    let schemas = Schemas::new();
    let reply =
        api.post("/v1/sessions", &json!({"policy": "consultation", "room": 4321, "limit": "5m"})).await;
    let session = schemas.session(&reply, 201, "create");
    let id = text(&session, "id").to_string();
    let counts = h.row_counts().await;

    let wrong = format!("{}x", crate::helpers::API_TOKEN);
    let refused_clients = [
        ("no token", api.with_token(None)),
        ("a wrong token", api.with_token(Some("not-the-token-at-all-0123456789"))),
        ("the token with a character more", api.with_token(Some(&wrong))),
        ("a prefix of the token", api.with_token(Some(&crate::helpers::API_TOKEN[..16]))),
    ];
    for (who, client) in &refused_clients {
        for (route, reply) in every_route(client, &id).await {
            let what = format!("{route} with {who}");
            schemas.error(&reply, 401, None, &what);
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{what}: {reply:#?}");
        }
    }
    // The token in another scheme is no bearer token.
    let basic = Client::send(
        api.with_token(None)
            .request(reqwest::Method::GET, "/v1/sessions")
            .basic_auth("callwarden", Some(crate::helpers::API_TOKEN)),
    )
    .await;
    schemas.error(&basic, 401, None, "Basic auth");
    assert_eq!(h.row_counts().await, counts, "a refused request changed the database");
    let row = h.session(&id).await;
    assert_eq!((row.state.as_str(), row.deadline.as_deref()), ("active", session["deadline"].as_str()));

    // With the token the same routes work (the refusals above can fail).
    let statuses: Vec<u16> = every_route(&api, &id).await.iter().map(|(_, r)| r.status).collect();
    assert_eq!(statuses, [201, 200, 200, 200, 200]);
    let counts = h.row_counts().await;

    // Malformed bodies are 400; well-formed but unacceptable ones 422; each names its field.
    let bad: Vec<(&str, Value, u16, Option<&str>)> = vec![
        ("a type error", json!({"policy": 5, "room": 1}), 400, Some("policy")),
        (
            "a limit that is not a string",
            json!({"policy": "consultation", "room": 1, "limit": 5}),
            400,
            Some("limit"),
        ),
        (
            "an unknown field",
            json!({"policy": "consultation", "room": 1, "colour": "red"}),
            400,
            Some("colour"),
        ),
        ("no policy", json!({"room": 1}), 400, None),
        ("an unknown policy", json!({"policy": "nope", "room": 1}), 422, Some("policy")),
        ("room 0", json!({"policy": "consultation", "room": 0}), 422, Some("room")),
        ("a fractional room", json!({"policy": "consultation", "room": 12.5}), 422, Some("room")),
        (
            "a room past TRTC's range",
            json!({"policy": "consultation", "room": 4_294_967_295_u64}),
            422,
            Some("room"),
        ),
        ("a string room with a slash", json!({"policy": "consultation", "room": "a/b"}), 422, Some("room")),
        ("a boolean room", json!({"policy": "consultation", "room": true}), 422, Some("room")),
        ("neither room nor call", json!({"policy": "consultation"}), 422, Some("room")),
        ("room and call", json!({"policy": "consultation", "room": 1, "call": "c1"}), 422, Some("room")),
        ("a room for an ACS policy", json!({"policy": "acs-consultation", "room": 1}), 422, Some("room")),
        ("a call for a TRTC policy", json!({"policy": "consultation", "call": "c1"}), 422, Some("call")),
        ("a call id with a slash", json!({"policy": "acs-consultation", "call": "a/b"}), 422, Some("call")),
        (
            "a limit above the policy",
            json!({"policy": "consultation", "room": 1, "limit": "31m"}),
            422,
            Some("limit"),
        ),
        (
            "an unreadable limit",
            json!({"policy": "consultation", "room": 1, "limit": "soon"}),
            422,
            Some("limit"),
        ),
        ("a remove policy without a user", json!({"policy": "paid-chat", "room": 1}), 422, Some("user")),
        (
            "an ACS removal without a participant",
            json!({"policy": "acs-paid-chat", "call": "c1"}),
            422,
            Some("participant"),
        ),
        (
            "user and participant",
            json!({"policy": "paid-chat", "room": 1, "user": "a", "participant": "b"}),
            422,
            Some("user"),
        ),
        (
            "an unreadable started_at",
            json!({"policy": "consultation", "room": 1, "started_at": "yesterday"}),
            422,
            Some("started_at"),
        ),
        (
            "an empty idempotency key",
            json!({"policy": "consultation", "room": 1, "idempotency_key": ""}),
            422,
            Some("idempotency_key"),
        ),
    ];
    for (what, body, status, field) in &bad {
        let reply = api.post("/v1/sessions", body).await;
        schemas.error(&reply, *status, *field, what);
    }
    let not_json = api.post_raw("/v1/sessions", "not JSON at all").await;
    schemas.error(&not_json, 400, None, "a body that is not JSON");
    let extend = |body: Value| {
        let api = api.clone();
        let path = format!("/v1/sessions/{id}/extend");
        async move { api.post(&path, &body).await }
    };
    schemas.error(&extend(json!({"by": "later"})).await, 422, Some("by"), "extend by an unreadable duration");
    schemas.error(&extend(json!({"by": 5})).await, 400, Some("by"), "extend by a number");
    schemas.error(&extend(json!({})).await, 400, None, "extend without by");
    schemas.error(&api.get("/v1/sessions?state=bogus").await, 422, Some("state"), "list an unknown state");
    schemas.error(&api.get("/v1/sessions?limit=0").await, 422, Some("limit"), "list with limit 0");
    schemas.error(
        &api.get("/v1/sessions?limit=10001").await,
        422,
        Some("limit"),
        "list with too high a limit",
    );
    schemas.error(&api.get("/v1/sessions?limit=many").await, 400, None, "list with an unreadable limit");
    schemas.error(
        &api.get("/v1/sessions?after=bogus").await,
        422,
        Some("after"),
        "list after a made-up token",
    );
    assert_eq!(h.row_counts().await, counts, "a refused request changed the database");

    // The same bodies, fixed, are accepted: the checks above can fail.
    let fixed = [
        json!({"policy": "consultation", "room": 4_294_967_294_u64}),
        json!({"policy": "consultation", "room": "a-b"}),
        json!({"policy": "acs-consultation", "call": "c1"}),
        json!({"policy": "paid-chat", "room": 1, "user": "a", "limit": "30s"}),
        json!({"policy": "acs-paid-chat", "call": "c1", "participant": "8:acs:b"}),
        json!({"policy": "consultation", "room": 1, "started_at": text_of(now_ms()), "idempotency_key": "k"}),
    ];
    for body in &fixed {
        schemas.session(&api.post("/v1/sessions", body).await, 201, &format!("create {body}"));
    }
}

#[tokio::test]
async fn a_create_retried_with_its_idempotency_key_returns_the_same_session() {
    let h = Harness::http(Listener { api: true, ..Listener::default() }, "").await;
    let (_daemon, api) = api_daemon(&h).await;
    let schemas = Schemas::new();
    let body = json!({"policy": "paid-chat", "room": 4242, "user": "carol", "limit": "5m",
                      "idempotency_key": "retry-1"});

    let first = api.post("/v1/sessions", &body).await;
    let created = schemas.session(&first, 201, "the first POST");
    assert_eq!(created["idempotency_key"], "retry-1");
    let second = api.post("/v1/sessions", &body).await;
    let repeated = schemas.session(&second, 200, "the same POST again");
    assert_eq!(repeated, created, "the retry answered another session");
    let rows = h.sessions().await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let registered = h.audit().await.into_iter().filter(|a| a.event == "registered").count();
    assert_eq!(registered, 1);

    // The key names that request: other parameters under it are a conflict.
    for (what, other) in [
        ("another room", json!({"room": 4243})),
        ("a string room of the same digits", json!({"room": "4242"})),
        ("another user", json!({"user": "dave"})),
        ("another policy", json!({"policy": "consultation", "user": null})),
    ] {
        let mut changed = body.clone();
        for (k, v) in other.as_object().unwrap() {
            if v.is_null() {
                changed.as_object_mut().unwrap().remove(k);
            } else {
                changed[k] = v.clone();
            }
        }
        let reply = api.post("/v1/sessions", &changed).await;
        schemas.error(&reply, 409, Some("idempotency_key"), &format!("the key with {what}"));
        assert!(reply.json["error"]["reason"].as_str().unwrap().contains(text(&created, "id")), "{reply:#?}");
    }
    assert_eq!(h.sessions().await.len(), 1, "a conflicting POST inserted a session");

    // Another key is another session.
    let mut other_key = body.clone();
    other_key["idempotency_key"] = json!("retry-2");
    let other = schemas.session(&api.post("/v1/sessions", &other_key).await, 201, "another key");
    assert_ne!(other["id"], created["id"]);

    // Retries racing each other still make one session.
    let mut racing = body.clone();
    racing["idempotency_key"] = json!("race-1");
    let replies = futures_join_all((0..6).map(|_| {
        let (api, racing) = (api.clone(), racing.clone());
        async move { api.post("/v1/sessions", &racing).await }
    }))
    .await;
    let mut statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 201], "{replies:#?}");
    let race_ids: std::collections::BTreeSet<&str> = replies.iter().map(|r| text(&r.json, "id")).collect();
    assert_eq!(race_ids.len(), 1, "{replies:#?}");
    assert_eq!(h.sessions().await.len(), 3);
}

/// The documented contract: the same key with other parameters is a 409.
/// A retry that asks for another limit gets the earlier session instead.
#[tokio::test]
async fn a_reused_idempotency_key_with_another_limit_is_a_conflict() {
    let h = Harness::http(Listener { api: true, ..Listener::default() }, "").await;
    let (_daemon, api) = api_daemon(&h).await;
    let schemas = Schemas::new();
    let body = json!({"policy": "consultation", "room": 4444, "limit": "5m", "idempotency_key": "limit-1"});
    schemas.session(&api.post("/v1/sessions", &body).await, 201, "the first POST");
    let mut longer = body.clone();
    longer["limit"] = json!("25m");
    let reply = api.post("/v1/sessions", &longer).await;
    schemas.error(&reply, 409, Some("idempotency_key"), "the key with another limit");
}

/// Runs futures concurrently, in order of their results (no extra crate).
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("the task finishes"));
    }
    out
}

#[tokio::test]
async fn metrics_count_enforcements_sessions_webhooks_and_api_requests() {
    let extra =
        "  metered: { provider: trtc, match: { room: '77*' }, max_duration: 1h, action: dismiss_room }\n";
    let h = Harness::http(Listener::ALL, extra).await;
    let (daemon, api) = api_daemon(&h).await;
    let schemas = Schemas::new();
    let scrape = |api: Client| async move {
        let reply = api.with_token(None).get("/metrics").await;
        reply.expect(200, "GET /metrics");
        assert!(reply.header("content-type").unwrap_or_default().starts_with("text/plain"), "{reply:#?}");
        parse_metrics(&reply.text)
    };
    let before = scrape(api.clone()).await;
    let enforced_success = |s: &[crate::helpers::Sample]| {
        metric_sum(
            s,
            "callwarden_enforcements_total",
            &[("provider", "trtc"), ("action", "DismissRoom"), ("outcome", "success")],
        )
    };
    assert_eq!(enforced_success(&before), 0.0);

    // Three sessions enforced at once, one left active, one cancelled.
    let mut due = Vec::new();
    for room in [6101, 6102, 6103] {
        let reply =
            api.post("/v1/sessions", &json!({"policy": "consultation", "room": room, "limit": "1s"})).await;
        due.push(text(&schemas.session(&reply, 201, "create"), "id").to_string());
    }
    schemas.session(
        &api.post("/v1/sessions", &json!({"policy": "consultation", "room": 6104})).await,
        201,
        "create",
    );
    let reply = api.post("/v1/sessions", &json!({"policy": "consultation", "room": 6105})).await;
    let cancelled = text(&schemas.session(&reply, 201, "create"), "id").to_string();
    schemas.session(&api.post(&format!("/v1/sessions/{cancelled}/end"), &json!({})).await, 200, "end");
    // Refused API requests: 401 and 422.
    api.with_token(None).get("/v1/sessions").await.expect(401, "no token");
    api.post("/v1/sessions", &json!({"policy": "nope", "room": 1})).await.expect(422, "unknown policy");
    api.post("/v1/sessions", &json!({"policy": "nope", "room": 1})).await.expect(422, "unknown policy");

    // Webhooks: TRTC applied, ignored and unauthorized; ACS accepted and unauthorized.
    let trtc = |body: String, sign: String| {
        let api = api.clone();
        async move {
            let request = api
                .with_token(None)
                .request(reqwest::Method::POST, "/webhooks/trtc")
                .header("Sign", sign)
                .header("SdkAppId", callwarden::sandbox::SANDBOX_SDK_APP_ID.to_string())
                .header("Content-Type", "application/json")
                .body(body);
            Client::send(request).await
        }
    };
    let created = json!({"EventGroupId": 1, "EventType": 101, "CallbackTs": now_ms(),
                         "EventInfo": {"RoomId": 7701, "EventMsTs": now_ms()}})
    .to_string();
    let sign = callwarden::providers::trtc::callback_signature(TRTC_CALLBACK_KEY, created.as_bytes());
    trtc(created.clone(), sign.clone()).await.expect(200, "a signed TRTC callback");
    trtc(created.clone(), sign).await.expect(200, "the same TRTC callback again");
    let forged = callwarden::providers::trtc::callback_signature("not-the-key", created.as_bytes());
    trtc(created, forged).await.expect(401, "a forged TRTC callback");
    let acs = api.with_token(None);
    let connected = json!([{"type": "Microsoft.Communication.CallConnected",
                            "data": {"callConnectionId": "metered-call"}}]);
    acs.post(&format!("/webhooks/acs?token={ACS_WEBHOOK_SECRET}"), &connected).await.expect(200, "ACS");
    acs.post("/webhooks/acs?token=wrong", &connected).await.expect(401, "ACS with a wrong token");
    acs.post("/webhooks/acs", &connected).await.expect(401, "ACS without a token");

    for row in h.wait_until_settled(&due, SHORT).await {
        assert_eq!(row.state, "enforced", "{row:#?}");
    }
    let dismissed = h.sandbox.stats().await.rooms_dismissed;
    assert_eq!(dismissed, 3);
    // The counter is recorded just after the outcome is stored: wait for it.
    wait_until("the enforcement counter to reach 3", SHORT, || {
        let api = api.clone();
        async move { enforced_success(&scrape(api).await) >= 3.0 }
    })
    .await;
    let after = scrape(api.clone()).await;
    let m = |name: &str, labels: &[(&str, &str)]| metric_sum(&after, name, labels);
    assert_eq!(enforced_success(&after), dismissed as f64, "one success per dismissed room");
    let trtc_labels = [("provider", "trtc"), ("action", "DismissRoom")];
    assert_eq!(m("callwarden_provider_call_seconds_count", &trtc_labels), 3.0);
    assert_eq!(m("callwarden_enforcement_lateness_seconds_count", &trtc_labels), 3.0);
    assert_eq!(m("callwarden_rate_limiter_wait_seconds_count", &trtc_labels), 3.0);
    assert!(m("callwarden_provider_call_seconds_sum", &trtc_labels) > 0.0);

    // Session gauges are the database's counts at scrape time.
    let counts = h.state_counts().await;
    assert_eq!(counts.get("enforced"), Some(&3), "{counts:?}");
    for state in ["active", "enforcing", "accepted", "enforced", "already_ended", "failed", "cancelled"] {
        let want = counts.get(state).copied().unwrap_or(0) as f64;
        assert_eq!(m("callwarden_sessions", &[("state", state)]), want, "sessions in state {state}");
    }
    assert_eq!(m("callwarden_sessions", &[("state", "cancelled")]), 1.0);
    // Room 6104 and the webhook-opened room 7701 (no ACS policy takes webhooks here).
    assert_eq!(m("callwarden_sessions", &[("state", "active")]), 2.0);

    let hook = |source: &str, result: &str| {
        m("callwarden_webhook_requests_total", &[("source", source), ("result", result)])
    };
    assert_eq!(hook("trtc", "applied"), 1.0);
    assert_eq!(hook("trtc", "ignored"), 1.0, "the duplicate");
    assert_eq!(hook("trtc", "unauthorized"), 1.0);
    assert_eq!(hook("acs", "accepted"), 1.0);
    assert_eq!(hook("acs", "unauthorized"), 2.0);

    // 6 creates + 1 end + the GETs /metrics does not count; 1 × 401 and 2 × 422.
    let api_count = |status: &str| m("callwarden_api_requests_total", &[("status", status)]);
    assert_eq!(api_count("2xx"), 6.0);
    assert_eq!(api_count("4xx"), 3.0);
    assert_eq!(api_count("5xx"), 0.0);
    drop(daemon);
}

#[tokio::test]
async fn with_no_api_token_the_session_api_is_off() {
    let h = Harness::http(Listener { trtc: true, ..Listener::default() }, "").await;
    let daemon = h.start_daemon().await;
    let api = Client::new(&daemon.http_url().await);
    let error = SchemaCheck::error();
    for reply in every_route(&api, &uuid::Uuid::new_v4().to_string()).await.into_iter().map(|(_, r)| r) {
        reply.expect(404, "the API without api_token");
        error.check(&reply.json, "the API without api_token");
    }
    api.get("/healthz").await.expect(200, "healthz");
    // The ACS webhook without its secret is off too.
    api.post("/webhooks/acs?token=x", &json!([])).await.expect(404, "the ACS webhook without a secret");
    assert!(h.sessions().await.is_empty());
}
