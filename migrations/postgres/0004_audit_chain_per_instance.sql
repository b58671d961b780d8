-- One audit chain per daemon instance, so that several instances append to
-- the log without waiting for each other. A connection names its chain in
-- the setting `callwarden.chain` (the daemon sets it to its instance name
-- when it connects); a connection that names none (the CLI, `db copy`, an
-- app's own SQL) appends to the chain ''. Every chain is hash-linked on its
-- own, its tip in `audit_tips`, its checkpoints and signed heads marked
-- with it; ids come from one sequence, so they stay unique and ordered
-- within each chain, but are no longer consecutive (`audit verify` follows
-- each chain's links instead).
CREATE FUNCTION callwarden_chain() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN coalesce(current_setting('callwarden.chain', true), '');

-- Existing rows are the chain '' (the default is set after the column is
-- filled, so a daemon migrating does not claim them for its own chain).
ALTER TABLE audit_log ADD COLUMN chain text COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE audit_log ALTER COLUMN chain SET DEFAULT callwarden_chain();
CREATE INDEX audit_log_chain ON audit_log (chain, id);

CREATE TABLE audit_tips (
    chain     text COLLATE "C" PRIMARY KEY,
    last_id   bigint NOT NULL,
    last_hash text NOT NULL
);
INSERT INTO audit_tips (chain, last_id, last_hash) SELECT '', last_id, last_hash FROM audit_tip;
DROP TABLE audit_tip;

CREATE SEQUENCE audit_log_ids;
SELECT setval('audit_log_ids',
              greatest(coalesce((SELECT max(id) FROM audit_log), 0),
                       (SELECT last_id FROM audit_tips WHERE chain = '')) + 1, false);

ALTER TABLE audit_checkpoints ADD COLUMN chain text COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE audit_heads ADD COLUMN chain text COLLATE "C" NOT NULL DEFAULT '';

CREATE OR REPLACE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND OLD.id <= (SELECT coalesce(max(last_id), 0) FROM audit_checkpoints WHERE chain = OLD.chain) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (rows may be pruned only behind a retention checkpoint of their chain)';
END $$;
