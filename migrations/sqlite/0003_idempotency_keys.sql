-- callwarden schema v3: idempotency keys for the HTTP session API.
--
-- A client that retries POST /v1/sessions with the same idempotency_key gets
-- the session the first request created instead of a second one.
ALTER TABLE sessions ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX sessions_idempotency_key ON sessions (idempotency_key) WHERE idempotency_key IS NOT NULL;
