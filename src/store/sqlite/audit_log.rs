//! The audit log: appending rows chained by hash (the chain's format is
//! `domain::audit`'s), querying, summarising, paging for verification, and
//! pruning behind a signed checkpoint.

use std::sync::LazyLock;

use sqlx::{Row, SqliteConnection};

use super::SqliteStore;
use crate::domain::Instant;
use crate::domain::audit::{AUDIT_COLUMNS, AuditEntry, AuditRecord, Checkpoint, Head};
pub use crate::store::rows::audit_record;
use crate::store::{AuditFilter, AuditSummary, StoreError};

/// [`AUDIT_COLUMNS`] as SQL, joined once: the INSERT is on enforcement's path.
static AUDIT_COLUMN_LIST: LazyLock<String> = LazyLock::new(|| AUDIT_COLUMNS.join(", "));

impl SqliteStore {
    /// Appends one audit row on its own (a configuration reload, say).
    pub(in crate::store) async fn record_audit(
        &self,
        entry: &AuditEntry,
        now: Instant,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        insert_audit(&mut tx, entry, now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(in crate::store) async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
            "SELECT * FROM (SELECT {} FROM audit_log WHERE 1 = 1",
            &*AUDIT_COLUMN_LIST
        ));
        if let Some(id) = filter.session {
            q.push(" AND session_id = ").push_bind(id.to_string());
        }
        if filter.room.is_some() || filter.user.is_some() {
            q.push(" AND session_id IN (SELECT id FROM sessions WHERE 1 = 1");
            if let Some(room) = &filter.room {
                q.push(" AND room_id = ").push_bind(room.clone());
            }
            if let Some(user) = &filter.user {
                q.push(" AND user_id = ").push_bind(user.clone());
            }
            q.push(")");
        }
        if let Some(provider) = &filter.provider {
            q.push(" AND provider = ").push_bind(provider.clone());
        }
        for (column, values) in [("outcome", &filter.outcomes), ("event", &filter.events)] {
            if !values.is_empty() {
                q.push(format!(" AND {column} IN ("));
                let mut list = q.separated(", ");
                for v in values {
                    list.push_bind(v.clone());
                }
                q.push(")");
            }
        }
        if let Some(since) = filter.since {
            q.push(" AND at >= ").push_bind(since.to_string());
        }
        if let Some(until) = filter.until {
            q.push(" AND at < ").push_bind(until.to_string());
        }
        // Newest `limit` rows, then back to oldest first.
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(filter.limit.map_or(-1, i64::from))
            .push(") ORDER BY id");
        let rows = q.build().fetch_all(&self.readers).await?;
        rows.iter().map(audit_record).collect::<Result<_, sqlx::Error>>().map_err(StoreError::from)
    }

    /// Counts per event, outcome and error code, and first-call lateness,
    /// for rows in `[since, until)`.
    pub(in crate::store) async fn audit_summary(
        &self,
        since: Instant,
        until: Instant,
    ) -> Result<AuditSummary, StoreError> {
        let counts = |column: &'static str| {
            format!(
                "SELECT {column} AS k, count(*) AS n FROM audit_log WHERE at >= ? AND at < ? AND {column} IS NOT NULL \
                 GROUP BY {column} ORDER BY n DESC, k"
            )
        };
        let mut summary = AuditSummary::default();
        for (column, out) in [
            ("event", &mut summary.events),
            ("outcome", &mut summary.outcomes),
            ("error_code", &mut summary.error_codes),
        ] {
            let rows = sqlx::query(&counts(column))
                .bind(since.to_string())
                .bind(until.to_string())
                .fetch_all(&self.readers)
                .await?;
            for r in rows {
                out.push((r.try_get("k")?, r.try_get("n")?));
            }
        }
        let rows = sqlx::query(
            "SELECT lateness_ms FROM audit_log WHERE id IN ( \
               SELECT min(id) FROM audit_log WHERE lateness_ms IS NOT NULL AND at >= ? AND at < ? GROUP BY session_id) \
             ORDER BY lateness_ms",
        )
        .bind(since.to_string())
        .bind(until.to_string())
        .fetch_all(&self.readers)
        .await?;
        summary.first_call_lateness_ms =
            rows.iter().map(|r| r.try_get("lateness_ms")).collect::<Result<_, sqlx::Error>>()?;
        Ok(summary)
    }

    /// Audit rows with an id above `after`, oldest first, at most `limit`:
    /// for walking the whole log in pages.
    pub(in crate::store) async fn audit_page(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!("SELECT {} FROM audit_log WHERE id > ? ORDER BY id LIMIT ?", &*AUDIT_COLUMN_LIST);
        let rows = sqlx::query(&sql).bind(after).bind(limit).fetch_all(&self.readers).await?;
        rows.iter().map(audit_record).collect::<Result<_, sqlx::Error>>().map_err(StoreError::from)
    }

    /// The last retention checkpoint: where verification of the remaining
    /// audit rows starts.
    /// [`SqliteStore::audit_page`]: one chain, ''.
    pub(in crate::store) async fn audit_chain_page(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(String, AuditRecord)>, StoreError> {
        Ok(self.audit_page(after, limit).await?.into_iter().map(|r| (String::new(), r)).collect())
    }

    /// [`SqliteStore::audit_checkpoint`], of the one chain ''.
    pub(in crate::store) async fn audit_checkpoints(&self) -> Result<Vec<(String, Checkpoint)>, StoreError> {
        Ok(self.audit_checkpoint().await?.map(|cp| (String::new(), cp)).into_iter().collect())
    }

    pub(in crate::store) async fn audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT at, last_id, last_hash, rows_pruned, signature FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.readers)
        .await?;
        Ok(match row {
            Some(r) => Some(Checkpoint {
                at: r.try_get("at")?,
                last_id: r.try_get("last_id")?,
                last_hash: r.try_get("last_hash")?,
                rows_pruned: r.try_get("rows_pruned")?,
                signature: r.try_get("signature")?,
            }),
            None => None,
        })
    }

    /// Records a signed head of the chain (its last row), unless the last
    /// head names that row already. Returns the head recorded.
    pub(in crate::store) async fn record_audit_head(
        &self,
        now: Instant,
        sign: impl Fn(String, i64, String) -> Head,
    ) -> Result<Option<Head>, StoreError> {
        let last = sqlx::query(
            "SELECT id, hash, (SELECT max(last_id) FROM audit_heads) AS headed FROM audit_log \
             WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.readers)
        .await?;
        let Some(last) = last else { return Ok(None) };
        let (id, hash): (i64, String) = (last.try_get("id")?, last.try_get("hash")?);
        if last.try_get::<Option<i64>, _>("headed")? >= Some(id) {
            return Ok(None);
        }
        let head = sign(now.to_string(), id, hash);
        self.write_one(
            sqlx::query("INSERT INTO audit_heads (at, last_id, last_hash, signature) VALUES (?, ?, ?, ?)")
                .bind(&head.at)
                .bind(head.last_id)
                .bind(&head.last_hash)
                .bind(&head.signature),
        )
        .await?;
        Ok(Some(head))
    }

    /// The signed heads naming rows after `after_id`, in id order.
    pub(in crate::store) async fn audit_heads(&self, after_id: i64) -> Result<Vec<Head>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, last_id, last_hash, signature FROM audit_heads WHERE last_id > ? ORDER BY last_id",
        )
        .bind(after_id)
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Head {
                    at: r.try_get("at")?,
                    last_id: r.try_get("last_id")?,
                    last_hash: r.try_get("last_hash")?,
                    signature: r.try_get("signature")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Prunes audit rows written before `before`: records a checkpoint with
    /// the last pruned row's id and hash (signed by `sign`) and a `pruned`
    /// row in the chain, in one short transaction; then deletes the rows up
    /// to the checkpoint [`PRUNE_CHUNK`](super::PRUNE_CHUNK) at a time, each chunk its own
    /// transaction, so other writers (claims, attempts, webhooks) get the
    /// writer between chunks. Verification starts at the checkpoint, so rows
    /// not yet deleted (a crash mid-way) change nothing; the next prune
    /// deletes them first. Returns the checkpoint, or `None` when nothing
    /// was old enough.
    pub(in crate::store) async fn prune_audit(
        &self,
        before: Instant,
        now: Instant,
        sign: impl Fn(&Checkpoint) -> Option<String>,
    ) -> Result<Option<Checkpoint>, StoreError> {
        if let Some(previous) = self.audit_checkpoint().await? {
            self.delete_audit_through(previous.last_id).await?;
        }
        // The newest row old enough (straight from the end of the `at`
        // index: rows are appended in time order), then how many rows lead
        // up to it. A count correlated with every old row, as this was, is
        // quadratic in the backlog.
        let last = sqlx::query(
            "SELECT id, hash FROM audit_log WHERE at < ? AND hash IS NOT NULL ORDER BY at DESC, id DESC LIMIT 1",
        )
        .bind(before.to_string())
        .fetch_optional(&self.readers)
        .await?;
        let Some(last) = last else { return Ok(None) };
        let last_id: i64 = last.try_get("id")?;
        let rows_pruned: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE id <= ?")
            .bind(last_id)
            .fetch_one(&self.readers)
            .await?;
        let mut checkpoint = Checkpoint {
            at: now.to_string(),
            last_id,
            last_hash: last.try_get::<Option<String>, _>("hash")?.unwrap_or_default(),
            rows_pruned,
            signature: None,
        };
        checkpoint.signature = sign(&checkpoint);
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO audit_checkpoints (at, last_id, last_hash, rows_pruned, signature) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&checkpoint.at)
        .bind(checkpoint.last_id)
        .bind(&checkpoint.last_hash)
        .bind(checkpoint.rows_pruned)
        .bind(&checkpoint.signature)
        .execute(&mut *tx)
        .await?;
        let entry = AuditEntry {
            event: "pruned",
            detail: Some(format!(
                "{} audit rows written before {before} pruned; checkpoint at row {} ({})",
                checkpoint.rows_pruned,
                checkpoint.last_id,
                if checkpoint.signature.is_some() { "signed" } else { "unsigned" }
            )),
            ..AuditEntry::default()
        };
        insert_audit(&mut tx, &entry, now).await?;
        tx.commit().await?;
        self.delete_audit_through(checkpoint.last_id).await?;
        Ok(Some(checkpoint))
    }

    /// Deletes the audit rows up to `last_id` (behind a checkpoint), a
    /// chunk per transaction.
    async fn delete_audit_through(&self, last_id: i64) -> Result<(), StoreError> {
        self.delete_in_chunks(|| {
            sqlx::query(
                "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE id <= ? ORDER BY id LIMIT ?)",
            )
            .bind(last_id)
        })
        .await?;
        Ok(())
    }
}

/// Appends an audit row, chained to the previous one. Every caller holds the
/// write lock already (its transaction wrote first), so "the previous row"
/// cannot change under it, even with the CLI writing from another process.
pub(super) async fn insert_audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    e: &AuditEntry,
    now: Instant,
) -> Result<(), sqlx::Error> {
    insert_audit_rows(tx, &[(e.clone(), now)]).await
}

/// Appends audit rows in order, each chained to the one before: the chain's
/// head is read once, and the rows go in as one multi-row INSERT.
pub(super) async fn insert_audit_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    entries: &[(AuditEntry, Instant)],
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let last = sqlx::query("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    let (last_id, last_hash) = match last {
        Some(row) => {
            (row.try_get::<i64, _>("id")?, row.try_get::<Option<String>, _>("hash")?.unwrap_or_default())
        }
        None => (0, String::new()),
    };
    let records = crate::domain::audit::chain_after(last_id, &last_hash, entries);
    insert_audit_records(tx, &records).await
}

/// Inserts audit records that are chained already (their ids, `prev_hash`
/// and `hash` set), in order, as multi-row INSERTs of 1,000 rows. For
/// [`insert_audit_rows`], and for tools that build a database directly
/// (the benchmark's prune database).
pub async fn insert_audit_records(
    conn: &mut SqliteConnection,
    records: &[AuditRecord],
) -> Result<(), sqlx::Error> {
    // SQLite takes at most 32,766 bound values per statement: 16 a row.
    for chunk in records.chunks(1000) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
            "INSERT INTO audit_log ({}) ",
            &*AUDIT_COLUMN_LIST
        ));
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.id)
                .push_bind(r.at.clone())
                .push_bind(r.session_id.clone())
                .push_bind(r.event.clone())
                .push_bind(r.provider.clone())
                .push_bind(r.action.clone())
                .push_bind(r.attempt)
                .push_bind(r.outcome.clone())
                .push_bind(r.http_status)
                .push_bind(r.provider_request_id.clone())
                .push_bind(r.error_code.clone())
                .push_bind(r.detail.clone())
                .push_bind(r.latency_ms)
                .push_bind(r.lateness_ms)
                .push_bind(r.prev_hash.clone())
                .push_bind(r.hash.clone());
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}
