-- 0001: the usage ledger. cost_usd is TEXT holding an exact decimal (SQLite has no
-- exact numeric type); sums go through the dsum() aggregate the ledger registers.
CREATE TABLE IF NOT EXISTS tallygate_schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE IF NOT EXISTS litellm_usage (
    request_id         text PRIMARY KEY,
    created_at         text NOT NULL,
    tenant_id          text NOT NULL,
    api_key_id         text,
    model              text NOT NULL,
    upstream_model     text,
    provider           text NOT NULL,
    endpoint           text NOT NULL,
    stream             integer NOT NULL DEFAULT 0,
    status_code        integer NOT NULL,
    status             text NOT NULL,
    prompt_tokens      integer NOT NULL DEFAULT 0,
    completion_tokens  integer NOT NULL DEFAULT 0,
    total_tokens       integer NOT NULL DEFAULT 0,
    cached_tokens      integer NOT NULL DEFAULT 0,
    reasoning_tokens   integer NOT NULL DEFAULT 0,
    cost_usd           text NOT NULL DEFAULT '0',
    price_source       text NOT NULL,
    usage_source       text NOT NULL,
    latency_ms         real NOT NULL,
    ttft_ms            real
);

CREATE INDEX IF NOT EXISTS litellm_usage_tenant_time ON litellm_usage (tenant_id, created_at);
CREATE INDEX IF NOT EXISTS litellm_usage_time ON litellm_usage (created_at);

INSERT INTO tallygate_schema_migrations (version, name) VALUES (1, 'usage')
    ON CONFLICT (version) DO NOTHING;
