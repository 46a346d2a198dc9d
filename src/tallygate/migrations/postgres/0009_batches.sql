-- 0009: the batches created through the gateway (POST /v1/batches): who created each, and
-- whether its output lines are in the ledger yet (settled_at; claimed_until: a reader at work,
-- so two instances do not read the same files at once). A settled batch is never read
-- again, so a restart does not reprocess it; a second reading would add nothing anyway (each
-- line's request id is derived from the batch id and its custom_id).
CREATE TABLE IF NOT EXISTS tallygate_batches (
    batch_id        text PRIMARY KEY,
    tenant_id       text NOT NULL,
    api_key_id      text,
    endpoint        text NOT NULL,
    input_file_id   text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    status          text NOT NULL,
    claimed_until   timestamptz,
    settled_at      timestamptz,
    lines_recorded  integer NOT NULL DEFAULT 0
);
-- the poller's list: batches whose lines are not recorded yet
CREATE INDEX IF NOT EXISTS tallygate_batches_unsettled ON tallygate_batches (created_at) WHERE settled_at IS NULL;

INSERT INTO tallygate_schema_migrations (version, name) VALUES (9, 'batches')
    ON CONFLICT (version) DO NOTHING;
