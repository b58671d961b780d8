//! The audit log's rows and its tamper-evident hash chain: computing and
//! verifying it, and signing retention checkpoints. Pure: reading and
//! writing rows is the store's job.
//!
//! The chain: `hash = hex(SHA-256(prev_hash ‖ "\n" ‖ canonical(row)))`, where
//! `prev_hash` is the previous row's hash (empty for the first row) and
//! `canonical(row)` is the JSON array of the row's columns from `id` to
//! `lateness_ms`, in table order. Editing a row changes its hash; deleting
//! or inserting one breaks the next row's link. The canonical form must not
//! change by one byte: existing databases must keep verifying.

use serde::Serialize;

use super::SessionId;
use super::secret::Secret;

/// The `audit_log` table's columns, in table order: the order of
/// [`AuditRecord`]'s fields, of `audit` output, and of the store's SQL.
pub const AUDIT_COLUMNS: [&str; 16] = [
    "id",
    "at",
    "session_id",
    "event",
    "provider",
    "action",
    "attempt",
    "outcome",
    "http_status",
    "provider_request_id",
    "error_code",
    "detail",
    "latency_ms",
    "lateness_ms",
    "prev_hash",
    "hash",
];

/// One row to append to the audit log. Fields left `None` stay NULL.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry {
    pub session_id: Option<SessionId>,
    pub event: &'static str,
    pub provider: Option<String>,
    pub action: Option<String>,
    pub attempt: Option<u32>,
    pub outcome: Option<&'static str>,
    pub http_status: Option<u16>,
    pub provider_request_id: Option<String>,
    pub error_code: Option<String>,
    pub detail: Option<String>,
    pub latency_ms: Option<i64>,
    pub lateness_ms: Option<i64>,
}

impl AuditEntry {
    pub fn new(event: &'static str, session_id: SessionId) -> AuditEntry {
        AuditEntry { event, session_id: Some(session_id), ..AuditEntry::default() }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> AuditEntry {
        self.detail = Some(detail.into());
        self
    }
}

/// An audit row as stored.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: String,
    pub session_id: Option<String>,
    pub event: String,
    pub provider: Option<String>,
    pub action: Option<String>,
    pub attempt: Option<i64>,
    pub outcome: Option<String>,
    pub http_status: Option<i64>,
    pub provider_request_id: Option<String>,
    pub error_code: Option<String>,
    pub detail: Option<String>,
    pub latency_ms: Option<i64>,
    pub lateness_ms: Option<i64>,
    /// The chain: the previous row's hash, and this row's (NULL before schema v5).
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

/// Where pruning left the audit chain: its last pruned row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    pub at: String,
    pub last_id: i64,
    pub last_hash: String,
    pub rows_pruned: i64,
    /// HMAC-SHA256 over [`Checkpoint::signed_text`] with the checkpoint key.
    pub signature: Option<String>,
}

impl Checkpoint {
    pub fn signed_text(&self) -> String {
        format!("{}:{}:{}:{}", self.last_id, self.last_hash, self.rows_pruned, self.at)
    }
}

/// The chain's last row as the daemon signed it at `at` (with the
/// checkpoint key): a row rewritten or a tail cut off behind it shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Head {
    pub at: String,
    pub last_id: i64,
    pub last_hash: String,
    /// HMAC-SHA256 over [`Head::signed_text`] with the checkpoint key.
    pub signature: String,
}

impl Head {
    pub fn signed_text(&self) -> String {
        format!("head:{}:{}:{}", self.last_id, self.last_hash, self.at)
    }

    /// A head signed with `key`.
    pub fn signed(key: &Secret, at: String, last_id: i64, last_hash: String) -> Head {
        let mut head = Head { at, last_id, last_hash, signature: String::new() };
        head.signature = hmac_hex(key, &head.signed_text());
        head
    }

    pub fn signature_valid(&self, key: &Secret) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(hmac_hex(key, &self.signed_text()).as_bytes().ct_eq(self.signature.as_bytes()))
    }
}

/// The row's content as hashed: its columns from `id` to `lateness_ms`.
pub fn canonical(r: &AuditRecord) -> String {
    serde_json::json!([
        r.id,
        r.at,
        r.session_id,
        r.event,
        r.provider,
        r.action,
        r.attempt,
        r.outcome,
        r.http_status,
        r.provider_request_id,
        r.error_code,
        r.detail,
        r.latency_ms,
        r.lateness_ms
    ])
    .to_string()
}

/// The rows `entries` (each with the time it was written) become when
/// appended after the chain's last row `(last_id, last_hash)` (`(0, "")`
/// for an empty log): ids counting on from `last_id`, each row chained to
/// the one before. Every backend appends through this.
pub fn chain_after(
    last_id: i64,
    last_hash: &str,
    entries: &[(AuditEntry, super::Instant)],
) -> Vec<AuditRecord> {
    let ids: Vec<i64> = (1..=entries.len() as i64).map(|n| last_id + n).collect();
    chain_with_ids(&ids, last_hash, entries)
}

/// As [`chain_after`], with the rows' ids given (`ids[i]` for
/// `entries[i]`, increasing): for a log where several chains share one id
/// sequence (PostgreSQL, one chain per daemon instance).
pub fn chain_with_ids(
    ids: &[i64],
    last_hash: &str,
    entries: &[(AuditEntry, super::Instant)],
) -> Vec<AuditRecord> {
    let mut prev_hash = last_hash.to_string();
    let mut records = Vec::with_capacity(entries.len());
    for (&id, (e, at)) in ids.iter().zip(entries) {
        let mut record = AuditRecord {
            id,
            at: at.to_string(),
            session_id: e.session_id.map(|id| id.to_string()),
            event: e.event.to_string(),
            provider: e.provider.clone(),
            action: e.action.clone(),
            attempt: e.attempt.map(i64::from),
            outcome: e.outcome.map(str::to_string),
            http_status: e.http_status.map(i64::from),
            provider_request_id: e.provider_request_id.clone(),
            error_code: e.error_code.clone(),
            detail: e.detail.clone(),
            latency_ms: e.latency_ms,
            lateness_ms: e.lateness_ms,
            prev_hash: Some(prev_hash.clone()),
            hash: None,
        };
        let hash = chain_hash(&prev_hash, &record);
        record.hash = Some(hash.clone());
        prev_hash = hash;
        records.push(record);
    }
    records
}

pub fn chain_hash(prev_hash: &str, r: &AuditRecord) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(canonical(r).as_bytes());
    hex::encode(h.finalize())
}

/// The signature of a retention checkpoint: hex HMAC-SHA256 with the
/// configured checkpoint key.
pub fn checkpoint_signature(key: &Secret, cp: &Checkpoint) -> String {
    hmac_hex(key, &cp.signed_text())
}

fn hmac_hex(key: &Secret, text: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(key.expose().as_bytes()).expect("HMAC takes any key length");
    mac.update(text.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The chain holds: rows checked, rows before the chain began (written
    /// before schema v5), and the last row's id and hash. Removing rows from
    /// the end cannot be seen from inside the log; recording the head
    /// elsewhere (a ticket, a log shipper) makes that visible too.
    Intact { checked: u64, unchained: u64, head: Option<(i64, String)> },
    /// The first row where the chain breaks, and how.
    Broken { id: i64, reason: String },
}

/// Checks the chain one row at a time, in id order, so a log of any size is
/// verified in constant memory.
#[derive(Debug, Default)]
pub struct ChainCheck {
    expected_id: Option<i64>,
    /// Ids follow one another (one chain per log). Otherwise (several
    /// chains share the ids) only links and hashes say what is missing.
    linked_only: bool,
    /// Linked only: what the first chained row must link to (the
    /// checkpoint's hash, or "" at the chain's beginning).
    first_link: Option<String>,
    /// The last chained row: its id and hash.
    last: Option<(i64, String)>,
    prev: Option<String>,
    checked: u64,
    unchained: u64,
    /// Signed heads still to meet, latest first (popped from the end).
    heads: Vec<Head>,
}

impl ChainCheck {
    /// Starts after a retention checkpoint (the last pruned row's id and
    /// hash), or at row 1: without a checkpoint, a log that starts later
    /// lost its first rows.
    pub fn new(start: Option<(i64, String)>) -> ChainCheck {
        match start {
            Some((id, hash)) => {
                ChainCheck { expected_id: Some(id + 1), prev: Some(hash), ..ChainCheck::default() }
            }
            None => ChainCheck { expected_id: Some(1), ..ChainCheck::default() },
        }
    }

    /// A chain whose ids are not consecutive (several chains share the log's
    /// ids): its first chained row must link to `start`'s hash (a retention
    /// checkpoint), or to nothing at the chain's beginning, and every other
    /// row to the row before it in the chain.
    pub fn linked(start: Option<(i64, String)>) -> ChainCheck {
        ChainCheck {
            linked_only: true,
            first_link: Some(start.as_ref().map_or(String::new(), |(_, hash)| hash.clone())),
            last: start,
            ..ChainCheck::default()
        }
    }

    /// Also checks the chain against signed heads (whose signatures the
    /// caller has checked): each named row must be there with that hash.
    pub fn with_heads(mut self, mut heads: Vec<Head>) -> ChainCheck {
        heads.sort_by_key(|h| std::cmp::Reverse(h.last_id));
        self.heads = heads;
        self
    }

    /// Checks the next row; `Err` is the verdict at the first break.
    pub fn push(&mut self, r: &AuditRecord) -> Result<(), Verdict> {
        let broken = |reason: &str| Err(Verdict::Broken { id: r.id, reason: reason.to_string() });
        if let Some(want) = self.expected_id
            && r.id != want
        {
            let reason = if self.checked + self.unchained == 0 && want == 1 {
                format!(
                    "rows 1 to {} are missing and no retention checkpoint says they were pruned",
                    r.id - 1
                )
            } else {
                format!("rows {want} to {} are missing (deleted?)", r.id - 1)
            };
            return Err(Verdict::Broken { id: r.id, reason });
        }
        // Heads naming rows before this one name rows that are gone.
        if let Some(head) = self.heads.last()
            && head.last_id < r.id
        {
            return Err(Verdict::Broken {
                id: head.last_id,
                reason: format!("the row the head signed at {} names is missing", head.at),
            });
        }
        let Some(hash) = &r.hash else {
            if self.prev.is_some() {
                return broken("row has no hash inside the chain (inserted by hand?)");
            }
            self.unchained += 1;
            if !self.linked_only {
                self.expected_id = Some(r.id + 1);
            }
            return Ok(());
        };
        let link = r.prev_hash.clone().unwrap_or_default();
        if self.prev.as_ref().is_some_and(|prev| *prev != link) {
            return broken(
                "its link does not match the previous row's hash (a row before it was changed, deleted or inserted)",
            );
        }
        if self.prev.is_none()
            && let Some(first) = &self.first_link
            && *first != link
        {
            return broken(
                "the chain's first row links to a row that is not there (rows before it were deleted, and no \
                 retention checkpoint says so)",
            );
        }
        if chain_hash(&link, r) != *hash {
            return broken("its content does not match its hash (edited?)");
        }
        while self.heads.last().is_some_and(|h| h.last_id == r.id) {
            if let Some(head) = self.heads.pop()
                && head.last_hash != *hash
            {
                return Err(Verdict::Broken {
                    id: r.id,
                    reason: format!(
                        "its hash differs from the head signed at {}: the chain was rewritten up to here",
                        head.at
                    ),
                });
            }
        }
        self.prev = Some(hash.clone());
        self.last = Some((r.id, hash.clone()));
        if !self.linked_only {
            self.expected_id = Some(r.id + 1);
        }
        self.checked += 1;
        Ok(())
    }

    pub fn finish(self) -> Verdict {
        if let Some(head) = self.heads.first() {
            let last = self.expected_id.map_or(0, |next| next - 1);
            return Verdict::Broken {
                id: head.last_id,
                reason: format!(
                    "the log ends at row {last}, but the head signed at {} names row {}: rows were cut off the end",
                    head.at, head.last_id
                ),
            };
        }
        let head = match self.linked_only {
            true => self.last,
            false => self.expected_id.zip(self.prev).map(|(next, hash)| (next - 1, hash)),
        };
        Verdict::Intact { checked: self.checked, unchained: self.unchained, head }
    }
}

/// Several chains in one log, read in id order: PostgreSQL keeps one per
/// daemon instance (and one for everything else: the CLI, a copy), so that
/// appends never wait for another instance's. Each chain is checked as a
/// [`ChainCheck::linked`] chain from its own retention checkpoint; every
/// signed head, whichever chain it names a row of, must find that row with
/// that hash, and no head may name a row past the end of the log.
#[derive(Debug, Default)]
pub struct Chains {
    /// Each chain's retention checkpoint: its last pruned row.
    starts: std::collections::HashMap<String, (i64, String)>,
    chains: std::collections::BTreeMap<String, ChainCheck>,
    /// Signed heads still to meet, latest first (popped from the end).
    heads: Vec<Head>,
    last_id: i64,
}

impl Chains {
    /// `starts`: each chain's checkpoint; `heads`: signed heads (whose
    /// signatures the caller checked), none naming a pruned row.
    pub fn new(starts: std::collections::HashMap<String, (i64, String)>, mut heads: Vec<Head>) -> Chains {
        heads.sort_by_key(|h| std::cmp::Reverse(h.last_id));
        Chains { starts, heads, ..Chains::default() }
    }

    /// Checks the next row (of `chain`); `Err` is the verdict at the first
    /// break. A row at or before its chain's checkpoint (pruned, and not
    /// deleted yet: a prune cut short) is passed over.
    pub fn push(&mut self, chain: &str, r: &AuditRecord) -> Result<(), Verdict> {
        let start = self.starts.get(chain).cloned();
        if start.as_ref().is_some_and(|(id, _)| r.id <= *id) {
            return Ok(());
        }
        if let Some(head) = self.heads.last()
            && head.last_id < r.id
        {
            return Err(Verdict::Broken {
                id: head.last_id,
                reason: format!("the row the head signed at {} names is missing", head.at),
            });
        }
        self.chains.entry(chain.to_string()).or_insert_with(|| ChainCheck::linked(start)).push(r)?;
        while self.heads.last().is_some_and(|h| h.last_id == r.id) {
            if let Some(head) = self.heads.pop()
                && Some(&head.last_hash) != r.hash.as_ref()
            {
                return Err(Verdict::Broken {
                    id: r.id,
                    reason: format!(
                        "its hash differs from the head signed at {}: the chain was rewritten up to here",
                        head.at
                    ),
                });
            }
        }
        self.last_id = r.id;
        Ok(())
    }

    /// The verdict over every chain, and how many chains there were.
    pub fn finish(self) -> (Verdict, usize) {
        if let Some(head) = self.heads.first() {
            return (
                Verdict::Broken {
                    id: head.last_id,
                    reason: format!(
                        "the log ends at row {}, but the head signed at {} names row {}: rows were cut off the end",
                        self.last_id, head.at, head.last_id
                    ),
                },
                self.chains.len(),
            );
        }
        let count = self.chains.len();
        let (mut checked, mut unchained, mut head) = (0, 0, None);
        for check in self.chains.into_values() {
            match check.finish() {
                Verdict::Intact { checked: c, unchained: u, head: h } => {
                    checked += c;
                    unchained += u;
                    head = head.max(h);
                }
                broken => return (broken, count),
            }
        }
        (Verdict::Intact { checked, unchained, head }, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Instant;

    /// `n` rows of one chain, with the given ids, linked from `after`.
    fn rows(ids: &[i64], after: &str) -> Vec<AuditRecord> {
        let entries: Vec<_> = ids
            .iter()
            .map(|id| {
                (
                    AuditEntry {
                        event: "registered",
                        detail: Some(format!("row {id}")),
                        ..AuditEntry::default()
                    },
                    Instant::from_millis(*id),
                )
            })
            .collect();
        chain_with_ids(ids, after, &entries)
    }

    /// Two chains interleaved by id, as one instance and another append.
    fn two_chains() -> Vec<(&'static str, AuditRecord)> {
        let a = rows(&[1, 2, 5, 6], "");
        let b = rows(&[3, 4, 7], "");
        let mut all: Vec<_> =
            a.into_iter().map(|r| ("a", r)).chain(b.into_iter().map(|r| ("b", r))).collect();
        all.sort_by_key(|(_, r)| r.id);
        all
    }

    fn verdict(rows: &[(&str, AuditRecord)], starts: &[(&str, (i64, String))], heads: Vec<Head>) -> Verdict {
        let starts = starts.iter().map(|(c, s)| (c.to_string(), s.clone())).collect();
        let mut check = Chains::new(starts, heads);
        for (chain, r) in rows {
            if let Err(broken) = check.push(chain, r) {
                return broken;
            }
        }
        check.finish().0
    }

    #[test]
    fn interleaved_chains_verify_each_on_its_own_links() {
        let all = two_chains();
        let Verdict::Intact { checked, head, .. } = verdict(&all, &[], vec![]) else { panic!("broken") };
        assert_eq!(checked, 7);
        assert_eq!(head.map(|(id, _)| id), Some(7));
    }

    #[test]
    fn a_row_deleted_from_one_chain_breaks_it_and_only_a_checkpoint_excuses_a_missing_start() {
        let mut all = two_chains();
        all.retain(|(_, r)| r.id != 4);
        assert!(matches!(verdict(&all, &[], vec![]), Verdict::Broken { id: 7, .. }), "b's link after a gap");

        let mut all = two_chains();
        all.retain(|(_, r)| r.id != 1);
        assert!(matches!(verdict(&all, &[], vec![]), Verdict::Broken { id: 2, .. }), "a's first row gone");
        // Pruned behind a checkpoint, it is excused.
        let first = two_chains().into_iter().find(|(_, r)| r.id == 1).unwrap().1;
        let checkpoint = (1, first.hash.clone().unwrap());
        assert!(matches!(
            verdict(&all, &[("a", checkpoint.clone())], vec![]),
            Verdict::Intact { checked: 6, .. }
        ));
        // A row behind its chain's checkpoint, not deleted yet, is passed over.
        assert!(matches!(
            verdict(&two_chains(), &[("a", checkpoint)], vec![]),
            Verdict::Intact { checked: 6, .. }
        ));
    }

    #[test]
    fn a_head_finds_its_row_in_whichever_chain_and_a_cut_tail_shows() {
        let all = two_chains();
        let of = |id: i64| all.iter().find(|(_, r)| r.id == id).and_then(|(_, r)| r.hash.clone()).unwrap();
        let key = Secret::new("a-checkpoint-key-of-some-length");
        let head = |id: i64, hash: String| Head::signed(&key, "2026-11-29T00:00:00.000Z".into(), id, hash);
        assert!(matches!(verdict(&all, &[], vec![head(4, of(4)), head(6, of(6))]), Verdict::Intact { .. }));
        assert!(
            matches!(verdict(&all, &[], vec![head(4, of(5))]), Verdict::Broken { id: 4, .. }),
            "rewritten"
        );
        let cut: Vec<_> = all.iter().filter(|(_, r)| r.id <= 5).cloned().collect();
        assert!(
            matches!(verdict(&cut, &[], vec![head(7, of(7))]), Verdict::Broken { id: 7, .. }),
            "tail cut"
        );
    }
}
