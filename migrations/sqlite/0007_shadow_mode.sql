-- callwarden schema v7: shadow mode. A session under a `mode: shadow`
-- policy goes through everything but the provider call and ends 'shadowed',
-- so what a new limit would have done can be read before it is enforced.
-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt.

CREATE TABLE sessions_v7 (
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
                     'shadowed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    extended_ms INTEGER NOT NULL DEFAULT 0,
    detail      TEXT,
    repeatability_id TEXT,
    first_sent_at    TEXT,
    idempotency_key  TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK (julianday(started_at) IS NOT NULL),
    CHECK (deadline IS NULL OR julianday(deadline) IS NOT NULL)
);

INSERT INTO sessions_v7 (id, policy, provider, room_id, room_kind, user_id, started_at, deadline, state, attempts,
                         extended_ms, detail, repeatability_id, first_sent_at, idempotency_key, created_at, updated_at)
SELECT id, policy, provider, room_id, room_kind, user_id, started_at, deadline, state, attempts,
       extended_ms, detail, repeatability_id, first_sent_at, idempotency_key, created_at, updated_at
FROM sessions;

DROP TABLE sessions;
ALTER TABLE sessions_v7 RENAME TO sessions;

CREATE INDEX sessions_due ON sessions (deadline) WHERE state = 'active';
CREATE INDEX sessions_enforcing ON sessions (deadline) WHERE state = 'enforcing';
CREATE INDEX sessions_unadopted ON sessions (created_at)
    WHERE state = 'active' AND (provider IS NULL OR deadline IS NULL);
CREATE INDEX sessions_state ON sessions (state, created_at);
CREATE INDEX sessions_accepted ON sessions (room_id) WHERE state = 'accepted';
CREATE INDEX sessions_active_room ON sessions (room_id, room_kind) WHERE state = 'active';
CREATE UNIQUE INDEX sessions_idempotency_key ON sessions (idempotency_key) WHERE idempotency_key IS NOT NULL;

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
