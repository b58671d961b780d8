-- callwarden schema v6: retention.
--
-- Audit rows may be deleted only when a checkpoint covers them: the daemon
-- first records the last row it prunes (its id and hash, signed with the
-- configured checkpoint key), then deletes up to it. Verification of what
-- remains starts from that checkpoint.
ALTER TABLE audit_checkpoints ADD COLUMN signature TEXT;

DROP TRIGGER audit_log_is_append_only_delete;
CREATE TRIGGER audit_log_is_append_only_delete BEFORE DELETE ON audit_log
WHEN OLD.id > (SELECT coalesce(max(last_id), 0) FROM audit_checkpoints)
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only (rows may be pruned only behind a retention checkpoint)');
END;
