-- A running session's granted time counts against its user's budget from
-- the start (up to its deadline less the grace; given back if it ends
-- early), so two sessions of one user that run at once share what was left
-- instead of each getting all of it. The view shows the part still booked
-- beside the part used.
--   SELECT user_id, (sum(used_ms) + sum(booked_ms)) / 60000.0 AS minutes
--     FROM budget_usage WHERE policy = 'paid-chat'
--      AND started_at >= '2026-11-22T00:00:00Z' GROUP BY user_id;
DROP VIEW budget_usage;

CREATE VIEW budget_usage AS
SELECT id AS session_id, policy, user_id, started_at, ended_at, state,
       max(0, CAST(round((julianday(coalesce(ended_at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))
                          - julianday(started_at)) * 86400000) AS INTEGER)) AS used_ms,
       CASE WHEN ended_at IS NULL
            THEN max(0, CAST(round((julianday(deadline) - max(julianday(started_at), julianday('now')))
                                   * 86400000) AS INTEGER) - grace_ms)
            ELSE 0 END AS booked_ms
  FROM sessions
 WHERE user_id IS NOT NULL AND deadline IS NOT NULL;
