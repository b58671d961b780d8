-- callwarden schema v8: warnings and outcome notifications, grace, and
-- per-user budgets.

-- The part of `deadline` that is the policy's grace: the booked time ends at
-- deadline - grace_ms; enforcement happens at deadline.
ALTER TABLE sessions ADD COLUMN grace_ms INTEGER NOT NULL DEFAULT 0;

-- When the session stopped counting against a budget: set once, when it
-- reaches a final state (enforced, already_ended, failed, cancelled,
-- shadowed). NULL while it runs.
ALTER TABLE sessions ADD COLUMN ended_at TEXT;

UPDATE sessions SET ended_at = updated_at
 WHERE state IN ('enforced', 'already_ended', 'failed', 'cancelled', 'shadowed');

CREATE TRIGGER sessions_ended_at AFTER UPDATE OF state ON sessions
WHEN NEW.state IN ('enforced', 'already_ended', 'failed', 'cancelled', 'shadowed')
 AND NEW.ended_at IS NULL
BEGIN
    UPDATE sessions SET ended_at = NEW.updated_at WHERE rowid = NEW.rowid;
END;

-- Budgets sum a user's sessions under a policy; this finds them.
CREATE INDEX sessions_user ON sessions (policy, user_id, started_at) WHERE user_id IS NOT NULL;

-- The outbox of notifications to the app (`notifications.url`): a warning
-- before a deadline, or the outcome of an enforcement. Delivered at least
-- once, in due order, by the daemon's notifier; the payload is built at
-- delivery from the session, so a warning says how much time is left then.
CREATE TABLE notifications (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Sent as Callwarden-Delivery, so that receivers can drop repeats.
    delivery_id TEXT NOT NULL UNIQUE,
    session_id  TEXT NOT NULL,
    -- warning, enforced, already_ended, failed, shadowed, budget_exhausted
    event       TEXT NOT NULL,
    -- For a warning: how long before the deadline it is meant to arrive.
    warn_before_ms INTEGER,
    -- The outcome's detail, for outcome events.
    detail      TEXT,
    -- When to (re)try: the warning point, or the next retry.
    due_at      TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'delivered', 'failed', 'obsolete')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX notifications_due ON notifications (due_at) WHERE state = 'pending';
CREATE INDEX notifications_session ON notifications (session_id) WHERE state = 'pending';

-- Whether enforcement outcomes are queued for delivery: the daemon sets it
-- from `notifications:` at start and on reload, so outcomes recorded by any
-- writer (the daemon, the CLI) are queued in the same transaction.
CREATE TABLE notification_settings (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    outcomes INTEGER NOT NULL DEFAULT 0 CHECK (outcomes IN (0, 1))
);
INSERT INTO notification_settings (id, outcomes) VALUES (1, 0);

-- A session that leaves 'active' (claimed, ended, extended no more) needs
-- no more warnings.
CREATE TRIGGER sessions_warnings_obsolete AFTER UPDATE OF state ON sessions
WHEN OLD.state = 'active' AND NEW.state <> 'active'
BEGIN
    UPDATE notifications SET state = 'obsolete', updated_at = NEW.updated_at
     WHERE session_id = NEW.id AND state = 'pending' AND event = 'warning';
END;

-- An enforcement outcome is queued for the app in the transaction that
-- records it.
CREATE TRIGGER sessions_outcome_notification AFTER UPDATE OF state ON sessions
WHEN NEW.state IN ('enforced', 'already_ended', 'failed', 'shadowed') AND OLD.state <> NEW.state
 AND (SELECT outcomes FROM notification_settings WHERE id = 1) = 1
BEGIN
    INSERT INTO notifications (delivery_id, session_id, event, detail, due_at, created_at, updated_at)
    VALUES (lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
            substr(lower(hex(randomblob(2))), 2) || '-' ||
            substr('89ab', 1 + (abs(random()) % 4), 1) ||
            substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))),
            NEW.id, NEW.state, NEW.detail, NEW.updated_at, NEW.updated_at, NEW.updated_at);
END;

-- Budget use, one row per participant session: how long it counted
-- (started_at to ended_at, or to now while it runs). Sum it over a window:
--   SELECT user_id, sum(used_ms) / 60000.0 AS minutes FROM budget_usage
--    WHERE policy = 'paid-chat' AND started_at >= '2026-11-22T00:00:00Z'
--    GROUP BY user_id;
-- (`callwarden budget USER` also clips sessions that straddle the window's
-- start, in the configured time zone.)
CREATE VIEW budget_usage AS
SELECT id AS session_id, policy, user_id, started_at, ended_at, state,
       max(0, CAST(round((julianday(coalesce(ended_at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))
                          - julianday(started_at)) * 86400000) AS INTEGER)) AS used_ms
  FROM sessions
 WHERE user_id IS NOT NULL AND deadline IS NOT NULL;
