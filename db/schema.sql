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
