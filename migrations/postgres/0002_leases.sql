-- Several instances on one database. Each quota bucket (a provider of the
-- configuration) and the once-per-deployment work (`maintenance`) is led
-- by one instance at a time, under a lease: a row whose times are the
-- database server's (clock_timestamp()), so no instance's clock decides
-- who leads. A logged table (not UNLOGGED): it survives a crash and is
-- replicated, and it is written about once a second per bucket.
CREATE SEQUENCE lease_terms;
CREATE TABLE leases (
    bucket      text COLLATE "C" PRIMARY KEY,
    holder      text NOT NULL,
    -- From lease_terms: a later grant has a larger term, also after the
    -- holder itself lost and re-took the lease.
    term        bigint NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- The term a session was claimed under (0: never claimed under a lease).
-- Attempts, outcomes and releases are written only while the row still
-- carries the writer's term; a new leader re-stamps the bucket's rows it
-- takes over, so a deposed leader's writes match nothing.
ALTER TABLE sessions ADD COLUMN claim_term bigint NOT NULL DEFAULT 0;
CREATE INDEX sessions_enforcing_by_bucket ON sessions (provider, claim_term) WHERE state = 'enforcing';
-- The next deadline and the claim, per bucket.
CREATE INDEX sessions_due_by_bucket ON sessions (provider, deadline) WHERE state = 'active';
