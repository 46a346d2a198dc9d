-- 0004: hourly rollups kept in the writer's transaction, export cursors that retention
-- respects. SQLite has no partitions: the ledger keeps its request_id key, and retention
-- deletes old rows (docs/DESIGN.md, "The ledger at scale"). Costs are exact decimal text.
CREATE TABLE IF NOT EXISTS litellm_usage_hourly (
    tenant_id              text NOT NULL,
    api_key_id             text NOT NULL DEFAULT '',
    model                  text NOT NULL,
    hour                   text NOT NULL,
    requests               integer NOT NULL DEFAULT 0,
    prompt_tokens          integer NOT NULL DEFAULT 0,
    completion_tokens      integer NOT NULL DEFAULT 0,
    total_tokens           integer NOT NULL DEFAULT 0,
    cached_tokens          integer NOT NULL DEFAULT 0,
    reasoning_tokens       integer NOT NULL DEFAULT 0,
    cache_write_tokens     integer NOT NULL DEFAULT 0,
    cache_write_1h_tokens  integer NOT NULL DEFAULT 0,
    audio_input_tokens     integer NOT NULL DEFAULT 0,
    audio_output_tokens    integer NOT NULL DEFAULT 0,
    image_input_tokens     integer NOT NULL DEFAULT 0,
    image_output_tokens    integer NOT NULL DEFAULT 0,
    web_search_calls       integer NOT NULL DEFAULT 0,
    file_search_calls      integer NOT NULL DEFAULT 0,
    cost_usd               text NOT NULL DEFAULT '0',
    errors                 integer NOT NULL DEFAULT 0,
    unpriced_requests      integer NOT NULL DEFAULT 0,
    partial_requests       integer NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, api_key_id, model, hour)
);
CREATE INDEX IF NOT EXISTS litellm_usage_hourly_hour ON litellm_usage_hourly (hour);

INSERT INTO litellm_usage_hourly
SELECT tenant_id, coalesce(api_key_id, ''), model, substr(created_at, 1, 13) || ':00:00.000000Z', count(*),
       sum(prompt_tokens), sum(completion_tokens), sum(total_tokens), sum(cached_tokens), sum(reasoning_tokens),
       sum(cache_write_tokens), sum(cache_write_1h_tokens), sum(audio_input_tokens), sum(audio_output_tokens),
       sum(image_input_tokens), sum(image_output_tokens), sum(web_search_calls), sum(file_search_calls),
       dsum(cost_usd), sum(status <> 'ok'), sum(price_source = 'unknown'), sum(price_source LIKE '%:partial')
FROM litellm_usage
WHERE NOT EXISTS (SELECT 1 FROM litellm_usage_hourly)
GROUP BY 1, 2, 3, 4;

CREATE TABLE IF NOT EXISTS ledger_export_cursors (
    name             text PRIMARY KEY,
    exported_before  text NOT NULL,
    updated_at       text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE IF NOT EXISTS tallygate_ledger_state (
    name   text PRIMARY KEY,
    value  text NOT NULL
);

INSERT INTO tallygate_schema_migrations (version, name) VALUES (4, 'partitioned_ledger')
    ON CONFLICT (version) DO NOTHING;
