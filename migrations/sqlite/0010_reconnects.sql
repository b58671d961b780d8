-- Reconnects (TRTC): a participant who re-enters shortly after a timed-out
-- exit, or a room re-created shortly after it emptied, resumes the session
-- the exit ended, with its deadline. Finding that session by room needs an
-- index over the sessions webhooks ended; the presence table records why a
-- participant left (`left_timeout`), which needs no change of its own.
CREATE INDEX sessions_room_cancelled ON sessions (room_id, room_kind, updated_at) WHERE state = 'cancelled';
