-- callwarden schema v4: what provider webhooks have said about rooms and
-- participants, so duplicate and out-of-order events are recognised.
--
-- One row per (provider, room, participant); participant '' stands for the
-- room itself. last_event_ms is the provider's own event time: an event
-- older than what is recorded changes nothing.
CREATE TABLE presence (
    provider      TEXT NOT NULL,
    room_kind     TEXT NOT NULL,
    room_id       TEXT NOT NULL,
    participant   TEXT NOT NULL,
    last_event_ms INTEGER NOT NULL,
    last_event    TEXT NOT NULL,
    PRIMARY KEY (provider, room_kind, room_id, participant)
) WITHOUT ROWID;

-- Webhooks end or open sessions by room; find a room's active sessions.
CREATE INDEX sessions_active_room ON sessions (room_id, room_kind) WHERE state = 'active';
