-- 0005: billing exports (Stripe meter events, OpenMeter CloudEvents) from the ledger.
-- ingested_at is when a row reached the ledger, not when the request happened. SQLite
-- cannot add a column with a time default: the ledger's INSERT stamps it (store/sqlite.py),
-- in the text format of every other time here (microseconds, so times compare as text).
ALTER TABLE litellm_usage ADD COLUMN ingested_at text;
UPDATE litellm_usage SET ingested_at = strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z' WHERE ingested_at IS NULL;
CREATE INDEX IF NOT EXISTS litellm_usage_ingested ON litellm_usage (ingested_at);

ALTER TABLE tallygate_tenants ADD COLUMN stripe_customer_id text;

CREATE TABLE IF NOT EXISTS ledger_export_cursors (
    name             text PRIMARY KEY,
    exported_before  text,
    updated_at       text
);

CREATE TABLE IF NOT EXISTS billing_export_state (
    name             text PRIMARY KEY,
    ledger_tag       text NOT NULL,
    window_seconds   integer NOT NULL,
    since            text NOT NULL,
    closed_before    text,
    scanned_to       text,
    last_request_id  text,
    updated_at       text
);

CREATE TABLE IF NOT EXISTS billing_export_windows (
    name               text NOT NULL,
    tenant_id          text NOT NULL,
    window_start       text NOT NULL,
    cost_usd           text NOT NULL DEFAULT '0',
    prompt_tokens      integer NOT NULL DEFAULT 0,
    completion_tokens  integer NOT NULL DEFAULT 0,
    total_tokens       integer NOT NULL DEFAULT 0,
    requests           integer NOT NULL DEFAULT 0,
    seq                integer NOT NULL DEFAULT 0,
    updated_at         text,
    PRIMARY KEY (name, tenant_id, window_start)
);

CREATE TABLE IF NOT EXISTS billing_export_tenants (
    name        text NOT NULL,
    tenant_id   text NOT NULL,
    cost_usd    text NOT NULL DEFAULT '0',
    micro_usd   integer NOT NULL DEFAULT 0,
    tokens      integer NOT NULL DEFAULT 0,
    updated_at  text,
    PRIMARY KEY (name, tenant_id)
);

CREATE TABLE IF NOT EXISTS billing_export_outbox (
    identifier    text PRIMARY KEY,
    name          text NOT NULL,
    tenant_id     text NOT NULL,
    window_start  text NOT NULL,
    seq           integer NOT NULL,
    event_name    text NOT NULL,
    value         integer NOT NULL,
    customer_id   text,
    created_at    text,
    sent_at       text,
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text
);
CREATE INDEX IF NOT EXISTS billing_export_outbox_unsent ON billing_export_outbox (name, window_start)
    WHERE sent_at IS NULL;

INSERT INTO tallygate_schema_migrations (version, name) VALUES (5, 'billing_export')
    ON CONFLICT (version) DO NOTHING;
