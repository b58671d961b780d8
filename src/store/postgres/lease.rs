//! Leases: which instance leads each bucket, one row per bucket in
//! `leases` (migration 0002), every time by the server's clock
//! (`clock_timestamp()`), so no instance's clock decides who leads.
//!
//! A lease is granted when it is free or expired (or to its own holder
//! again, under a new term: an instance that stopped trusting its lease
//! takes it afresh), renewed only under the term it was granted, and given
//! up at a clean stop. All of it runs on a connection of its own with a
//! short statement timeout: a renewal never waits for a pooled connection,
//! and a stuck server costs a renewal, not the lease loop.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::store::StoreError;

/// The longest a lease statement may run: well under the time a leader
/// keeps trusting its lease after a renewal began.
pub const LEASE_STATEMENT_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection for the leases alone.
pub struct LeaseConn {
    conn: PgConnection,
    location: String,
}

impl std::fmt::Debug for LeaseConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseConn").field("location", &self.location).finish_non_exhaustive()
    }
}

impl LeaseConn {
    pub(super) async fn connect(options: &PgConnectOptions, location: &str) -> Result<LeaseConn, StoreError> {
        let connect_error = |source| StoreError::Connect { location: location.to_string(), source };
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
            .await
            .map_err(|_| connect_error(sqlx::Error::PoolTimedOut))?
            .map_err(connect_error)?;
        sqlx::query(&format!("SET statement_timeout = {}", LEASE_STATEMENT_TIMEOUT.as_millis()))
            .execute(&mut conn)
            .await?;
        Ok(LeaseConn { conn, location: location.to_string() })
    }

    /// Takes `bucket` for `holder` for `ttl` if it is free, expired, or
    /// already `holder`'s; returns the new term, or `None` when another
    /// instance holds it.
    pub async fn acquire(
        &mut self,
        bucket: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<i64>, StoreError> {
        let term = sqlx::query_scalar(
            "INSERT INTO leases (bucket, holder, term, acquired_at, expires_at) \
             VALUES ($1, $2, nextval('lease_terms'), clock_timestamp(), \
                     clock_timestamp() + $3::float8 * interval '1 millisecond') \
             ON CONFLICT (bucket) DO UPDATE SET holder = EXCLUDED.holder, term = EXCLUDED.term, \
                 acquired_at = EXCLUDED.acquired_at, expires_at = EXCLUDED.expires_at \
             WHERE leases.expires_at <= clock_timestamp() OR leases.holder = EXCLUDED.holder \
             RETURNING term",
        )
        .bind(bucket)
        .bind(holder)
        .bind(ttl.as_millis() as f64)
        .fetch_optional(&mut self.conn)
        .await?;
        Ok(term)
    }

    /// Extends `holder`'s lease on `bucket` under `term` to `ttl` from now,
    /// if it has not expired; returns whether it did.
    pub async fn renew(
        &mut self,
        bucket: &str,
        holder: &str,
        term: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE leases SET expires_at = clock_timestamp() + $4::float8 * interval '1 millisecond' \
             WHERE bucket = $1 AND holder = $2 AND term = $3 AND expires_at > clock_timestamp()",
        )
        .bind(bucket)
        .bind(holder)
        .bind(term)
        .bind(ttl.as_millis() as f64)
        .execute(&mut self.conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives up `holder`'s leases (a clean stop): the buckets are free at
    /// once, for the next instance that asks. Returns how many.
    pub async fn resign(&mut self, holder: &str) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM leases WHERE holder = $1").bind(holder).execute(&mut self.conn).await?;
        Ok(done.rows_affected())
    }

    /// Every lease: bucket, holder, term and milliseconds until it expires
    /// (negative: expired), by the server's clock.
    pub async fn leases(&mut self) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
        let rows: Vec<(String, String, i64, f64)> = sqlx::query_as(
            "SELECT bucket, holder, term, \
                 extract(epoch FROM expires_at - clock_timestamp())::float8 * 1000 \
             FROM leases ORDER BY bucket",
        )
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows.into_iter().map(|(b, h, t, ms)| (b, h, t, ms.round() as i64)).collect())
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}
