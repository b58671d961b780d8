-- A running session's granted time counts against its user's budget from
-- the start (up to its deadline less the grace; given back if it ends
-- early), so two sessions of one user that run at once share what was left
-- instead of each getting all of it. The view shows the part still booked
-- beside the part used (a new last column: CREATE OR REPLACE keeps the
-- others as they are).
CREATE OR REPLACE VIEW budget_usage AS
SELECT id AS session_id, policy, user_id, started_at, ended_at, state,
       greatest(0, round(extract(epoch FROM (coalesce(ended_at, now()) - started_at)) * 1000))::bigint AS used_ms,
       CASE WHEN ended_at IS NULL
            THEN greatest(0::bigint,
                          round(extract(epoch FROM (deadline - greatest(started_at, now()))) * 1000)::bigint - grace_ms)
            ELSE 0::bigint END AS booked_ms
  FROM sessions
 WHERE user_id IS NOT NULL AND deadline IS NOT NULL;
