-- Wake-ups for what a scheduler must look at soon, rather than for every
-- write. NOTIFY takes a lock for the whole database at commit, so every
-- transaction that notifies queues behind every other that does: the
-- daemons' own outcome records (one per provider call) and the notifier's
-- bookkeeping no longer notify. What does: a row that is active and either
-- needs adopting (no provider or deadline yet) or is due within 2 s. A
-- deadline further off is found by the schedulers' poll (every second on a
-- shared database) long before it is due. Still at most one notification
-- per transaction (the same channel and payload are folded).
DROP TRIGGER sessions_changed ON sessions;
DROP TRIGGER notifications_changed ON notifications;
DROP FUNCTION sessions_changed();

CREATE FUNCTION sessions_due_soon() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE state = 'active'
               AND (provider IS NULL OR deadline IS NULL
                    OR deadline < clock_timestamp() + interval '2 seconds')) THEN
        PERFORM pg_notify('callwarden_changed', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER sessions_due_soon_on_insert AFTER INSERT ON sessions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sessions_due_soon();
CREATE TRIGGER sessions_due_soon_on_update AFTER UPDATE ON sessions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sessions_due_soon();
