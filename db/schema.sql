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

-- 0004: the ledger partitioned by UTC day on created_at, hourly rollups kept in the same
-- statement as each batch insert, export cursors that retention respects (docs/DESIGN.md,
-- "The ledger at scale"). Safe to run twice; converts a 0003 table without losing a row.

-- One day's partition, litellm_usage_pYYYYMMDD, covering [day, day + 1) in UTC. Rows of that
-- day that had landed in the DEFAULT partition (no partition existed when they were written)
-- are moved into it, so creating a partition late never fails and never loses a row.
CREATE OR REPLACE FUNCTION tallygate_ledger_partition(day date) RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    part text := 'litellm_usage_p' || to_char(day, 'YYYYMMDD');
    lo timestamptz := (day::timestamp AT TIME ZONE 'UTC');
    hi timestamptz := ((day + 1)::timestamp AT TIME ZONE 'UTC');
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN part;
    END IF;
    IF to_regclass('litellm_usage_default') IS NOT NULL
       AND EXISTS (SELECT 1 FROM litellm_usage_default WHERE created_at >= lo AND created_at < hi) THEN
        -- the default partition holds rows of this day: the new partition is filled first,
        -- then attached (attaching checks the default holds none of its range any more)
        EXECUTE format('CREATE TABLE %I (LIKE litellm_usage INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
        EXECUTE format(
            'WITH moved AS (DELETE FROM litellm_usage_default WHERE created_at >= %L AND created_at < %L RETURNING *) '
            'INSERT INTO %I SELECT * FROM moved', lo, hi, part);
        EXECUTE format('ALTER TABLE litellm_usage ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    ELSE
        EXECUTE format('CREATE TABLE %I PARTITION OF litellm_usage FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    END IF;
    RETURN part;
END
$fn$;

-- The partitions from yesterday to `days` days ahead (UTC); returns how many it created.
CREATE OR REPLACE FUNCTION tallygate_ledger_partitions_ahead(days integer DEFAULT 7) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    d date;
    made integer := 0;
BEGIN
    FOR d IN SELECT generate_series(today - 1, today + days, interval '1 day')::date LOOP
        IF to_regclass('litellm_usage_p' || to_char(d, 'YYYYMMDD')) IS NULL THEN
            PERFORM tallygate_ledger_partition(d);
            made := made + 1;
        END IF;
    END LOOP;
    RETURN made;
END
$fn$;

DO $convert$
DECLARE
    d date;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('litellm_usage')) IS DISTINCT FROM 'r' THEN
        RETURN;  -- already partitioned
    END IF;
    ALTER TABLE litellm_usage RENAME TO litellm_usage_0003;
    -- every column, type, default and NOT NULL of the old table whatever migrations added to it
    CREATE TABLE litellm_usage (LIKE litellm_usage_0003 INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
        PARTITION BY RANGE (created_at);
    -- a row of any date lands, whichever partitions exist (a replay of old log lines, a clock far off)
    CREATE TABLE litellm_usage_default PARTITION OF litellm_usage DEFAULT;
    FOR d IN SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM litellm_usage_0003 LOOP
        PERFORM tallygate_ledger_partition(d);
    END LOOP;
    PERFORM tallygate_ledger_partitions_ahead(7);
    INSERT INTO litellm_usage SELECT * FROM litellm_usage_0003;
    DROP TABLE litellm_usage_0003;  -- frees the index and key names for the new table
    -- the key includes the partition key (Postgres requires it): see DESIGN.md on the
    -- idempotency this keeps (a retried row carries its created_at unchanged)
    ALTER TABLE litellm_usage ADD CONSTRAINT litellm_usage_pkey PRIMARY KEY (request_id, created_at);
END
$convert$;

-- the indexes of 0001, on the partitioned table (each partition gets its own)
CREATE INDEX IF NOT EXISTS litellm_usage_tenant_time ON litellm_usage (tenant_id, created_at);
CREATE INDEX IF NOT EXISTS litellm_usage_time ON litellm_usage (created_at);
CREATE INDEX IF NOT EXISTS litellm_usage_key_time ON litellm_usage (api_key_id, created_at)
    WHERE api_key_id IS NOT NULL;

DO $ahead$ BEGIN PERFORM tallygate_ledger_partitions_ahead(7); END $ahead$;

-- Per tenant, key ('' for none: a key column may not be null), model and UTC hour: the sums
-- of every row the writer really added (store/rollups.py). Costs are exact numerics.
CREATE TABLE IF NOT EXISTS litellm_usage_hourly (
    tenant_id              text NOT NULL,
    api_key_id             text NOT NULL DEFAULT '',
    model                  text NOT NULL,
    hour                   timestamptz NOT NULL,
    requests               bigint NOT NULL DEFAULT 0,
    prompt_tokens          bigint NOT NULL DEFAULT 0,
    completion_tokens      bigint NOT NULL DEFAULT 0,
    total_tokens           bigint NOT NULL DEFAULT 0,
    cached_tokens          bigint NOT NULL DEFAULT 0,
    reasoning_tokens       bigint NOT NULL DEFAULT 0,
    cache_write_tokens     bigint NOT NULL DEFAULT 0,
    cache_write_1h_tokens  bigint NOT NULL DEFAULT 0,
    audio_input_tokens     bigint NOT NULL DEFAULT 0,
    audio_output_tokens    bigint NOT NULL DEFAULT 0,
    image_input_tokens     bigint NOT NULL DEFAULT 0,
    image_output_tokens    bigint NOT NULL DEFAULT 0,
    web_search_calls       bigint NOT NULL DEFAULT 0,
    file_search_calls      bigint NOT NULL DEFAULT 0,
    cost_usd               numeric NOT NULL DEFAULT 0,
    errors                 bigint NOT NULL DEFAULT 0,
    unpriced_requests      bigint NOT NULL DEFAULT 0,
    partial_requests       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, api_key_id, model, hour)
);
CREATE INDEX IF NOT EXISTS litellm_usage_hourly_hour ON litellm_usage_hourly (hour);
CREATE INDEX IF NOT EXISTS litellm_usage_hourly_key ON litellm_usage_hourly (api_key_id, hour)
    WHERE api_key_id <> '';

-- the rows already in the ledger when the rollups start (a no-op once they hold anything)
INSERT INTO litellm_usage_hourly
SELECT tenant_id, coalesce(api_key_id, ''), model, date_trunc('hour', created_at, 'UTC'), count(*),
       sum(prompt_tokens), sum(completion_tokens), sum(total_tokens), sum(cached_tokens), sum(reasoning_tokens),
       sum(cache_write_tokens), sum(cache_write_1h_tokens), sum(audio_input_tokens), sum(audio_output_tokens),
       sum(image_input_tokens), sum(image_output_tokens), sum(web_search_calls), sum(file_search_calls),
       sum(cost_usd), count(*) FILTER (WHERE status <> 'ok'), count(*) FILTER (WHERE price_source = 'unknown'),
       count(*) FILTER (WHERE price_source LIKE '%:partial')
FROM litellm_usage
WHERE NOT EXISTS (SELECT 1 FROM litellm_usage_hourly)
GROUP BY 1, 2, 3, 4;

-- The same sums per UTC day, for the days maintenance has sealed (store/rollups.py): whole
-- days before `sealed_before` (tallygate_ledger_state) are read from here. A row written
-- later for a sealed day (a replay) is added here by the writer's statement too.
CREATE TABLE IF NOT EXISTS litellm_usage_daily (LIKE litellm_usage_hourly INCLUDING DEFAULTS);
DO $daily$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'litellm_usage_daily_pkey') THEN
        ALTER TABLE litellm_usage_daily RENAME COLUMN hour TO day;
        ALTER TABLE litellm_usage_daily ADD CONSTRAINT litellm_usage_daily_pkey
            PRIMARY KEY (tenant_id, api_key_id, model, day);
    END IF;
END
$daily$;
CREATE INDEX IF NOT EXISTS litellm_usage_daily_day ON litellm_usage_daily (day);

-- How far each billing export has read: retention keeps every row at or after the
-- smallest exported_before (written by the exports, read by `tallygate ledger retention`).
CREATE TABLE IF NOT EXISTS ledger_export_cursors (
    name             text PRIMARY KEY,
    exported_before  timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- What ledger maintenance remembers: `retained_from`, the start of the rows retention kept
-- (rollups before it are no longer rebuilt from rows, which are gone).
CREATE TABLE IF NOT EXISTS tallygate_ledger_state (
    name   text PRIMARY KEY,
    value  timestamptz NOT NULL
);

-- Where the sealed days end, read under a shared advisory lock that sealing takes
-- exclusively, and with a snapshot of its own (a volatile function's query sees what
-- committed while the calling statement ran): the writer's statement calls it after its
-- hourly upsert, so a batch either committed before a day was sealed (its sums are in
-- what was sealed) or sees the new bound and adds its rows of that day to the daily sums.
CREATE OR REPLACE FUNCTION tallygate_ledger_sealed_before(after_rows bigint) RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7301267);
    RETURN (SELECT value FROM tallygate_ledger_state WHERE name = 'sealed_before');
END
$fn$;

INSERT INTO tallygate_schema_migrations (version, name) VALUES (4, 'partitioned_ledger')
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

-- 0008: the writer appends its rollup sums to a table with no index (one row per group a
-- batch touched) instead of updating the rollup rows, and a frequent fold moves them into
-- the hourly and daily sums; a latency histogram in the rollups (docs/DESIGN.md, "The
-- ledger at scale"). Safe to run twice.

-- Latency histogram: latency_bNN counts the requests whose latency_ms falls in bucket NN of
-- width_bucket(latency_ms, store/rollups.py LATENCY_BOUNDS): 00 below 1 ms, NN (1-38) in
-- [2^((NN-1)/2), 2^(NN/2)) ms, 39 from 2^19 ms (8.7 minutes) up. Rollup hours written
-- before this migration hold zeros until `tallygate ledger rebuild-rollups` recounts them
-- from the rows; the p95 reader counts only the requests a histogram holds.
ALTER TABLE litellm_usage_hourly
    ADD COLUMN IF NOT EXISTS latency_b00 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b01 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b02 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b03 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b04 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b05 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b06 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b07 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b08 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b09 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b10 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b11 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b12 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b13 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b14 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b15 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b16 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b17 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b18 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b19 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b20 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b21 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b22 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b23 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b24 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b25 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b26 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b27 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b28 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b29 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b30 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b31 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b32 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b33 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b34 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b35 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b36 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b37 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b38 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b39 bigint NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage_daily
    ADD COLUMN IF NOT EXISTS latency_b00 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b01 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b02 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b03 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b04 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b05 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b06 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b07 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b08 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b09 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b10 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b11 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b12 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b13 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b14 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b15 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b16 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b17 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b18 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b19 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b20 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b21 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b22 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b23 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b24 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b25 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b26 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b27 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b28 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b29 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b30 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b31 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b32 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b33 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b34 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b35 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b36 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b37 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b38 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS latency_b39 bigint NOT NULL DEFAULT 0;

-- The sums of the rows each writer's statement really inserted, per tenant, key, model and
-- hour, appended in that statement (an insert into a table with no index: no row lock shared
-- with other writers, no dead rollup versions piling up under a hot group) and moved into
-- the rollups by the fold (store/rollups.py fold_deltas: DELETE ... RETURNING feeding one
-- upsert per group, in one statement). Readers add what is not yet folded.
-- latency_buckets: each row's histogram bucket, one element a row.
CREATE TABLE IF NOT EXISTS litellm_usage_rollup_delta (
    tenant_id              text NOT NULL,
    api_key_id             text NOT NULL,
    model                  text NOT NULL,
    hour                   timestamptz NOT NULL,
    requests               bigint NOT NULL,
    prompt_tokens          bigint NOT NULL,
    completion_tokens      bigint NOT NULL,
    total_tokens           bigint NOT NULL,
    cached_tokens          bigint NOT NULL,
    reasoning_tokens       bigint NOT NULL,
    cache_write_tokens     bigint NOT NULL,
    cache_write_1h_tokens  bigint NOT NULL,
    audio_input_tokens     bigint NOT NULL,
    audio_output_tokens    bigint NOT NULL,
    image_input_tokens     bigint NOT NULL,
    image_output_tokens    bigint NOT NULL,
    web_search_calls       bigint NOT NULL,
    file_search_calls      bigint NOT NULL,
    cost_usd               numeric NOT NULL,
    errors                 bigint NOT NULL,
    unpriced_requests      bigint NOT NULL,
    partial_requests       bigint NOT NULL,
    latency_buckets        smallint[] NOT NULL
);

INSERT INTO tallygate_schema_migrations (version, name) VALUES (8, 'rollup_deltas')
    ON CONFLICT (version) DO NOTHING;

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

-- 0010: when an outbox event was first offered to Stripe, and when it was set aside for an
-- operator. Stripe drops a repeated meter event identifier only within a rolling 24 hours,
-- so an event first offered longer ago than that is never sent again on its own
-- (docs/billing.md, "Resending after Stripe's dedupe window").
ALTER TABLE billing_export_outbox ADD COLUMN IF NOT EXISTS first_attempt_at timestamptz;
ALTER TABLE billing_export_outbox ADD COLUMN IF NOT EXISTS needs_review_at timestamptz;

INSERT INTO tallygate_schema_migrations (version, name) VALUES (10, 'billing_outbox_review')
    ON CONFLICT (version) DO NOTHING;
