-- Reconnects (TRTC): a participant who re-enters shortly after a timed-out
-- exit, or a room re-created shortly after it emptied, resumes the session
-- the exit ended, with its deadline. Finding that session by room needs an
-- index over the sessions webhooks ended; the presence table records why a
-- participant left (`left_timeout`), which needs no change of its own.
CREATE INDEX sessions_room_cancelled ON sessions (room_id, room_kind, updated_at) WHERE state = 'cancelled';

-- The session list (API and CLI) pages by (deadline, created_at, id)
-- without a state filter too: an index in that order, so no page sorts the
-- whole table. (With a state filter, sessions_state serves.)
CREATE INDEX sessions_by_deadline ON sessions (deadline, created_at, id);

-- Retention deletes settled sessions by age. Through sessions_state each
-- chunk walked every settled session it keeps (by deadline) to find old
-- ones; this index finds the oldest first, so a chunk reads only what it
-- deletes.
CREATE INDEX sessions_settled ON sessions (updated_at)
    WHERE state IN ('enforced', 'already_ended', 'failed', 'cancelled', 'shadowed', 'expired');
