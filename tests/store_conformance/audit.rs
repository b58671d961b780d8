//! The audit log: appending chained rows, reading them through filters and
//! pages, summarising a range, and pruning behind a signed checkpoint after
//! which the chain still verifies.

use std::sync::Mutex;

use callwarden::domain::Room;
use callwarden::domain::audit::{
    AuditEntry, AuditRecord, Checkpoint, Verdict, chain_hash, checkpoint_signature,
};
use callwarden::domain::secret::Secret;
use callwarden::store::{AuditFilter, Store};

use super::support::*;

fn ids(rows: &[AuditRecord]) -> Vec<i64> {
    rows.iter().map(|r| r.id).collect()
}

async fn ids_where(store: &Store, filter: AuditFilter) -> Vec<i64> {
    ids(&store.audit(&filter).await.unwrap())
}

fn entry(event: &'static str, outcome: Option<&'static str>) -> AuditEntry {
    AuditEntry { event, outcome, provider: Some(PROVIDER.into()), ..AuditEntry::default() }
}

/// Six chained rows: three sessions registered at `at(0)`, one ended at
/// `at(10)`, a reload at `at(60)`, an extension at `at(61)`.
async fn six_rows(store: &Store) {
    let s = register(store, vec![session(1, at(90)), session(2, at(90)), session(3, at(90))], at(0)).await;
    store.end_session(s[0].id, at(10), "done").await.unwrap();
    store.record_audit(&AuditEntry { event: "reloaded", ..AuditEntry::default() }, at(60)).await.unwrap();
    store.extend_session(s[1].id, mins(5), None, &[], at(61)).await.unwrap();
}

conformance! {
    async fn record_audit_appends_a_chained_row(db) {
        let s = register(&db.store, vec![session(1, at(30))], at(0)).await.remove(0);
        let e = AuditEntry {
            session_id: Some(s.id),
            event: "retry",
            provider: Some(PROVIDER.into()),
            action: Some("DismissRoom".into()),
            attempt: Some(2),
            outcome: Some("retryable"),
            http_status: Some(503),
            provider_request_id: Some("req-9".into()),
            error_code: Some("InternalError".into()),
            detail: Some("the provider is busy".into()),
            latency_ms: Some(1_234),
            lateness_ms: Some(-5),
        };
        db.store.record_audit(&e, at(3)).await.unwrap();
        let rows = all_audit(&db.store).await;
        assert_eq!(ids(&rows), [1, 2]);
        assert_eq!(rows[0].prev_hash.as_deref(), Some(""), "the first row links to nothing");
        let r = &rows[1];
        assert_eq!((r.at.clone(), r.session_id.clone(), r.event.as_str()), (at(3).to_string(), Some(s.id.to_string()), "retry"));
        assert_eq!((r.provider.as_deref(), r.action.as_deref(), r.attempt), (Some(PROVIDER), Some("DismissRoom"), Some(2)));
        assert_eq!((r.outcome.as_deref(), r.http_status, r.provider_request_id.as_deref()), (Some("retryable"), Some(503), Some("req-9")));
        assert_eq!((r.error_code.as_deref(), r.detail.as_deref()), (Some("InternalError"), Some("the provider is busy")));
        assert_eq!((r.latency_ms, r.lateness_ms), (Some(1_234), Some(-5)));
        assert_eq!(r.prev_hash, rows[0].hash);
        assert_eq!(r.hash, Some(chain_hash(rows[0].hash.as_deref().unwrap(), r)));
        assert_chain_intact(&db.store, 2).await;
    }

    async fn audit_filters_by_session_room_user_provider_outcome_event_and_time(db) {
        let alice = participant(Room::Numeric(1), "alice", at(90));
        let bob = participant(Room::Numeric(2), "bob", at(90));
        let whole = callwarden::domain::session::NewSession { provider: "trtc-eu".into(), ..session(1, at(90)) };
        register(&db.store, vec![alice.clone(), bob.clone(), whole], at(0)).await;
        let about = |id, e: AuditEntry| AuditEntry { session_id: Some(id), ..e };
        db.store.record_audit(&about(alice.id, entry("attempt", None)), at(10)).await.unwrap();
        db.store.record_audit(&about(alice.id, entry("enforced", Some("success"))), at(20)).await.unwrap();
        db.store.record_audit(&about(bob.id, entry("failed", Some("fatal"))), at(20)).await.unwrap();
        db.store.record_audit(&AuditEntry { event: "reloaded", ..AuditEntry::default() }, at(30)).await.unwrap();
        // Rows: 1-3 registered (alice, bob, whole room), 4 attempt, 5 enforced, 6 failed, 7 reloaded.
        let f = AuditFilter::default;
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(ids_where(&db.store, f()).await, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(ids_where(&db.store, AuditFilter { session: Some(alice.id), ..f() }).await, [1, 4, 5]);
        assert_eq!(ids_where(&db.store, AuditFilter { room: Some("1".into()), ..f() }).await, [1, 3, 4, 5]);
        assert_eq!(ids_where(&db.store, AuditFilter { user: Some("bob".into()), ..f() }).await, [2, 6]);
        assert_eq!(
            ids_where(&db.store, AuditFilter { room: Some("1".into()), user: Some("alice".into()), ..f() }).await,
            [1, 4, 5]
        );
        assert_eq!(ids_where(&db.store, AuditFilter { provider: Some("trtc-eu".into()), ..f() }).await, [3]);
        assert_eq!(ids_where(&db.store, AuditFilter { outcomes: s(&["success", "fatal"]), ..f() }).await, [5, 6]);
        assert_eq!(ids_where(&db.store, AuditFilter { events: s(&["attempt", "reloaded"]), ..f() }).await, [4, 7]);
        assert_eq!(ids_where(&db.store, AuditFilter { since: Some(at(20)), ..f() }).await, [5, 6, 7], "since is inclusive");
        assert_eq!(ids_where(&db.store, AuditFilter { until: Some(at(20)), ..f() }).await, [1, 2, 3, 4], "until is exclusive");
        assert_eq!(ids_where(&db.store, AuditFilter { since: Some(at(10)), until: Some(at(30)), ..f() }).await, [4, 5, 6]);
        assert_eq!(ids_where(&db.store, AuditFilter { limit: Some(2), ..f() }).await, [6, 7], "the newest, oldest first");
        assert_eq!(ids_where(&db.store, AuditFilter { session: Some(alice.id), limit: Some(2), ..f() }).await, [4, 5]);
        assert_eq!(
            ids_where(
                &db.store,
                AuditFilter { provider: Some(PROVIDER.into()), events: s(&["enforced", "failed", "registered"]), since: Some(at(5)), ..f() }
            )
            .await,
            [5, 6]
        );
        assert!(ids_where(&db.store, AuditFilter { room: Some("3".into()), ..f() }).await.is_empty());
    }

    async fn audit_summary_counts_events_outcomes_and_error_codes_in_the_range(db) {
        let s = register(&db.store, vec![session(1, at(30)), session(2, at(30))], at(0)).await;
        let rows = [
            (AuditEntry { lateness_ms: None, ..entry("attempt", None) }, s[0].id, at(30)),
            (AuditEntry { error_code: Some("InternalError".into()), lateness_ms: Some(120), ..entry("retry", Some("retryable")) }, s[0].id, at(30)),
            (AuditEntry { lateness_ms: Some(900), ..entry("enforced", Some("success")) }, s[0].id, at(31)),
            (AuditEntry { lateness_ms: Some(40), ..entry("enforced", Some("success")) }, s[1].id, at(31)),
            // At the end of the first range: in the second.
            (AuditEntry { error_code: Some("X".into()), lateness_ms: Some(7), ..entry("failed", Some("fatal")) }, s[1].id, at(60)),
        ];
        for (e, id, when) in rows {
            db.store.record_audit(&AuditEntry { session_id: Some(id), ..e }, when).await.unwrap();
        }
        let pairs = |v: &[(&str, i64)]| v.iter().map(|(k, n)| (k.to_string(), *n)).collect::<Vec<_>>();
        let first = db.store.audit_summary(at(0), at(60)).await.unwrap();
        assert_eq!(first.events, pairs(&[("enforced", 2), ("registered", 2), ("attempt", 1), ("retry", 1)]));
        assert_eq!(first.outcomes, pairs(&[("success", 2), ("retryable", 1)]));
        assert_eq!(first.error_codes, pairs(&[("InternalError", 1)]));
        assert_eq!(first.first_call_lateness_ms, [40, 120], "each session's first call, sorted");

        let second = db.store.audit_summary(at(60), at(120)).await.unwrap();
        assert_eq!(second.events, pairs(&[("failed", 1)]));
        assert_eq!(second.outcomes, pairs(&[("fatal", 1)]));
        assert_eq!(second.error_codes, pairs(&[("X", 1)]));
        assert_eq!(second.first_call_lateness_ms, [7]);

        let empty = db.store.audit_summary(at(120), at(180)).await.unwrap();
        assert!(empty.events.is_empty() && empty.outcomes.is_empty() && empty.error_codes.is_empty());
        assert!(empty.first_call_lateness_ms.is_empty());
    }

    async fn audit_page_walks_the_log_in_id_order(db) {
        register(&db.store, (1..=10).map(|room| session(room, at(30))).collect(), at(0)).await;
        let mut walked = Vec::new();
        let mut after = 0;
        loop {
            let page = db.store.audit_page(after, 3).await.unwrap();
            assert!(page.len() <= 3);
            let Some(last) = page.last() else { break };
            after = last.id;
            walked.extend(page);
        }
        let all = all_audit(&db.store).await;
        assert_eq!(ids(&walked), (1..=10).collect::<Vec<_>>());
        assert_eq!(walked.iter().map(|r| r.hash.clone()).collect::<Vec<_>>(), all.iter().map(|r| r.hash.clone()).collect::<Vec<_>>());
        assert_eq!(ids(&db.store.audit_page(4, 2).await.unwrap()), [5, 6]);
        assert!(db.store.audit_page(10, 3).await.unwrap().is_empty());
    }

    async fn the_audit_chain_verifies_after_appends_and_pruning(db) {
        six_rows(&db.store).await;
        let head_before = assert_chain_intact(&db.store, 6).await;
        assert_eq!(head_before.0, 6);
        let row4_hash = all_audit(&db.store).await[3].hash.clone().unwrap();

        let key = Secret::new("checkpoint-key");
        let offered: Mutex<Vec<Checkpoint>> = Mutex::default();
        let checkpoint = db
            .store
            .prune_audit(at(30), at(120), |cp| {
                offered.lock().unwrap().push(cp.clone());
                Some(checkpoint_signature(&key, cp))
            })
            .await
            .unwrap()
            .expect("rows older than at(30) to prune");
        let offered = offered.into_inner().unwrap();
        assert_eq!(offered.len(), 1, "signed once");
        assert_eq!(offered[0].signature, None, "signed before it carries a signature");
        let unsigned = Checkpoint { at: at(120).to_string(), last_id: 4, last_hash: row4_hash, rows_pruned: 4, signature: None };
        assert_eq!(offered[0], unsigned);
        assert_eq!(checkpoint, Checkpoint { signature: Some(checkpoint_signature(&key, &unsigned)), ..unsigned });
        assert_eq!(db.store.audit_checkpoint().await.unwrap(), Some(checkpoint.clone()));

        let rows = all_audit(&db.store).await;
        assert_eq!(ids(&rows), [5, 6, 7]);
        let pruned = &rows[2];
        assert_eq!((pruned.event.as_str(), pruned.session_id.as_deref(), pruned.at.clone()), ("pruned", None, at(120).to_string()));
        assert_eq!(pruned.detail, Some(format!("4 audit rows written before {} pruned; checkpoint at row 4 (signed)", at(30))));
        assert_eq!(pruned.prev_hash.as_ref(), Some(&head_before.1), "the pruned row extends the chain");
        assert_chain_intact(&db.store, 3).await;

        db.store.record_audit(&AuditEntry { event: "reloaded", ..AuditEntry::default() }, at(121)).await.unwrap();
        let head = assert_chain_intact(&db.store, 4).await;
        assert_eq!(head.0, 8);
    }

    async fn a_second_pruning_moves_the_checkpoint(db) {
        six_rows(&db.store).await;
        db.store.prune_audit(at(30), at(120), |_| Some("first".into())).await.unwrap().unwrap();
        let hash_of_6 = all_audit(&db.store).await[1].hash.clone().unwrap();
        // Rows 5 and 6 (at(60), at(61)) are older than at(100); row 7 (the first `pruned`) is not.
        let second = db.store.prune_audit(at(100), at(130), |_| None).await.unwrap().unwrap();
        assert_eq!(second, Checkpoint { at: at(130).to_string(), last_id: 6, last_hash: hash_of_6, rows_pruned: 2, signature: None });
        assert_eq!(db.store.audit_checkpoint().await.unwrap(), Some(second));
        let rows = all_audit(&db.store).await;
        assert_eq!(ids(&rows), [7, 8]);
        assert_eq!(rows[1].detail, Some(format!("2 audit rows written before {} pruned; checkpoint at row 6 (unsigned)", at(100))));
        assert_chain_intact(&db.store, 2).await;
    }

    async fn pruning_with_nothing_old_enough_changes_nothing(db) {
        let never = |_: &Checkpoint| -> Option<String> { panic!("nothing to sign") };
        assert_eq!(db.store.prune_audit(at(30), at(60), never).await.unwrap(), None, "an empty log");
        six_rows(&db.store).await;
        assert_eq!(db.store.prune_audit(at(0), at(60), never).await.unwrap(), None, "before is exclusive");
        assert_eq!(db.store.audit_checkpoint().await.unwrap(), None);
        assert_eq!(ids(&all_audit(&db.store).await), [1, 2, 3, 4, 5, 6]);
        assert!(matches!(verify_chain(&db.store).await, Verdict::Intact { checked: 6, .. }));
    }
}
