-- callwarden schema v9: the `expired` state, session counts kept by
-- triggers, text ids, an index that lists sessions by state in deadline
-- order, and signed heads of the audit chain.
--
-- `expired`: a session whose deadline had passed by more than its policy's
-- `stale_after` when it was about to be enforced; no call was sent (rooms
-- are reused: a dismissal hours late could end someone else's call).
-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt
-- (its view first dropped, then made again).

DROP VIEW budget_usage;

CREATE TABLE sessions_v9 (
    id          TEXT PRIMARY KEY NOT NULL DEFAULT (
                    lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
                    substr(lower(hex(randomblob(2))), 2) || '-' ||
                    substr('89ab', 1 + (abs(random()) % 4), 1) ||
                    substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6)))),
    policy      TEXT NOT NULL,
    provider    TEXT,
    room_id     TEXT NOT NULL,
    room_kind   TEXT NOT NULL CHECK (room_kind IN ('numeric', 'string', 'call')),
    user_id     TEXT,
    started_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    deadline    TEXT,
    state       TEXT NOT NULL DEFAULT 'active' CHECK (state IN
                    ('active', 'enforcing', 'accepted', 'enforced', 'already_ended', 'failed', 'cancelled',
                     'shadowed', 'expired')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    extended_ms INTEGER NOT NULL DEFAULT 0,
    detail      TEXT,
    repeatability_id TEXT,
    first_sent_at    TEXT,
    idempotency_key  TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    grace_ms    INTEGER NOT NULL DEFAULT 0,
    ended_at    TEXT,
    CHECK (julianday(started_at) IS NOT NULL),
    CHECK (deadline IS NULL OR julianday(deadline) IS NOT NULL)
);

INSERT INTO sessions_v9 (id, policy, provider, room_id, room_kind, user_id, started_at, deadline, state, attempts,
                         extended_ms, detail, repeatability_id, first_sent_at, idempotency_key, created_at,
                         updated_at, grace_ms, ended_at)
SELECT id, policy, provider, room_id, room_kind, user_id, started_at, deadline, state, attempts,
       extended_ms, detail, repeatability_id, first_sent_at, idempotency_key, created_at,
       updated_at, grace_ms, ended_at
FROM sessions;

DROP TABLE sessions;
ALTER TABLE sessions_v9 RENAME TO sessions;

CREATE INDEX sessions_due ON sessions (deadline) WHERE state = 'active';
CREATE INDEX sessions_enforcing ON sessions (deadline) WHERE state = 'enforcing';
CREATE INDEX sessions_unadopted ON sessions (created_at)
    WHERE state = 'active' AND (provider IS NULL OR deadline IS NULL);
-- By state in deadline order: `session list --state` and the API's list read
-- it without sorting; retention finds settled sessions through it.
CREATE INDEX sessions_state ON sessions (state, deadline, created_at);
CREATE INDEX sessions_accepted ON sessions (room_id) WHERE state = 'accepted';
CREATE INDEX sessions_active_room ON sessions (room_id, room_kind) WHERE state = 'active';
CREATE UNIQUE INDEX sessions_idempotency_key ON sessions (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX sessions_user ON sessions (policy, user_id, started_at) WHERE user_id IS NOT NULL;

CREATE TRIGGER sessions_canonical_times_on_insert AFTER INSERT ON sessions
WHEN NEW.started_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.started_at)
  OR NEW.deadline IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.deadline)
BEGIN
    UPDATE sessions
       SET started_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.started_at),
           deadline   = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.deadline)
     WHERE rowid = NEW.rowid;
END;

CREATE TRIGGER sessions_canonical_times_on_update AFTER UPDATE OF started_at, deadline ON sessions
WHEN NEW.started_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.started_at)
  OR NEW.deadline IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.deadline)
BEGIN
    UPDATE sessions
       SET started_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.started_at),
           deadline   = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.deadline)
     WHERE rowid = NEW.rowid;
END;

CREATE TRIGGER sessions_ended_at AFTER UPDATE OF state ON sessions
WHEN NEW.state IN ('enforced', 'already_ended', 'failed', 'cancelled', 'shadowed', 'expired')
 AND NEW.ended_at IS NULL
BEGIN
    UPDATE sessions SET ended_at = NEW.updated_at WHERE rowid = NEW.rowid;
END;

CREATE TRIGGER sessions_warnings_obsolete AFTER UPDATE OF state ON sessions
WHEN OLD.state = 'active' AND NEW.state <> 'active'
BEGIN
    UPDATE notifications SET state = 'obsolete', updated_at = NEW.updated_at
     WHERE session_id = NEW.id AND state = 'pending' AND event = 'warning';
END;

CREATE TRIGGER sessions_outcome_notification AFTER UPDATE OF state ON sessions
WHEN NEW.state IN ('enforced', 'already_ended', 'failed', 'shadowed', 'expired') AND OLD.state <> NEW.state
 AND (SELECT outcomes FROM notification_settings WHERE id = 1) = 1
BEGIN
    INSERT INTO notifications (delivery_id, session_id, event, detail, due_at, created_at, updated_at)
    VALUES (lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
            substr(lower(hex(randomblob(2))), 2) || '-' ||
            substr('89ab', 1 + (abs(random()) % 4), 1) ||
            substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))),
            NEW.id, NEW.state, NEW.detail, NEW.updated_at, NEW.updated_at, NEW.updated_at);
END;

-- Sessions per state, kept up to date by the triggers below on every write,
-- whoever makes it (the daemon, the CLI, an app's own SQL). `/metrics` and
-- progress displays read these few rows instead of counting the table,
-- which at a million sessions is a scan of every row on every scrape.
CREATE TABLE session_counts (
    state TEXT PRIMARY KEY NOT NULL,
    n     INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO session_counts (state, n) SELECT state, count(*) FROM sessions GROUP BY state;

CREATE TRIGGER session_counts_insert AFTER INSERT ON sessions
BEGIN
    INSERT INTO session_counts (state, n) VALUES (NEW.state, 1)
        ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER session_counts_update AFTER UPDATE OF state ON sessions
WHEN OLD.state IS NOT NEW.state
BEGIN
    UPDATE session_counts SET n = n - 1 WHERE state = OLD.state;
    INSERT INTO session_counts (state, n) VALUES (NEW.state, 1)
        ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER session_counts_delete AFTER DELETE ON sessions
BEGIN
    UPDATE session_counts SET n = n - 1 WHERE state = OLD.state;
END;

-- A session's id is how everything else names it (the audit log, the
-- outbox, the API, a rejection): plain SQL that sets one must set text. Any
-- other column may hold a value of the wrong type; the daemon then fails
-- that row alone, with the reason, and goes on.
CREATE TRIGGER sessions_id_is_text BEFORE INSERT ON sessions
WHEN typeof(NEW.id) != 'text'
BEGIN
    SELECT RAISE(ABORT, 'sessions.id must be text (a UUID); leave it out to get one');
END;

CREATE TRIGGER sessions_id_stays_text BEFORE UPDATE OF id ON sessions
WHEN typeof(NEW.id) != 'text'
BEGIN
    SELECT RAISE(ABORT, 'sessions.id must be text (a UUID)');
END;

-- Signed heads of the audit chain, when retention.checkpoint_key is set:
-- every few minutes the daemon records the last row's id and hash, signed
-- with the key (and logs it, for a copy outside the database). `audit
-- verify` then finds a row rewritten, or a tail cut off, behind any head.
CREATE TABLE audit_heads (
    id        INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    last_id   INTEGER NOT NULL,
    last_hash TEXT NOT NULL,
    signature TEXT NOT NULL
);

-- As in schema v8.
CREATE VIEW budget_usage AS
SELECT id AS session_id, policy, user_id, started_at, ended_at, state,
       max(0, CAST(round((julianday(coalesce(ended_at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))
                          - julianday(started_at)) * 86400000) AS INTEGER)) AS used_ms
  FROM sessions
 WHERE user_id IS NOT NULL AND deadline IS NOT NULL;
