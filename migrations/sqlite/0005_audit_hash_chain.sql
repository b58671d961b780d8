-- callwarden schema v5: a tamper-evident audit log.
--
-- Each row carries the SHA-256 of the previous row's hash and its own
-- content (see `callwarden audit verify` and README "Tamper evidence"), so
-- editing, deleting or inserting a row breaks the chain from that row on.
-- Rows written before this version have no hash and are reported as such.
ALTER TABLE audit_log ADD COLUMN prev_hash TEXT;
ALTER TABLE audit_log ADD COLUMN hash TEXT;

-- Pruned history (retention) leaves a checkpoint: the last pruned row's id
-- and hash, where verification of the remaining rows starts.
CREATE TABLE audit_checkpoints (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT NOT NULL,
    last_id      INTEGER NOT NULL,
    last_hash    TEXT NOT NULL,
    rows_pruned  INTEGER NOT NULL
);
