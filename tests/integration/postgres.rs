//! The daemon and the CLI on PostgreSQL: the real binary against a
//! throwaway cluster (`tests/support/pg_cluster.rs`), a fresh database per
//! test. Without PostgreSQL these tests say why and pass without running,
//! unless `CALLWARDEN_REQUIRE_POSTGRES=1` (CI).

use std::path::Path;

use callwarden::config::{Database, PostgresUrl};
use callwarden::domain::SessionId;
use callwarden::store::Store;

use crate::helpers::RoomArg::Num;
use crate::helpers::{Harness, SHORT, config_text, pg_cluster, wait_for};

/// A harness whose config names a fresh PostgreSQL database, and a store on
/// it for reading outcomes; `None` where PostgreSQL cannot run.
async fn on_postgres() -> Option<(Harness, Store, String)> {
    let url = pg_cluster::shared()?.fresh_database().await;
    let config_url = url.clone();
    let h = Harness::with_config(move |_, sandbox| {
        config_text(Path::new(&config_url), sandbox, callwarden::sandbox::SANDBOX_SECRET_KEY)
    })
    .await;
    let store = Store::connect(&Database::Postgres(PostgresUrl::parse(&url, None).unwrap())).await.unwrap();
    Some((h, store, url))
}

async fn wait_for_state(store: &Store, id: &str, state: &str) {
    let id: SessionId = id.parse().unwrap();
    wait_for(&format!("session {id} {state}"), SHORT, || async move {
        let row = store.session(id).await.unwrap();
        (row.state == state).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_daemon_enforces_a_session_the_cli_registered_and_the_chain_verifies() {
    let Some((h, store, _)) = on_postgres().await else { return };
    let _daemon = h.start_daemon().await;
    let ids = h.start_session("consultation", Num(4242), &[], Some("1s")).await;
    wait_for_state(&store, &ids[0], "enforced").await;

    let calls = h.sandbox.api_requests().await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!((calls[0].action.as_str(), calls[0].room.as_deref()), ("DismissRoom", Some("4242")));
    let row = store.session(ids[0].parse().unwrap()).await.unwrap();
    assert_eq!(row.attempts, 1);
    assert!(row.ended_at.is_some());

    let listed = h.cli(&["session", "list"]).await.expect_ok("session list");
    assert!(listed.stdout.contains(&ids[0]), "{listed:?}");
    let verified = h.cli(&["audit", "verify"]).await.expect_ok("audit verify");
    assert!(verified.stdout.contains("audit log intact: "), "{verified:?}");
}

#[tokio::test]
async fn a_row_an_app_inserts_with_plain_sql_is_adopted_and_enforced() {
    let Some((h, store, url)) = on_postgres().await else { return };
    let _daemon = h.start_daemon().await;
    use sqlx::Connection;
    let mut app = sqlx::PgConnection::connect(&url).await.unwrap();
    // As the README shows: the policy and the room, the rest from defaults
    // and the policy; a deadline one second ahead, by the database's clock.
    let id: String = sqlx::query_scalar(
        "INSERT INTO sessions (policy, room_id, room_kind, deadline) \
         VALUES ('consultation', '777', 'numeric', now() + interval '1 second') RETURNING id",
    )
    .fetch_one(&mut app)
    .await
    .unwrap();
    wait_for_state(&store, &id, "enforced").await;
    let row = store.session(id.parse().unwrap()).await.unwrap();
    assert_eq!(row.provider.as_deref(), Some("trtc"), "adopted: the provider filled in from the policy");
    assert_eq!(h.sandbox.api_requests().await.len(), 1);
}

#[tokio::test]
async fn backup_says_to_use_postgresql_tools() {
    let Some((h, _store, _)) = on_postgres().await else { return };
    let out = h.cli(&["backup", "/tmp/never-written.db"]).await;
    assert!(!out.ok());
    assert!(out.stderr.contains("pg_dump"), "{out:?}");
    assert!(!Path::new("/tmp/never-written.db").exists());
}

#[tokio::test]
async fn a_password_in_the_url_never_reaches_the_logs() {
    let Some(cluster) = pg_cluster::shared() else { return };
    // Trust authentication ignores the password, so the daemon starts.
    let url = cluster.fresh_database().await.replace("postgres@", "postgres:s3cret-pw@");
    let config_url = url.clone();
    let h = Harness::with_config(move |_, sandbox| {
        config_text(Path::new(&config_url), sandbox, callwarden::sandbox::SANDBOX_SECRET_KEY)
    })
    .await;
    let check = h.cli(&["check"]).await.expect_ok("check");
    assert!(check.stdout.contains("postgres://postgres:****@"), "{check:?}");
    let daemon = h.start_daemon().await;
    h.start_session("consultation", Num(9), &[], Some("20m")).await;
    daemon.terminate();
    for text in [check.stdout, check.stderr, daemon.logs()] {
        assert!(!text.contains("s3cret-pw"), "{text}");
    }
}

#[tokio::test]
async fn db_copy_moves_a_sqlite_deployment_into_postgres_with_its_chain() {
    let Some(cluster) = pg_cluster::shared() else { return };
    let h = Harness::new().await;
    let mut daemon = h.start_daemon().await;
    let done = h.start_session("consultation", Num(5), &[], Some("1s")).await;
    let running = h.start_session("paid-chat", Num(6), &["alice"], Some("10m")).await;
    h.wait_until_settled(&done, SHORT).await;
    let url = cluster.fresh_database().await;

    let refused = h.cli(&["db", "copy", "--to", &url]).await;
    assert!(!refused.ok() && refused.stderr.contains("stop the daemon"), "{refused:?}");
    daemon.terminate();
    assert!(daemon.exit_status(SHORT).await.success());

    let out = h.cli(&["db", "copy", "--to", &url]).await.expect_ok("db copy");
    assert!(out.stdout.contains("2 sessions"), "{out:?}");
    assert!(out.stdout.contains("audit log intact: "), "{out:?}");

    let sqlite = Store::open(&h.db_path).await.unwrap();
    let pg = Store::connect(&Database::Postgres(PostgresUrl::parse(&url, None).unwrap())).await.unwrap();
    assert_eq!(pg.state_counts().await.unwrap(), sqlite.state_counts().await.unwrap());
    for id in [&done[0], &running[0]] {
        let id: SessionId = id.parse().unwrap();
        assert_eq!(
            format!("{:?}", pg.session(id).await.unwrap()),
            format!("{:?}", sqlite.session(id).await.unwrap())
        );
    }
    let (copied, original) =
        (pg.audit_page(0, 1000).await.unwrap(), sqlite.audit_page(0, 1000).await.unwrap());
    assert_eq!(
        format!("{copied:?}"),
        format!("{original:?}"),
        "every audit row, ids and hashes as they were"
    );
    // The chain goes on in the copy: a new row is chained to the last one.
    pg.end_session(
        running[0].parse().unwrap(),
        callwarden::domain::Instant::from_millis(crate::helpers::now_ms()),
        "test",
    )
    .await
    .unwrap();
    let after = pg.audit_page(0, 1000).await.unwrap();
    assert_eq!(after.len(), original.len() + 1);
    assert_eq!(after.last().unwrap().prev_hash, original.last().unwrap().hash);

    let again = h.cli(&["db", "copy", "--to", &url]).await;
    assert!(!again.ok() && again.stderr.contains("holds callwarden data already"), "{again:?}");
}

#[tokio::test]
async fn the_daemon_rides_out_a_postgresql_restart() {
    let Some(cluster) = pg_cluster::own() else { return };
    let url = cluster.fresh_database().await;
    let config_url = url.clone();
    let h = Harness::with_config(move |_, sandbox| {
        config_text(Path::new(&config_url), sandbox, callwarden::sandbox::SANDBOX_SECRET_KEY)
    })
    .await;
    let daemon = h.start_daemon().await;
    let ids = h.start_session("consultation", Num(31), &[], Some("3s")).await;
    // The server goes away before the deadline and comes back after it.
    cluster.stop();
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    cluster.restart();
    let store = Store::connect(&Database::Postgres(PostgresUrl::parse(&url, None).unwrap())).await.unwrap();
    wait_for_state(&store, &ids[0], "enforced").await;
    let calls = h.sandbox.api_requests().await;
    assert_eq!(calls.len(), 1, "one call, once the database was back: {calls:?}");
    let logs = daemon.logs();
    assert!(logs.contains("callwarden running"), "{logs}");
}

#[tokio::test]
async fn the_database_clock_offset_is_measured_and_served_as_a_metric() {
    let Some(cluster) = pg_cluster::shared() else { return };
    let url = cluster.fresh_database().await;
    let config_url = url.clone();
    let listener = crate::helpers::Listener { api: false, trtc: false, acs: false };
    let h = Harness::with_config(move |_, sandbox| {
        crate::helpers::ConfigYaml::new(Path::new(&config_url), sandbox).listen(listener).text()
    })
    .await;
    let daemon = h.start_daemon().await;
    let client = crate::helpers::Client::new(&daemon.http_url().await);
    // Measured at start: the cluster runs on this host, so within 50 ms.
    let offset = wait_for("the offset gauge", SHORT, || async {
        let metrics = crate::helpers::parse_metrics(&client.get("/metrics").await.text);
        metrics
            .iter()
            .any(|m| m.name == "callwarden_database_clock_offset_seconds")
            .then(|| crate::helpers::metric_sum(&metrics, "callwarden_database_clock_offset_seconds", &[]))
    })
    .await;
    assert!(offset.abs() < 0.05, "offset {offset} s");
}
