-- callwarden schema v2: Azure Communication Services.
--
-- * room_kind 'call': an ACS call connection id.
-- * state 'accepted': the provider accepted the request and will report the
--   outcome later (ACS with a callback URL); it becomes enforced or failed
--   when the outcome arrives.
-- * repeatability_id / first_sent_at: ACS's Repeatability-Request-ID and
--   Repeatability-First-Sent, chosen once per enforcement and stored before
--   the first try, so retries and post-crash repeats are recognised as the
--   same request and never act twice.
--
-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt.

CREATE TABLE sessions_v2 (
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
                    ('active', 'enforcing', 'accepted', 'enforced', 'already_ended', 'failed', 'cancelled')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    extended_ms INTEGER NOT NULL DEFAULT 0,
    detail      TEXT,
    repeatability_id TEXT,
    first_sent_at    TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK (julianday(started_at) IS NOT NULL),
    CHECK (deadline IS NULL OR julianday(deadline) IS NOT NULL)
);

INSERT INTO sessions_v2 (id, policy, provider, room_id, room_kind, user_id, started_at, deadline, state,
                         attempts, extended_ms, detail, created_at, updated_at)
SELECT id, policy, provider, room_id, room_kind, user_id, started_at, deadline, state,
       attempts, extended_ms, detail, created_at, updated_at
FROM sessions;

DROP TABLE sessions;
ALTER TABLE sessions_v2 RENAME TO sessions;

CREATE INDEX sessions_due ON sessions (deadline) WHERE state = 'active';
CREATE INDEX sessions_enforcing ON sessions (deadline) WHERE state = 'enforcing';
CREATE INDEX sessions_unadopted ON sessions (created_at)
    WHERE state = 'active' AND (provider IS NULL OR deadline IS NULL);
CREATE INDEX sessions_state ON sessions (state, created_at);
-- Outcome reports name the call; find its sessions awaiting confirmation.
CREATE INDEX sessions_accepted ON sessions (room_id) WHERE state = 'accepted';

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
