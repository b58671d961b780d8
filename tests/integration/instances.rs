//! Several daemons on one PostgreSQL database: the real binary, three
//! processes with the same configuration, against a throwaway cluster and
//! the sandbox. One leads the TRTC bucket at a time; the tests kill it
//! (SIGKILL), stop it (SIGTERM) or pause it (SIGSTOP) during a burst and
//! check that another takes over within the bound, that every session is
//! enforced, that no room is dismissed twice with success, that the quota
//! holds across the handover, and that a paused leader, resumed, sends
//! nothing.
//!
//! Without PostgreSQL these tests say why and pass without running, unless
//! `CALLWARDEN_REQUIRE_POSTGRES=1` (CI).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use callwarden::config::{Database, PostgresUrl};
use callwarden::sandbox::RequestRecord;
use callwarden::store::{AuditFilter, Store};

use crate::helpers::{
    Client, ConfigYaml, Daemon, Harness, LONG, Listener, SHORT, answers_by_target, by_arrival, now_ms,
    pg_cluster, wait_for,
};

/// Rooms in a burst: deadlines 15 ms apart, faster than the 19/s the
/// leader may send, so a backlog lasts the whole burst (about 10 s).
const ROOMS: u32 = 200;
const FIRST_ROOM: u32 = 30_000;

/// A harness whose config names `url` (and a listener on a port of each
/// daemon's own, for `/readyz`), and a store on it.
async fn harness_on(url: &str) -> (Harness, Store) {
    let config_url = url.to_string();
    let h = Harness::with_config(move |_, sandbox| {
        ConfigYaml::new(Path::new(&config_url), sandbox)
            .trtc_secret_key(callwarden::sandbox::SANDBOX_SECRET_KEY)
            .listen(Listener::default())
            .text()
    })
    .await;
    let store = Store::connect(&Database::Postgres(PostgresUrl::parse(url, None).unwrap())).await.unwrap();
    (h, store)
}

/// Three daemons on the harness's config, all running.
async fn three(h: &Harness) -> Vec<Daemon> {
    let mut daemons = Vec::new();
    for _ in 0..3 {
        daemons.push(h.start_daemon().await);
    }
    daemons
}

/// Three daemons on a fresh database of `cluster`, the one leading TRTC,
/// and a burst of `rooms` inserted to start a second from now.
async fn three_and_a_burst(
    cluster: &pg_cluster::Cluster,
    rooms: u32,
) -> (Harness, Store, Vec<Daemon>, usize) {
    let url = cluster.fresh_database().await;
    let (h, store) = harness_on(&url).await;
    let daemons = three(&h).await;
    let first = leader_of(&daemons, "trtc").await;
    insert_burst(&url, now_ms() + 1_000, rooms).await;
    (h, store, daemons, first)
}

/// The latest term each daemon says it leads `bucket` under.
fn leading_term(daemon: &Daemon, bucket: &str) -> Option<i64> {
    let logs = daemon.logs();
    logs.lines()
        .filter(|l| l.contains("leading the bucket") && l.contains(&format!("bucket={bucket}")))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("term="))?.parse().ok())
        .max()
}

/// Which of `daemons` leads `bucket` now: the one with the highest term.
async fn leader_of(daemons: &[Daemon], bucket: &str) -> usize {
    wait_for(&format!("a leader of {bucket}"), SHORT, || async {
        (0..daemons.len()).filter_map(|i| Some((leading_term(&daemons[i], bucket)?, i))).max().map(|(_, i)| i)
    })
    .await
}

/// Inserts the burst with plain SQL (the leader of maintenance adopts it):
/// room `FIRST_ROOM + i` due `start_ms + 15 i`.
async fn insert_burst(url: &str, start_ms: i64, rooms: u32) -> Vec<String> {
    use sqlx::Connection;
    let mut app = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar(
        "INSERT INTO sessions (policy, room_id, room_kind, deadline) \
         SELECT 'consultation', ($1::bigint + i)::text, 'numeric', to_timestamp(($2::bigint + i * 15) / 1000.0) \
         FROM generate_series(0, $3::bigint - 1) AS i RETURNING id",
    )
    .bind(i64::from(FIRST_ROOM))
    .bind(start_ms)
    .bind(i64::from(rooms))
    .fetch_all(&mut app)
    .await
    .unwrap()
}

/// Waits until no session is active or enforcing.
async fn wait_until_settled(store: &Store, rooms: u32) {
    let timeout = LONG + Duration::from_secs(u64::from(rooms) / 19);
    wait_for("every session settled", timeout, || async {
        let counts: HashMap<String, i64> = store.state_counts().await.unwrap().into_iter().collect();
        let open = counts.get("active").unwrap_or(&0) + counts.get("enforcing").unwrap_or(&0);
        (open == 0).then_some(())
    })
    .await;
}

/// Whatever happened to the leaders: every session was enforced (or found
/// its room gone after a call that a kill left unrecorded), every room was
/// dismissed by exactly one successful request, the sandbox never refused
/// one for quota, and the audit chain verifies.
async fn assert_all_enforced_once(h: &Harness, store: &Store, rooms: u32) {
    let sessions = store.list_sessions(None, None, rooms * 2).await.unwrap();
    assert_eq!(sessions.len(), rooms as usize);
    let audit = store.audit(&AuditFilter::default()).await.unwrap();
    for s in &sessions {
        let events: Vec<&str> = audit
            .iter()
            .filter(|a| a.session_id.as_deref() == Some(&s.id))
            .map(|a| a.event.as_str())
            .collect();
        match s.state.as_str() {
            "enforced" => {}
            "already_ended" => assert!(events.contains(&"recovered"), "{} ended already: {events:?}", s.id),
            other => panic!("session {} is {other}: {events:?}", s.id),
        }
        let settled = events.iter().filter(|e| ["enforced", "already_ended", "failed"].contains(e)).count();
        assert_eq!(settled, 1, "{} settled {settled} times: {events:?}", s.id);
    }
    let requests = h.sandbox.api_requests().await;
    for (room, answers) in answers_by_target(&requests) {
        assert_eq!(answers[0], "success", "room {room}: {answers:?}");
        assert!(answers[1..].iter().all(|a| a == "FailedOperation.RoomNotExist"), "room {room}: {answers:?}");
    }
    let stats = h.sandbox.stats().await;
    assert_eq!(stats.rooms_dismissed, u64::from(rooms), "{stats:#?}");
    assert_eq!(stats.rate_limited, 0, "the quota held across the handover: {stats:#?}");
    let verified = h.cli(&["audit", "verify"]).await.expect_ok("audit verify");
    assert!(verified.stdout.contains("audit log intact: "), "{verified:?}");
}

/// The longest silence between two provider requests, in ms, and the time
/// (sandbox ms) it ended.
fn longest_gap(requests: &[RequestRecord]) -> (u64, u64) {
    let requests = by_arrival(requests.to_vec());
    requests.windows(2).map(|w| (w[1].at_ms - w[0].at_ms, w[1].at_ms)).max().unwrap_or((0, 0))
}

/// A daemon's log lines that say it would not send.
fn unsent_lines(daemon: &Daemon) -> usize {
    daemon.logs().lines().filter(|l| l.contains("no longer trusts its lease")).count()
}

#[tokio::test]
async fn the_leader_killed_mid_burst_is_replaced_within_five_seconds_and_nothing_is_lost_or_doubled() {
    let Some(cluster) = pg_cluster::shared() else { return };
    let (h, store, mut daemons, first) = three_and_a_burst(cluster, ROOMS).await;
    // Into the burst: the leader has claimed work waiting at its pacer.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let sent_before = h.sandbox.api_requests().await.len();
    assert!(sent_before > 20 && sent_before < ROOMS as usize - 40, "{sent_before} sent at the kill");
    let first_term = leading_term(&daemons[first], "trtc").unwrap();
    daemons[first].crash();

    let second = leader_of_other_than(&daemons, first, first_term).await;
    assert_ne!(second, first);
    wait_until_settled(&store, ROOMS).await;
    assert_all_enforced_once(&h, &store, ROOMS).await;
    let (gap, _) = longest_gap(&h.sandbox.api_requests().await);
    eprintln!("takeover after kill -9: {gap} ms without a provider call");
    assert!(gap < 5_000, "the next call left {gap} ms after the last one before the kill");
    assert!(
        gap >= 2_000,
        "a takeover faster than the lease's trust window ({gap} ms)? the lease is not held"
    );
}

#[tokio::test]
async fn a_leader_stopped_cleanly_hands_over_within_a_second_and_nothing_is_sent_twice() {
    let Some(cluster) = pg_cluster::shared() else { return };
    let (h, store, mut daemons, first) = three_and_a_burst(cluster, ROOMS).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    daemons[first].terminate();
    assert!(daemons[first].exit_status(SHORT).await.success());
    let logs = daemons[first].logs();
    assert!(logs.contains("gave up the leases"), "{logs}");

    wait_until_settled(&store, ROOMS).await;
    assert_all_enforced_once(&h, &store, ROOMS).await;
    let requests = h.sandbox.api_requests().await;
    for (room, answers) in answers_by_target(&requests) {
        assert_eq!(answers, ["success"], "room {room}: a clean handover repeats nothing");
    }
    let (gap, _) = longest_gap(&requests);
    eprintln!("handover after a clean stop: {gap} ms without a provider call");
    assert!(gap < 1_000, "the next call left {gap} ms after the last one before the stop");
}

#[tokio::test]
async fn a_paused_leader_resumed_after_losing_its_lease_sends_nothing() {
    let Some(cluster) = pg_cluster::shared() else { return };
    let (h, store, daemons, first) = three_and_a_burst(cluster, ROOMS).await;
    let first_term = leading_term(&daemons[first], "trtc").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    daemons[first].signal("STOP");
    // Past the lease (3 s) and a follower's next look.
    let second = leader_of_other_than(&daemons, first, first_term).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_resume = h.sandbox.api_requests().await.len();
    daemons[first].signal("CONT");
    // The resumed leader's claimed calls are due and at its pacer: without
    // the lease check they would leave at once.
    wait_for("the resumed leader to notice", SHORT, || async {
        (unsent_lines(&daemons[first]) > 0).then_some(())
    })
    .await;

    wait_until_settled(&store, ROOMS).await;
    assert_all_enforced_once(&h, &store, ROOMS).await;
    let requests = by_arrival(h.sandbox.api_requests().await);
    // After the resume, every request is for a room nobody had asked for
    // yet: the new leader's, never a repeat by the old one.
    let mut asked: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (i, r) in requests.iter().enumerate() {
        let room = r.room.clone().unwrap();
        if i >= before_resume {
            assert!(!asked.contains(&room), "room {room} asked for again after the resume: {r:?}");
        }
        asked.insert(room);
    }
    assert_ne!(second, first);
}

/// The leader of `trtc` once `old`'s lease (under `old_term`) has passed to
/// another daemon.
async fn leader_of_other_than(daemons: &[Daemon], old: usize, old_term: i64) -> usize {
    let started = std::time::Instant::now();
    loop {
        let other = (0..daemons.len())
            .filter(|&i| i != old)
            .find(|&i| leading_term(&daemons[i], "trtc").is_some_and(|t| t > old_term));
        if let Some(i) = other {
            return i;
        }
        if started.elapsed() > SHORT {
            // What each instance said about its leases, for the failure.
            let said: Vec<String> = daemons
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let logs = d.logs();
                    let lines: Vec<&str> =
                        logs.lines().filter(|l| l.contains("lease") || l.contains("bucket")).collect();
                    format!("instance {i}:\n{}", lines[lines.len().saturating_sub(15)..].join("\n"))
                })
                .collect();
            panic!(
                "no other instance took trtc over from {old} (term {old_term}) in {SHORT:?}:\n{}",
                said.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn three_daemons_ride_out_a_postgresql_restart_mid_burst() {
    let Some(cluster) = pg_cluster::own() else { return };
    let url = cluster.fresh_database().await;
    let (h, _store) = harness_on(&url).await;
    let daemons = three(&h).await;
    leader_of(&daemons, "trtc").await;
    insert_burst(&url, now_ms() + 1_000, ROOMS).await;
    let mut health = Vec::new();
    for d in &daemons {
        health.push(Client::new(&d.http_url().await));
    }
    let ready = async |want: u16| {
        for (i, client) in health.iter().enumerate() {
            wait_for(&format!("daemon {i}'s /readyz answering {want}"), SHORT, || async {
                (client.get("/readyz").await.status == want).then_some(())
            })
            .await;
        }
    };
    ready(200).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.stop();
    // Every instance says it cannot do its work while the server is gone.
    ready(503).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart();
    ready(200).await;
    let store = Store::connect(&Database::Postgres(PostgresUrl::parse(&url, None).unwrap())).await.unwrap();
    wait_until_settled(&store, ROOMS).await;
    assert_all_enforced_once(&h, &store, ROOMS).await;
    for d in &daemons {
        assert!(d.logs().contains("callwarden running"));
    }
}

#[tokio::test]
async fn a_session_of_a_provider_no_instance_has_is_failed_once_well_overdue() {
    use sqlx::Connection;
    let Some(cluster) = pg_cluster::shared() else { return };
    let url = cluster.fresh_database().await;
    let (h, store) = harness_on(&url).await;
    let daemon = h.start_daemon().await;
    leader_of(std::slice::from_ref(&daemon), "maintenance").await;
    // Rows naming a provider that is in no configuration: one due long
    // enough ago, one due just now (not yet: a bucket between leaders
    // looks the same for a few seconds).
    let mut app = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut insert = async |room: &str, ago_secs: i64| -> String {
        sqlx::query_scalar(
            "INSERT INTO sessions (policy, provider, room_id, room_kind, deadline) \
             VALUES ('consultation', 'trtc-old', $1, 'numeric', now() - make_interval(secs => $2)) RETURNING id",
        )
        .bind(room)
        .bind(ago_secs as f64)
        .fetch_one(&mut app)
        .await
        .unwrap()
    };
    let overdue = insert("9001", 45).await;
    let recent = insert("9002", 1).await;
    let failed = wait_for("the overdue session failed", SHORT, || async {
        let s = store.session(overdue.parse().unwrap()).await.unwrap();
        (s.state == "failed").then_some(s)
    })
    .await;
    assert!(failed.detail.unwrap_or_default().contains("\"trtc-old\""));
    let recent = store.session(recent.parse().unwrap()).await.unwrap();
    assert_eq!(recent.state, "active", "not yet 30 s overdue");
    assert!(h.sandbox.api_requests().await.is_empty(), "nothing was sent");
    assert!(daemon.logs().contains("no running instance has in its configuration"));
}

#[tokio::test]
async fn a_burst_survives_the_leader_killed_again_and_again() {
    let Some(cluster) = pg_cluster::shared() else { return };
    let seed = crate::helpers::test_seed("a_burst_survives_the_leader_killed_again_and_again");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let rooms = 400;
    let (h, store, mut daemons, _) = three_and_a_burst(cluster, rooms).await;
    for kill in 1..=4 {
        let leader = leader_of(&daemons, "trtc").await;
        let term = leading_term(&daemons[leader], "trtc").unwrap();
        let alive = Duration::from_millis(rand::Rng::gen_range(&mut rng, 500..2_500));
        tokio::time::sleep(alive).await;
        let counts: HashMap<String, i64> = store.state_counts().await.unwrap().into_iter().collect();
        let open = counts.get("active").unwrap_or(&0) + counts.get("enforcing").unwrap_or(&0);
        assert!(open > 0, "kill {kill} (seed {seed}) came after the burst was done; make it larger");
        daemons[leader].crash();
        // Its place is taken by a fresh instance: three again.
        daemons[leader] = h.start_daemon().await;
        wait_for("a new leader", SHORT, || async {
            daemons.iter().any(|d| leading_term(d, "trtc").is_some_and(|t| t > term)).then_some(())
        })
        .await;
    }
    wait_until_settled(&store, rooms).await;
    assert_all_enforced_once(&h, &store, rooms).await;
    let recovered = store
        .audit(&AuditFilter { events: vec!["recovered".into()], ..AuditFilter::default() })
        .await
        .unwrap();
    eprintln!("after 4 kills (seed {seed}): {} sessions recovered by a new leader", recovered.len());
}
