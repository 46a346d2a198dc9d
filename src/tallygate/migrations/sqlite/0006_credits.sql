-- 0006: prepaid credits. The credit ledger is append-only: top-ups and adjustments here,
-- usage debits are the usage ledger's own rows (cost_usd since the tenant became prepaid).
-- A tenant is prepaid from its account's prepaid_since; tenants without one are postpaid.
-- amount_usd is TEXT holding an exact decimal, summed with dsum.
CREATE TABLE IF NOT EXISTS tallygate_credit_accounts (
    tenant_id      text PRIMARY KEY,
    prepaid_since  text NOT NULL
);

CREATE TABLE IF NOT EXISTS tallygate_credit_entries (
    entry_id       text PRIMARY KEY,
    tenant_id      text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('topup', 'adjustment')),
    amount_usd     text NOT NULL,
    reference      text NOT NULL,
    note           text,
    created_at     text NOT NULL,
    UNIQUE (tenant_id, reference)
);

INSERT INTO tallygate_schema_migrations (version, name) VALUES (6, 'credits')
    ON CONFLICT (version) DO NOTHING;
