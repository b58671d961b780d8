-- callwarden schema v1: sessions (the queue) and audit_log (the record).
--
-- Times are UTC text 'YYYY-MM-DDTHH:MM:SS.sssZ', which sorts in time order.
-- Writers may give any time SQLite's date functions understand (RFC 3339 with
-- 'Z' or an offset, or 'YYYY-MM-DD HH:MM:SS' taken as UTC); the triggers below
-- rewrite it to the canonical form so the deadline index stays in time order.

CREATE TABLE sessions (
    -- A UUID. Plain-SQL writers may omit it: the default is a random v4 UUID.
    id          TEXT PRIMARY KEY NOT NULL DEFAULT (
                    lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
                    substr(lower(hex(randomblob(2))), 2) || '-' ||
                    substr('89ab', 1 + (abs(random()) % 4), 1) ||
                    substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6)))),
    policy      TEXT NOT NULL,
    -- The provider's name in the config. NULL in a row inserted with plain
    -- SQL: the daemon fills it from the policy when it adopts the row.
    provider    TEXT,
    -- Decimal text for numeric TRTC rooms; the id itself for string rooms.
    room_id     TEXT NOT NULL,
    room_kind   TEXT NOT NULL CHECK (room_kind IN ('numeric', 'string')),
    -- NULL for a session that covers the whole room.
    user_id     TEXT,
    started_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- NULL in a plain-SQL row means started_at + the policy's max_duration.
    deadline    TEXT,
    state       TEXT NOT NULL DEFAULT 'active' CHECK (state IN
                    ('active', 'enforcing', 'enforced', 'already_ended', 'failed', 'cancelled')),
    -- Provider calls made for this session so far, across restarts.
    attempts    INTEGER NOT NULL DEFAULT 0,
    -- Total time added by `session extend`, in milliseconds.
    extended_ms INTEGER NOT NULL DEFAULT 0,
    -- Why a session failed or was refused; NULL otherwise.
    detail      TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK (julianday(started_at) IS NOT NULL),
    CHECK (deadline IS NULL OR julianday(deadline) IS NOT NULL)
);

-- The queue: every active session by deadline. The scheduler's only record
-- of what is due next.
CREATE INDEX sessions_due ON sessions (deadline) WHERE state = 'active';
-- Sessions whose enforcement was under way; re-queued after a crash.
CREATE INDEX sessions_enforcing ON sessions (deadline) WHERE state = 'enforcing';
-- Rows inserted with plain SQL that the daemon has not adopted yet.
CREATE INDEX sessions_unadopted ON sessions (created_at)
    WHERE state = 'active' AND (provider IS NULL OR deadline IS NULL);
CREATE INDEX sessions_state ON sessions (state, created_at);

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

-- Append-only record of everything that happened to every session.
CREATE TABLE audit_log (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    at                  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    session_id          TEXT,
    -- registered, rejected, extended, cancelled, recovered, attempt, retry,
    -- enforced, already_ended, failed, interrupted
    event               TEXT NOT NULL,
    provider            TEXT,
    -- The provider API called: DismissRoom, RemoveUserByStrRoomId, ...
    action              TEXT,
    attempt             INTEGER,
    -- success, already_ended, retryable, fatal (provider answers only)
    outcome             TEXT,
    http_status         INTEGER,
    provider_request_id TEXT,
    error_code          TEXT,
    detail              TEXT,
    -- The HTTP call's duration.
    latency_ms          INTEGER,
    -- When the call left, minus the session's deadline.
    lateness_ms         INTEGER
);

CREATE INDEX audit_log_session ON audit_log (session_id, id);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE TRIGGER audit_log_is_append_only_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_is_append_only_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
