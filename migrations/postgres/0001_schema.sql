-- callwarden's schema on PostgreSQL: the same tables, columns and meanings
-- as migrations/sqlite (read those for the history of each column), with
-- PostgreSQL's own types: times are timestamptz, counts bigint, and the
-- triggers are PL/pgSQL. Every time the daemon writes is a whole
-- millisecond in UTC.

-- A time as the daemon reads it, the text every backend shares:
-- 'YYYY-MM-DDTHH:MM:SS.sssZ' in UTC (a year past 9999 gives five digits,
-- which the daemon refuses as malformed).
CREATE FUNCTION callwarden_text(t timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');

-- The queue and the record of every session. A row another program inserts
-- with plain SQL may leave out `id` (a random UUID), `provider` and
-- `deadline` (filled from the policy when the daemon adopts the row).
CREATE TABLE sessions (
    id               text COLLATE "C" PRIMARY KEY DEFAULT gen_random_uuid()::text,
    policy           text NOT NULL,
    provider         text,
    -- Decimal text for numeric TRTC rooms; the id itself for string rooms
    -- and ACS calls.
    room_id          text NOT NULL,
    room_kind        text NOT NULL CHECK (room_kind IN ('numeric', 'string', 'call')),
    -- NULL for a session that covers the whole room.
    user_id          text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    deadline         timestamptz,
    state            text NOT NULL DEFAULT 'active' CHECK (state IN
                         ('active', 'enforcing', 'accepted', 'enforced', 'already_ended', 'failed',
                          'cancelled', 'shadowed', 'expired')),
    attempts         bigint NOT NULL DEFAULT 0,
    extended_ms      bigint NOT NULL DEFAULT 0,
    detail           text,
    repeatability_id text,
    first_sent_at    timestamptz,
    idempotency_key  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    grace_ms         bigint NOT NULL DEFAULT 0,
    ended_at         timestamptz
);

-- Times are kept in whole milliseconds, as the daemon counts them: a start
-- (and a creation time) is rounded down, a deadline up (never early),
-- whoever writes the row. The text the store reads back is then the whole
-- value, so keyset pages by (deadline, created_at, id) are exact.
CREATE FUNCTION sessions_whole_milliseconds() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.started_at := date_trunc('milliseconds', NEW.started_at);
    NEW.created_at := date_trunc('milliseconds', NEW.created_at);
    IF NEW.deadline IS NOT NULL AND NEW.deadline <> date_trunc('milliseconds', NEW.deadline) THEN
        NEW.deadline := date_trunc('milliseconds', NEW.deadline) + interval '1 millisecond';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER sessions_whole_milliseconds BEFORE INSERT OR UPDATE OF started_at, deadline, created_at ON sessions
    FOR EACH ROW EXECUTE FUNCTION sessions_whole_milliseconds();

-- Whoever writes sessions (the daemon, the CLI, an app's own SQL), the
-- daemons listening hear of it once per transaction: notifications with
-- the same channel and payload in one transaction are folded into one.
CREATE FUNCTION sessions_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('callwarden_changed', '');
    RETURN NULL;
END $$;
CREATE TRIGGER sessions_changed AFTER INSERT OR UPDATE ON sessions
    FOR EACH STATEMENT EXECUTE FUNCTION sessions_changed();

CREATE INDEX sessions_due ON sessions (deadline) WHERE state = 'active';
CREATE INDEX sessions_enforcing ON sessions (deadline) WHERE state = 'enforcing';
CREATE INDEX sessions_unadopted ON sessions (created_at)
    WHERE state = 'active' AND (provider IS NULL OR deadline IS NULL);
-- The session list's two orders (with and without a state), as SQLite
-- sorts: rows not adopted yet (no deadline) first; ids byte by byte (the
-- column's collation is "C").
CREATE INDEX sessions_state ON sessions (state, deadline NULLS FIRST, created_at, id);
CREATE INDEX sessions_accepted ON sessions (room_id) WHERE state = 'accepted';
CREATE INDEX sessions_active_room ON sessions (room_id, room_kind) WHERE state = 'active';
CREATE UNIQUE INDEX sessions_idempotency_key ON sessions (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX sessions_user ON sessions (policy, user_id, started_at) WHERE user_id IS NOT NULL;
CREATE INDEX sessions_room_cancelled ON sessions (room_id, room_kind, updated_at) WHERE state = 'cancelled';
CREATE INDEX sessions_by_deadline ON sessions (deadline NULLS FIRST, created_at, id);
CREATE INDEX sessions_settled ON sessions (updated_at)
    WHERE state IN ('enforced', 'already_ended', 'failed', 'cancelled', 'shadowed', 'expired');

-- Append-only record of everything that happened to every session, each
-- row chained to the one before by its hash (see `callwarden audit verify`).
CREATE TABLE audit_log (
    id                  bigint PRIMARY KEY,
    at                  timestamptz NOT NULL DEFAULT now(),
    session_id          text,
    event               text NOT NULL,
    provider            text,
    action              text,
    attempt             bigint,
    outcome             text,
    http_status         bigint,
    provider_request_id text,
    error_code          text,
    detail              text,
    latency_ms          bigint,
    lateness_ms         bigint,
    prev_hash           text,
    hash                text
);
CREATE INDEX audit_log_session ON audit_log (session_id, id);
CREATE INDEX audit_log_at ON audit_log (at);

-- The chain's last row, one row in all: a writer locks it (FOR UPDATE) to
-- append, so two writers (the daemon and the CLI) never fork the chain.
CREATE TABLE audit_tip (
    id        integer PRIMARY KEY CHECK (id = 1),
    last_id   bigint NOT NULL,
    last_hash text NOT NULL
);
INSERT INTO audit_tip (id, last_id, last_hash) VALUES (1, 0, '');

-- Retention checkpoints: the last pruned row's id and hash, signed.
CREATE TABLE audit_checkpoints (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL,
    last_id     bigint NOT NULL,
    last_hash   text NOT NULL,
    rows_pruned bigint NOT NULL,
    signature   text
);

-- Signed heads of the chain (retention.checkpoint_key).
CREATE TABLE audit_heads (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL,
    last_id   bigint NOT NULL,
    last_hash text NOT NULL,
    signature text NOT NULL
);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND OLD.id <= (SELECT coalesce(max(last_id), 0) FROM audit_checkpoints) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (rows may be pruned only behind a retention checkpoint)';
END $$;
CREATE TRIGGER audit_log_is_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();

-- What provider webhooks said last per room ('' participant) and participant.
CREATE TABLE presence (
    provider      text NOT NULL,
    room_kind     text NOT NULL,
    room_id       text NOT NULL,
    participant   text NOT NULL,
    last_event_ms bigint NOT NULL,
    last_event    text NOT NULL,
    PRIMARY KEY (provider, room_kind, room_id, participant)
);
CREATE INDEX presence_last_event ON presence (last_event_ms);

-- The outbox of notifications to the app: warnings and outcomes.
CREATE TABLE notifications (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id    text NOT NULL UNIQUE,
    session_id     text NOT NULL,
    event          text NOT NULL,
    warn_before_ms bigint,
    detail         text,
    due_at         timestamptz NOT NULL,
    state          text NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'delivered', 'failed', 'obsolete')),
    attempts       bigint NOT NULL DEFAULT 0,
    last_error     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_due ON notifications (due_at) WHERE state = 'pending';
CREATE TRIGGER notifications_changed AFTER INSERT OR UPDATE ON notifications
    FOR EACH STATEMENT EXECUTE FUNCTION sessions_changed();
CREATE INDEX notifications_session ON notifications (session_id) WHERE state = 'pending';

CREATE TABLE notification_settings (
    id       integer PRIMARY KEY CHECK (id = 1),
    outcomes boolean NOT NULL DEFAULT false
);
INSERT INTO notification_settings (id, outcomes) VALUES (1, false);

-- Sessions per state, kept by the statement triggers below on every write,
-- whoever makes it, so `/metrics` never counts the table: the count of a
-- state is the sum of its rows' `n` (SELECT state, sum(n) FROM
-- session_counts GROUP BY state). Each statement that changes states
-- appends its net change, one row per state; nothing is updated in place,
-- so writers never wait for each other on a counter row (two updating one
-- row in opposite orders would deadlock). Reading folds the rows into one
-- per state again.
CREATE TABLE session_counts (
    state text NOT NULL,
    n     bigint NOT NULL
);

CREATE FUNCTION session_counts_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO session_counts (state, n) SELECT state, count(*) FROM new_rows GROUP BY state;
    RETURN NULL;
END $$;
CREATE TRIGGER session_counts_on_insert AFTER INSERT ON sessions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION session_counts_on_insert();

CREATE FUNCTION session_counts_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO session_counts (state, n)
    SELECT state, sum(n) FROM (SELECT state, -1 AS n FROM old_rows UNION ALL SELECT state, 1 FROM new_rows) d
     GROUP BY state HAVING sum(n) <> 0;
    RETURN NULL;
END $$;
CREATE TRIGGER session_counts_on_update AFTER UPDATE ON sessions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION session_counts_on_update();

CREATE FUNCTION session_counts_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO session_counts (state, n) SELECT state, -count(*) FROM old_rows GROUP BY state;
    RETURN NULL;
END $$;
CREATE TRIGGER session_counts_on_delete AFTER DELETE ON sessions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION session_counts_on_delete();

-- What a session's change of state does to its notifications.
CREATE FUNCTION sessions_state_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state IS DISTINCT FROM NEW.state THEN
        -- A session that leaves 'active' needs no more warnings.
        IF OLD.state = 'active' THEN
            UPDATE notifications SET state = 'obsolete', updated_at = NEW.updated_at
             WHERE session_id = NEW.id AND state = 'pending' AND event = 'warning';
        END IF;
        -- An enforcement outcome is queued for the app in the transaction
        -- that records it.
        IF NEW.state IN ('enforced', 'already_ended', 'failed', 'shadowed', 'expired')
           AND (SELECT outcomes FROM notification_settings WHERE id = 1) THEN
            INSERT INTO notifications (delivery_id, session_id, event, detail, due_at, created_at, updated_at)
            VALUES (gen_random_uuid()::text, NEW.id, NEW.state, NEW.detail,
                    NEW.updated_at, NEW.updated_at, NEW.updated_at);
        END IF;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER sessions_state_changed AFTER UPDATE OF state ON sessions
    FOR EACH ROW EXECUTE FUNCTION sessions_state_changed();

-- When a session stopped counting against a budget: set once, when it
-- reaches a final state.
CREATE FUNCTION sessions_ended_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state IN ('enforced', 'already_ended', 'failed', 'cancelled', 'shadowed', 'expired')
       AND NEW.ended_at IS NULL THEN
        NEW.ended_at := NEW.updated_at;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER sessions_ended_at BEFORE UPDATE OF state ON sessions
    FOR EACH ROW EXECUTE FUNCTION sessions_ended_at();

-- Budget use, one row per participant session (see the README):
--   SELECT user_id, sum(used_ms) / 60000.0 AS minutes FROM budget_usage
--    WHERE policy = 'paid-chat' AND started_at >= '2026-11-22T00:00:00Z'
--    GROUP BY user_id;
CREATE VIEW budget_usage AS
SELECT id AS session_id, policy, user_id, started_at, ended_at, state,
       greatest(0, round(extract(epoch FROM (coalesce(ended_at, now()) - started_at)) * 1000))::bigint AS used_ms
  FROM sessions
 WHERE user_id IS NOT NULL AND deadline IS NOT NULL;
