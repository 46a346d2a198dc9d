-- tallygate ledger schema (generated from src/tallygate/migrations/postgres; safe to run twice)
-- psql "postgres://USER:PASSWORD@HOST:PORT/DB" -f db/schema.sql

-- 0001: the usage ledger, one row per request (the deployment guide's litellm_usage).
CREATE TABLE IF NOT EXISTS tallygate_schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS litellm_usage (
    request_id         text PRIMARY KEY,
    created_at         timestamptz NOT NULL,
    tenant_id          text NOT NULL,
    api_key_id         text,
    model              text NOT NULL,
    upstream_model     text,
    provider           text NOT NULL,
    endpoint           text NOT NULL,
    stream             boolean NOT NULL DEFAULT false,
    status_code        integer NOT NULL,
    status             text NOT NULL,
    prompt_tokens      integer NOT NULL DEFAULT 0,
    completion_tokens  integer NOT NULL DEFAULT 0,
    total_tokens       integer NOT NULL DEFAULT 0,
    cached_tokens      integer NOT NULL DEFAULT 0,
    reasoning_tokens   integer NOT NULL DEFAULT 0,
    cost_usd           numeric(20, 12) NOT NULL DEFAULT 0,
    price_source       text NOT NULL,
    usage_source       text NOT NULL,
    latency_ms         double precision NOT NULL,
    ttft_ms            double precision
);

CREATE INDEX IF NOT EXISTS litellm_usage_tenant_time ON litellm_usage (tenant_id, created_at);
CREATE INDEX IF NOT EXISTS litellm_usage_time ON litellm_usage (created_at);
CREATE INDEX IF NOT EXISTS litellm_usage_key_time ON litellm_usage (api_key_id, created_at)
    WHERE api_key_id IS NOT NULL;

INSERT INTO tallygate_schema_migrations (version, name) VALUES (1, 'usage')
    ON CONFLICT (version) DO NOTHING;

-- 0002: tenant keys (stored only as a hash) and per-tenant limits.
CREATE TABLE IF NOT EXISTS tallygate_keys (
    key_id         text PRIMARY KEY,
    key_hash       text NOT NULL UNIQUE,
    key_prefix     text NOT NULL,
    tenant_id      text NOT NULL,
    name           text,
    rpm_limit      integer,
    tpm_limit      integer,
    budget_usd     numeric(20, 12),
    budget_period  text NOT NULL DEFAULT 'month',
    models         text,
    expires_at     timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz
);
CREATE INDEX IF NOT EXISTS tallygate_keys_updated ON tallygate_keys (updated_at);
CREATE INDEX IF NOT EXISTS tallygate_keys_tenant ON tallygate_keys (tenant_id);

CREATE TABLE IF NOT EXISTS tallygate_tenants (
    tenant_id      text PRIMARY KEY,
    rpm_limit      integer,
    tpm_limit      integer,
    budget_usd     numeric(20, 12),
    budget_period  text NOT NULL DEFAULT 'month',
    models         text,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

INSERT INTO tallygate_schema_migrations (version, name) VALUES (2, 'keys_tenants')
    ON CONFLICT (version) DO NOTHING;

-- 0003: the parts of usage priced apart (cache writes, audio and image tokens, fee-carrying
-- tool calls), the service tier and the price data version of each row.
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS cache_write_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS cache_write_1h_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS audio_input_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS audio_output_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS image_input_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS image_output_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS web_search_calls integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS file_search_calls integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS service_tier text;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS price_version text;

INSERT INTO tallygate_schema_migrations (version, name) VALUES (3, 'usage_dimensions')
    ON CONFLICT (version) DO NOTHING;

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

-- 0006: prepaid credits. The credit ledger is append-only: top-ups and adjustments here,
-- usage debits are the usage ledger's own rows (cost_usd since the tenant became prepaid).
-- A tenant is prepaid from its account's prepaid_since; tenants without one are postpaid.
CREATE TABLE IF NOT EXISTS tallygate_credit_accounts (
    tenant_id      text PRIMARY KEY,
    prepaid_since  timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS tallygate_credit_entries (
    entry_id       text PRIMARY KEY,
    tenant_id      text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('topup', 'adjustment')),
    amount_usd     numeric(20, 12) NOT NULL,
    reference      text NOT NULL,
    note           text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, reference)
);

INSERT INTO tallygate_schema_migrations (version, name) VALUES (6, 'credits')
    ON CONFLICT (version) DO NOTHING;

-- 0007: the tenant that created each response, conversation and file id the gateway saw
-- created: only that tenant may read, cancel or delete it.
CREATE TABLE IF NOT EXISTS tallygate_object_owners (
    object_id   text PRIMARY KEY,
    kind        text NOT NULL,
    tenant_id   text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS tallygate_object_owners_tenant ON tallygate_object_owners (tenant_id, kind);

INSERT INTO tallygate_schema_migrations (version, name) VALUES (7, 'object_owners')
    ON CONFLICT (version) DO NOTHING;
