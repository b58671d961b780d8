//! The scheduler on its own, against a real SQLite file, with a manual clock:
//! hours of deadlines pass in milliseconds, nothing is handed over before the
//! clock says so, and every hand-over is checked against the clock's time.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use callwarden::clock::Clock;
use callwarden::config::Config;
use callwarden::domain::audit::AuditEntry;
use callwarden::domain::session::NewSession;
use callwarden::domain::{Instant, Room, SessionId, SessionState};
use callwarden::scheduler::{CLAIM_LEAD, CLAIM_WINDOW, Claimed, Scheduler, watch_changes};
use callwarden::store::Store;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

const CONFIG: &str = "\
database: cw.db
providers:
  trtc: { kind: tencent-trtc, sdk_app_id: 1400000001, region: ap-guangzhou, secret_id: AKIDtest, secret_key: test }
policies:
  consultation: { provider: trtc, max_duration: 6h, action: dismiss_room }
";

struct Harness {
    store: Store,
    clock: Clock,
    changed: Arc<Notify>,
    rx: mpsc::UnboundedReceiver<Claimed>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn start_scheduler(capacity: usize) -> Harness {
    start_scheduler_with(capacity, Clock::manual(Instant::parse("2026-01-01T08:00:00Z").unwrap())).await
}

async fn start_scheduler_with(capacity: usize, clock: Clock) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let config = Arc::new(Config::parse(&dir.path().join("cw.yaml"), CONFIG).unwrap());
    let store = Store::connect(&config.database).await.unwrap();
    let changed = Arc::new(Notify::new());
    let (tx, rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let watcher = store.change_watcher().await.unwrap();
    tokio::spawn(watch_changes(watcher, Arc::clone(&changed), shutdown.clone()));
    let scheduler = Scheduler::new(
        store.clone(),
        clock.clone(),
        config,
        Arc::new(Semaphore::new(capacity)),
        Arc::clone(&changed),
        tx,
    );
    tokio::spawn(scheduler.run(shutdown.clone()));
    Harness { store, clock, changed, rx, shutdown, _dir: dir }
}

fn session(room: u32, deadline: Instant) -> NewSession {
    NewSession {
        id: SessionId::new(),
        policy: "consultation".into(),
        provider: "trtc".into(),
        room: Room::Numeric(room),
        user: None,
        started_at: deadline,
        deadline,
        grace: std::time::Duration::ZERO,
        warn_before: Vec::new(),
        note: None,
    }
}

impl Harness {
    async fn register(&self, sessions: &[NewSession]) {
        self.store.insert_sessions(sessions, self.clock.now(), "test").await.unwrap();
        self.changed.notify_one();
    }

    /// Receives the next hand-over, noting the clock's time when it arrived.
    async fn next(&mut self) -> (Instant, Claimed) {
        let claimed = tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("a hand-over within 10 s")
            .expect("the scheduler is running");
        (self.clock.now(), claimed)
    }

    /// Asserts that nothing is handed over for a while (real time) at the
    /// clock's current reading.
    async fn nothing_yet(&mut self) {
        let got = tokio::time::timeout(Duration::from_millis(300), self.rx.recv()).await;
        assert!(got.is_err(), "handed over at {} although nothing is due", self.clock.now());
    }

    /// Moves the clock to `t`.
    fn set(&self, t: Instant) {
        self.clock.advance(t.millis_since(self.clock.now()));
    }

    /// Settles handed-over sessions as enforcement would.
    async fn settle(&self, claimed: &Claimed) {
        let entries: Vec<_> = claimed.sessions.iter().map(|s| AuditEntry::new("enforced", s.id)).collect();
        self.store
            .record_outcome(&entries, Some((SessionState::Enforced, None)), self.clock.now())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn deadlines_hours_apart_are_handed_over_in_order_and_never_before_the_claim_lead() {
    let mut h = start_scheduler(64).await;
    let t0 = h.clock.now();
    let hours = |n: u64| t0.saturating_add(Duration::from_secs(n * 3600));
    // Registered out of order.
    let (third, first, second) = (session(3, hours(3)), session(1, hours(1)), session(2, hours(2)));
    h.register(&[third.clone(), first.clone(), second.clone()]).await;

    h.nothing_yet().await;
    for expected in [&first, &second, &third] {
        let lead = CLAIM_LEAD.as_millis() as i64;
        h.set(Instant::from_millis(expected.deadline.millis() - lead - 1));
        h.nothing_yet().await;
        h.clock.advance(1);
        let (at, claimed) = h.next().await;
        assert_eq!(claimed.sessions.len(), 1);
        let s = &claimed.sessions[0];
        assert_eq!(s.id, expected.id, "handed over out of deadline order");
        let lead = s.deadline.millis_since(at);
        assert!(lead >= 0, "handed over {}ms after its deadline", -lead);
        assert!(
            lead <= (CLAIM_LEAD + CLAIM_WINDOW).as_millis() as i64,
            "handed over {lead}ms before its deadline, more than the claim lead and window"
        );
        assert_eq!(s.state, SessionState::Enforcing);
        h.settle(&claimed).await;
    }
    h.shutdown.cancel();
}

#[tokio::test]
async fn an_extension_made_while_the_scheduler_sleeps_moves_the_hand_over() {
    let mut h = start_scheduler(64).await;
    let t0 = h.clock.now();
    let s = session(7, t0.saturating_add(Duration::from_secs(600)));
    h.register(std::slice::from_ref(&s)).await;
    // Let the scheduler go to sleep on the 10-minute deadline, then extend.
    h.clock.advance(60_000);
    h.nothing_yet().await;
    let new_deadline =
        h.store.extend_session(s.id, Duration::from_secs(1200), None, &[], h.clock.now()).await.unwrap();
    assert_eq!(new_deadline, s.deadline.saturating_add(Duration::from_secs(1200)));
    h.set(s.deadline);
    h.nothing_yet().await;
    h.set(new_deadline);
    let (at, claimed) = h.next().await;
    assert_eq!(claimed.sessions[0].deadline, new_deadline);
    assert!(
        at >= Instant::from_millis(new_deadline.millis() - (CLAIM_LEAD + CLAIM_WINDOW).as_millis() as i64)
    );
    h.shutdown.cancel();
}

#[tokio::test]
async fn a_burst_is_claimed_no_faster_than_enforcement_frees_capacity() {
    let capacity = 8;
    let mut h = start_scheduler(capacity).await;
    let at = h.clock.now().saturating_add(Duration::from_secs(30));
    let burst: Vec<_> = (1..=50).map(|room| session(room, at)).collect();
    h.register(&burst).await;
    h.set(at);

    let mut seen = 0;
    while seen < burst.len() {
        let (_, claimed) = h.next().await;
        assert!(claimed.sessions.len() <= capacity, "claimed more than the in-flight bound");
        assert_eq!(claimed.permit.num_permits(), claimed.sessions.len());
        seen += claimed.sessions.len();
        h.settle(&claimed).await;
        drop(claimed);
    }
    let counts = h.store.state_counts().await.unwrap();
    assert_eq!(counts, vec![("enforced".to_string(), 50)]);
    h.shutdown.cancel();
}

#[tokio::test]
async fn a_row_without_deadline_inserted_by_sql_is_adopted_from_its_policy() {
    let mut h = start_scheduler(64).await;
    // The store's own API cannot leave the provider and deadline empty, so
    // write the row the way another program would.
    let db = h.store.sqlite_path().unwrap().to_path_buf();
    let mut conn =
        <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
    let started = h.clock.now();
    sqlx::query("INSERT INTO sessions (policy, room_id, room_kind, started_at) VALUES ('consultation', '42', 'numeric', ?)")
        .bind(started.to_string())
        .execute(&mut conn)
        .await
        .unwrap();

    h.nothing_yet().await;
    h.set(started.saturating_add(Duration::from_secs(6 * 3600)));
    let (_, claimed) = h.next().await;
    let s = &claimed.sessions[0];
    assert_eq!(s.provider, "trtc");
    assert_eq!(s.room, Room::Numeric(42));
    assert_eq!(s.deadline, started.saturating_add(Duration::from_secs(6 * 3600)));
    h.shutdown.cancel();
}

/// Lets `seconds` of real time pass on a simulated clock, a second at a
/// time, and returns how many sessions were handed over meanwhile.
async fn pass(h: &mut Harness, seconds: u32) -> usize {
    let mut handed = 0;
    for _ in 0..seconds {
        h.clock.advance(1_000);
        tokio::time::sleep(Duration::from_millis(2)).await;
        while let Ok(claimed) = h.rx.try_recv() {
            for s in &claimed.sessions {
                assert!(s.deadline.millis_since(h.clock.now()) <= 300, "handed over early");
            }
            handed += claimed.sessions.len();
            h.settle(&claimed).await;
        }
    }
    // Let the last turns finish (a loaded machine may take a while); the
    // clock stands still meanwhile, so nothing more can fall due.
    while let Ok(Some(claimed)) = tokio::time::timeout(Duration::from_millis(1_500), h.rx.recv()).await {
        handed += claimed.sessions.len();
        h.settle(&claimed).await;
    }
    handed
}

#[tokio::test]
async fn a_forward_step_of_the_hosts_clock_releases_deadlines_gradually() {
    let t0 = Instant::parse("2026-01-01T08:00:00Z").unwrap();
    let mut h = start_scheduler_with(1024, Clock::simulated(t0)).await;
    let minutes = |n: u64| t0.saturating_add(Duration::from_secs(60 * n));
    let sessions: Vec<_> = (1..=120).map(|k| session(k as u32, minutes(k))).collect();
    h.register(&sessions).await;
    // The host's clock jumps an hour ahead; read raw, 60 deadlines would be due.
    h.clock.step_utc(3_600_000);
    assert_eq!(pass(&mut h, 30).await, 0, "nothing is due 33 s in at 1.1x");
    // Ten real minutes: the clock ran at 1.1x, so 11 minutes of deadlines.
    let handed = pass(&mut h, 570).await;
    assert_eq!(h.clock.now().millis_since(t0), 660_000);
    assert_eq!(handed, 11, "a step releases deadlines at 1.1x, not all at once");
}

#[tokio::test]
async fn a_backward_step_of_the_hosts_clock_never_makes_a_call_early() {
    let t0 = Instant::parse("2026-01-01T08:00:00Z").unwrap();
    let mut h = start_scheduler_with(1024, Clock::simulated(t0)).await;
    let first = session(1, t0.saturating_add(Duration::from_secs(60)));
    h.register(std::slice::from_ref(&first)).await;
    // The host's clock goes back a minute (it was a minute fast): the
    // deadline waits for the host's clock to reach it, a minute later.
    h.clock.step_utc(-60_000);
    assert_eq!(pass(&mut h, 119).await, 0, "due by the host's clock only after 120 s");
    assert_eq!(pass(&mut h, 2).await, 1, "due once the host's clock reaches it");
}
