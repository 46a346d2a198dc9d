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
