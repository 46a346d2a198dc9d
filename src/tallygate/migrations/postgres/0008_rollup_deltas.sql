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
