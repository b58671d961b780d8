//! Writes while another program writes in a tight loop: the store takes the
//! write lock between the other program's transactions instead of losing it
//! to them until its busy timeout runs out.

use super::support::*;

conformance! {
    async fn writes_go_through_while_another_program_inserts_in_a_tight_loop(db) {
        // Enough to go on writing until the other program has committed a
        // few times, however fast our writes go (on PostgreSQL, which has no
        // database-wide write lock, they do not wait for its transactions).
        let sessions: Vec<_> = (0..2000).map(|i| session(100 + i, at(30))).collect();
        let registered = register(&db.store, sessions, at(0)).await;
        let writer = db.busy_writer().await;
        let before = writer.commits();
        // Write transactions one after the other (at least 20, and for as
        // long as the other program has not committed three more of its
        // own, so the two truly took turns), each of which must get the
        // lock within the store's busy timeout (5 s). With SQLite's own busy
        // handler, which tries every 100 ms once a wait is long, the first
        // already did not: a try rarely lands between two of the other
        // program's transactions.
        let mut written = 0;
        for (i, s) in registered.iter().enumerate() {
            if i >= 20 && writer.commits() >= before + 3 {
                break;
            }
            db.store
                .end_session(s.id, at(1), "the app ended it")
                .await
                .unwrap_or_else(|e| panic!("write {i} under a busy writer failed: {e}"));
            written += 1;
        }
        let commits = writer.commits() - before;
        writer.finish();
        assert!(commits >= 3, "the other program kept writing meanwhile ({commits} transactions in {written} of ours)");
        for s in &registered[..written] {
            assert_eq!(db.store.session(s.id).await.unwrap().state, "cancelled");
        }
    }
}
