-- 0002: tenant keys (stored only as a hash) and per-tenant limits.
CREATE TABLE IF NOT EXISTS tallygate_keys (
    key_id         text PRIMARY KEY,
    key_hash       text NOT NULL UNIQUE,
    key_prefix     text NOT NULL,
    tenant_id      text NOT NULL,
    name           text,
    rpm_limit      integer,
    tpm_limit      integer,
    budget_usd     text,
    budget_period  text NOT NULL DEFAULT 'month',
    models         text,
    expires_at     text,
    created_at     text NOT NULL,
    updated_at     text NOT NULL,
    revoked_at     text
);
CREATE INDEX IF NOT EXISTS tallygate_keys_updated ON tallygate_keys (updated_at);

CREATE TABLE IF NOT EXISTS tallygate_tenants (
    tenant_id      text PRIMARY KEY,
    rpm_limit      integer,
    tpm_limit      integer,
    budget_usd     text,
    budget_period  text NOT NULL DEFAULT 'month',
    models         text,
    updated_at     text NOT NULL
);

INSERT INTO tallygate_schema_migrations (version, name) VALUES (2, 'keys_tenants')
    ON CONFLICT (version) DO NOTHING;
