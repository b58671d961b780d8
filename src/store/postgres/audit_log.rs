//! The audit log on PostgreSQL: appending rows chained by hash (the chain's
//! format is `domain::audit`'s), querying, summarising, paging for
//! verification, and pruning behind a signed checkpoint.
//!
//! Each daemon instance appends to a chain of its own (migration 0004): its
//! connections name it in the setting `callwarden.chain`, which SQL reads
//! as `callwarden_chain()`; the CLI and anything else append to the chain
//! ''. An append locks its chain's tip (a row of `audit_tips`) for the rest
//! of its transaction, draws the rows' ids from the log's sequence after
//! the lock (so a chain's ids grow in the order its rows are appended),
//! chains its rows to the tip's hash in memory and moves the tip on. Two
//! writers of one chain wait for each other, so it never forks; writers of
//! different chains share nothing but the sequence.

use std::sync::LazyLock;

use sqlx::Row;

use super::{PgStore, ts};
use crate::domain::Instant;
use crate::domain::audit::{AUDIT_COLUMNS, AuditEntry, AuditRecord, Checkpoint, Head};
pub use crate::store::rows::audit_record;
use crate::store::{AuditFilter, AuditSummary, StoreError};

type Tx<'c> = sqlx::Transaction<'c, sqlx::Postgres>;

/// [`AUDIT_COLUMNS`] as PostgreSQL reads them: `at` as the same UTC text
/// SQLite stores, which the chain's hashes are computed over.
static AUDIT_SELECT: LazyLock<String> = LazyLock::new(|| {
    AUDIT_COLUMNS
        .iter()
        .map(|c| if *c == "at" { "callwarden_text(at) AS at".to_string() } else { (*c).to_string() })
        .collect::<Vec<_>>()
        .join(", ")
});
/// [`AUDIT_COLUMNS`] for INSERT.
static AUDIT_COLUMN_LIST: LazyLock<String> = LazyLock::new(|| AUDIT_COLUMNS.join(", "));

impl PgStore {
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
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!(
            "SELECT * FROM (SELECT {} FROM audit_log WHERE true",
            &*AUDIT_SELECT
        ));
        if let Some(id) = filter.session {
            q.push(" AND session_id = ").push_bind(id.to_string());
        }
        if filter.room.is_some() || filter.user.is_some() {
            q.push(" AND session_id IN (SELECT id FROM sessions WHERE true");
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
                q.push(format!(" AND {column} = ANY(")).push_bind(values.clone()).push(")");
            }
        }
        if let Some(since) = filter.since {
            q.push(" AND audit_log.at >= ").push_bind(ts(since));
        }
        if let Some(until) = filter.until {
            q.push(" AND audit_log.at < ").push_bind(ts(until));
        }
        // Newest `limit` rows, then back to oldest first.
        q.push(" ORDER BY id DESC");
        if let Some(limit) = filter.limit {
            q.push(" LIMIT ").push_bind(i64::from(limit));
        }
        q.push(") AS newest ORDER BY id");
        let rows = q.build().fetch_all(self.readers()).await?;
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
                "SELECT {column} AS k, count(*) AS n FROM audit_log WHERE at >= $1 AND at < $2 \
                 AND {column} IS NOT NULL GROUP BY {column} ORDER BY n DESC, k"
            )
        };
        let mut summary = AuditSummary::default();
        for (column, out) in [
            ("event", &mut summary.events),
            ("outcome", &mut summary.outcomes),
            ("error_code", &mut summary.error_codes),
        ] {
            let rows = sqlx::query(&counts(column))
                .bind(ts(since))
                .bind(ts(until))
                .fetch_all(self.readers())
                .await?;
            for r in rows {
                out.push((r.try_get("k")?, r.try_get("n")?));
            }
        }
        let rows = sqlx::query(
            "SELECT lateness_ms FROM audit_log WHERE id IN ( \
               SELECT min(id) FROM audit_log WHERE lateness_ms IS NOT NULL AND at >= $1 AND at < $2 \
               GROUP BY session_id) \
             ORDER BY lateness_ms",
        )
        .bind(ts(since))
        .bind(ts(until))
        .fetch_all(self.readers())
        .await?;
        summary.first_call_lateness_ms =
            rows.iter().map(|r| r.try_get("lateness_ms")).collect::<Result<_, sqlx::Error>>()?;
        Ok(summary)
    }

    /// [`PgStore::audit_page`] with each row's chain.
    pub(in crate::store) async fn audit_chain_page(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(String, AuditRecord)>, StoreError> {
        let sql =
            format!("SELECT chain, {} FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2", &*AUDIT_SELECT);
        let rows = sqlx::query(&sql).bind(after).bind(i64::from(limit)).fetch_all(self.readers()).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("chain")?, audit_record(r)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Each chain's last retention checkpoint, by chain.
    pub(in crate::store) async fn audit_checkpoints(&self) -> Result<Vec<(String, Checkpoint)>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT ON (chain) chain, callwarden_text(at) AS at, last_id, last_hash, rows_pruned, signature \
             FROM audit_checkpoints ORDER BY chain, id DESC",
        )
        .fetch_all(self.readers())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("chain")?, checkpoint(r)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Audit rows with an id above `after`, oldest first, at most `limit`:
    /// for walking the whole log in pages.
    pub(in crate::store) async fn audit_page(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!("SELECT {} FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2", &*AUDIT_SELECT);
        let rows = sqlx::query(&sql).bind(after).bind(i64::from(limit)).fetch_all(self.readers()).await?;
        rows.iter().map(audit_record).collect::<Result<_, sqlx::Error>>().map_err(StoreError::from)
    }

    /// The last retention checkpoint of this connection's chain: where
    /// verification of its remaining rows starts.
    pub(in crate::store) async fn audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT callwarden_text(at) AS at, last_id, last_hash, rows_pruned, signature \
             FROM audit_checkpoints WHERE chain = callwarden_chain() ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(self.readers())
        .await?;
        Ok(row.as_ref().map(checkpoint).transpose()?)
    }

    /// Records a signed head of this connection's chain (its last row),
    /// unless the chain's last head names that row already. Returns the
    /// head recorded.
    pub(in crate::store) async fn record_audit_head(
        &self,
        now: Instant,
        sign: impl Fn(String, i64, String) -> Head,
    ) -> Result<Option<Head>, StoreError> {
        let mut tx = self.write_tx().await?;
        // The tip, locked: no row is appended behind the head meanwhile.
        let tip = sqlx::query(
            "SELECT last_id, last_hash, \
                 (SELECT max(last_id) FROM audit_heads WHERE chain = callwarden_chain()) AS headed \
             FROM audit_tips WHERE chain = callwarden_chain() FOR UPDATE",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(tip) = tip else { return Ok(None) };
        let (id, hash): (i64, String) = (tip.try_get("last_id")?, tip.try_get("last_hash")?);
        if id == 0 || tip.try_get::<Option<i64>, _>("headed")? >= Some(id) {
            return Ok(None);
        }
        let head = sign(now.to_string(), id, hash);
        sqlx::query(
            "INSERT INTO audit_heads (at, last_id, last_hash, signature, chain) \
             VALUES ($1::timestamptz, $2, $3, $4, callwarden_chain())",
        )
        .bind(&head.at)
        .bind(head.last_id)
        .bind(&head.last_hash)
        .bind(&head.signature)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(head))
    }

    /// The signed heads naming rows after `after_id`, in id order, of
    /// every chain; none that names a row behind its chain's checkpoint.
    pub(in crate::store) async fn audit_heads(&self, after_id: i64) -> Result<Vec<Head>, StoreError> {
        let rows = sqlx::query(
            "SELECT callwarden_text(at) AS at, last_id, last_hash, signature FROM audit_heads h \
             WHERE last_id > $1 AND last_id > coalesce( \
                 (SELECT max(c.last_id) FROM audit_checkpoints c WHERE c.chain = h.chain), 0) \
             ORDER BY last_id",
        )
        .bind(after_id)
        .fetch_all(self.readers())
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

    /// Prunes audit rows written before `before`, chain by chain: for each,
    /// records a checkpoint with its last pruned row's id and hash (signed
    /// by `sign`) and a `pruned` row (in this connection's chain), in one
    /// short transaction; then deletes the rows up to the checkpoint a
    /// chunk at a time, each chunk its own transaction. Verification starts
    /// each chain at its checkpoint, so rows not yet deleted (a crash
    /// mid-way) change nothing; the next prune deletes them first. Returns
    /// the last checkpoint recorded, or `None` when nothing was old enough.
    pub(in crate::store) async fn prune_audit(
        &self,
        before: Instant,
        now: Instant,
        sign: impl Fn(&Checkpoint) -> Option<String>,
    ) -> Result<Option<Checkpoint>, StoreError> {
        for (chain, previous) in self.audit_checkpoints().await? {
            self.delete_audit_through(&chain, previous.last_id).await?;
        }
        let chains: Vec<String> = sqlx::query_scalar("SELECT chain FROM audit_tips ORDER BY chain")
            .fetch_all(self.readers())
            .await?;
        let mut made = None;
        for chain in chains {
            if let Some(checkpoint) = self.prune_chain(&chain, before, now, &sign).await? {
                made = Some(checkpoint);
            }
        }
        Ok(made)
    }

    /// [`PgStore::prune_audit`] for one chain.
    async fn prune_chain(
        &self,
        chain: &str,
        before: Instant,
        now: Instant,
        sign: &impl Fn(&Checkpoint) -> Option<String>,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let last = sqlx::query(
            "SELECT id, hash FROM audit_log WHERE chain = $1 AND at < $2 AND hash IS NOT NULL \
             ORDER BY at DESC, id DESC LIMIT 1",
        )
        .bind(chain)
        .bind(ts(before))
        .fetch_optional(self.readers())
        .await?;
        let Some(last) = last else { return Ok(None) };
        let last_id: i64 = last.try_get("id")?;
        let rows_pruned: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE chain = $1 AND id <= $2")
                .bind(chain)
                .bind(last_id)
                .fetch_one(self.readers())
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
            "INSERT INTO audit_checkpoints (at, last_id, last_hash, rows_pruned, signature, chain) \
             VALUES ($1::timestamptz, $2, $3, $4, $5, $6)",
        )
        .bind(&checkpoint.at)
        .bind(checkpoint.last_id)
        .bind(&checkpoint.last_hash)
        .bind(checkpoint.rows_pruned)
        .bind(&checkpoint.signature)
        .bind(chain)
        .execute(&mut *tx)
        .await?;
        let of_chain = if chain.is_empty() { String::new() } else { format!(" of chain {chain}") };
        let entry = AuditEntry {
            event: "pruned",
            detail: Some(format!(
                "{} audit rows{of_chain} written before {before} pruned; checkpoint at row {} ({})",
                checkpoint.rows_pruned,
                checkpoint.last_id,
                if checkpoint.signature.is_some() { "signed" } else { "unsigned" }
            )),
            ..AuditEntry::default()
        };
        insert_audit(&mut tx, &entry, now).await?;
        tx.commit().await?;
        self.delete_audit_through(chain, checkpoint.last_id).await?;
        Ok(Some(checkpoint))
    }

    /// Deletes `chain`'s audit rows up to `last_id` (behind its
    /// checkpoint), a chunk per transaction.
    async fn delete_audit_through(&self, chain: &str, last_id: i64) -> Result<(), StoreError> {
        let chain = chain.to_string();
        self.delete_in_chunks(|| {
            sqlx::query(
                "DELETE FROM audit_log WHERE id IN \
                 (SELECT id FROM audit_log WHERE chain = $1 AND id <= $2 ORDER BY id LIMIT $3)",
            )
            .bind(chain.clone())
            .bind(last_id)
        })
        .await?;
        Ok(())
    }
}

/// Appends an audit row, chained to the previous one (see
/// [`insert_audit_rows`]).
pub(super) async fn insert_audit(tx: &mut Tx<'_>, e: &AuditEntry, now: Instant) -> Result<(), sqlx::Error> {
    insert_audit_rows(tx, &[(e.clone(), now)]).await
}

/// Appends audit rows in order, each chained to the one before: the tip is
/// locked and read once, the rows go in as one multi-row INSERT, and the
/// tip moves to the last of them, all in the caller's transaction.
pub(super) async fn insert_audit_rows(
    tx: &mut Tx<'_>,
    entries: &[(AuditEntry, Instant)],
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let (last_hash, ids) = lock_tip(tx, entries.len()).await?;
    let records = crate::domain::audit::chain_with_ids(&ids, &last_hash, entries);
    insert_audit_records(tx, &records).await?;
    let Some(last) = records.last() else { return Ok(()) };
    sqlx::query("UPDATE audit_tips SET last_id = $1, last_hash = $2 WHERE chain = callwarden_chain()")
        .bind(last.id)
        .bind(&last.hash)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Locks this connection's chain's tip (made on its first append) for the
/// rest of `tx`, and draws `n` ids for its next rows: its last hash, and
/// the ids in increasing order. The ids are drawn in the same statement,
/// after the lock (an UPDATE's RETURNING is computed once the row is
/// locked), so a chain's rows get increasing ids in the order they are
/// chained.
async fn lock_tip(tx: &mut Tx<'_>, n: usize) -> Result<(String, Vec<i64>), sqlx::Error> {
    for _ in 0..2 {
        let row = sqlx::query(
            "UPDATE audit_tips SET last_id = last_id WHERE chain = callwarden_chain() \
             RETURNING last_hash, ARRAY(SELECT nextval('audit_log_ids') FROM generate_series(1, $1)) AS ids",
        )
        .bind(n as i64)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(row) = row {
            let mut ids: Vec<i64> = row.try_get("ids")?;
            ids.sort_unstable();
            return Ok((row.try_get("last_hash")?, ids));
        }
        sqlx::query(
            "INSERT INTO audit_tips (chain, last_id, last_hash) VALUES (callwarden_chain(), 0, '') \
             ON CONFLICT (chain) DO NOTHING",
        )
        .execute(&mut **tx)
        .await?;
    }
    Err(sqlx::Error::RowNotFound)
}

/// A row of `audit_checkpoints`.
fn checkpoint(r: &sqlx::postgres::PgRow) -> Result<Checkpoint, sqlx::Error> {
    Ok(Checkpoint {
        at: r.try_get("at")?,
        last_id: r.try_get("last_id")?,
        last_hash: r.try_get("last_hash")?,
        rows_pruned: r.try_get("rows_pruned")?,
        signature: r.try_get("signature")?,
    })
}

/// Inserts audit records that are chained already (their ids, `prev_hash`
/// and `hash` set), in order, as multi-row INSERTs of 1,000 rows, into the
/// connection's chain; the caller moves the chain's tip (a copy of another
/// database moves it once, at the end).
pub async fn insert_audit_records(
    conn: &mut sqlx::PgConnection,
    records: &[AuditRecord],
) -> Result<(), sqlx::Error> {
    // At most 65,535 bound values per statement: 16 a row.
    for chunk in records.chunks(1000) {
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!(
            "INSERT INTO audit_log ({}) ",
            &*AUDIT_COLUMN_LIST
        ));
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.id)
                .push_bind(r.at.clone())
                .push_unseparated("::timestamptz")
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
