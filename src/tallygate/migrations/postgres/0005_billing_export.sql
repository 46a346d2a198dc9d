-- 0005: billing exports (Stripe meter events, OpenMeter CloudEvents) from the ledger.
-- ingested_at is when a row reached the ledger (the insert's transaction start), not when
-- the request happened: a row flushed late (a buffered ledger after an outage) is found by
-- it. BRIN: the column grows with the table, so the index is tiny and cheap to keep up.
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS ingested_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX IF NOT EXISTS litellm_usage_ingested ON litellm_usage USING brin (ingested_at);

-- The tenant's Stripe customer (PUT /admin/tenants/{id} {"stripe_customer_id": "cus_..."}).
ALTER TABLE tallygate_tenants ADD COLUMN IF NOT EXISTS stripe_customer_id text;

-- What each export has covered: retention keeps the ledger at or after min(exported_before).
CREATE TABLE IF NOT EXISTS ledger_export_cursors (
    name             text PRIMARY KEY,
    exported_before  timestamptz,
    updated_at       timestamptz
);

-- Per export: its window size, the windows closed so far, how far the ledger was scanned
-- by ingested_at (OpenMeter: the last row sent, ingested_at then request_id). ledger_tag:
-- random, in every meter event identifier, so two ledgers (staging and production) that
-- share a Stripe account never send the same identifier for different usage.
CREATE TABLE IF NOT EXISTS billing_export_state (
    name             text PRIMARY KEY,
    ledger_tag       text NOT NULL,
    window_seconds   integer NOT NULL,
    since            timestamptz NOT NULL,
    closed_before    timestamptz,
    scanned_to       timestamptz,
    last_request_id  text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Per export, tenant and window: what of the ledger's window was accounted (a late row
-- makes the ledger's sums pass these: the difference is a top-up event, seq + 1).
CREATE TABLE IF NOT EXISTS billing_export_windows (
    name               text NOT NULL,
    tenant_id          text NOT NULL,
    window_start       timestamptz NOT NULL,
    cost_usd           numeric(30, 12) NOT NULL DEFAULT 0,
    prompt_tokens      bigint NOT NULL DEFAULT 0,
    completion_tokens  bigint NOT NULL DEFAULT 0,
    total_tokens       bigint NOT NULL DEFAULT 0,
    requests           bigint NOT NULL DEFAULT 0,
    seq                integer NOT NULL DEFAULT 0,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, tenant_id, window_start)
);

-- Per export and tenant: the exact cost accounted and the micro-USD exported for it; the
-- difference (under a micro-dollar) is carried into the tenant's next event.
CREATE TABLE IF NOT EXISTS billing_export_tenants (
    name        text NOT NULL,
    tenant_id   text NOT NULL,
    cost_usd    numeric(30, 12) NOT NULL DEFAULT 0,
    micro_usd   bigint NOT NULL DEFAULT 0,
    tokens      bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, tenant_id)
);

-- Meter events written in the transaction that accounts them, then sent; sent_at set once
-- Stripe has them. customer_id NULL: the tenant has no Stripe customer yet (held).
CREATE TABLE IF NOT EXISTS billing_export_outbox (
    identifier    text PRIMARY KEY,
    name          text NOT NULL,
    tenant_id     text NOT NULL,
    window_start  timestamptz NOT NULL,
    seq           integer NOT NULL,
    event_name    text NOT NULL,
    value         bigint NOT NULL,
    customer_id   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz,
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text
);
CREATE INDEX IF NOT EXISTS billing_export_outbox_unsent ON billing_export_outbox (name, window_start)
    WHERE sent_at IS NULL;

INSERT INTO tallygate_schema_migrations (version, name) VALUES (5, 'billing_export')
    ON CONFLICT (version) DO NOTHING;
