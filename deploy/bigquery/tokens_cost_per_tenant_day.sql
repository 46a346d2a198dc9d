-- Tokens and cost per tenant per day (UTC), from the log sink's BigQuery table.
--
-- Fill the placeholders and run:
--   PROJECT=my-project BQ_DATASET=litellm_logs envsubst < deploy/bigquery/tokens_cost_per_tenant_day.sql \
--     | bq query --use_legacy_sql=false
--
-- * The sink exports with --use-partitioned-tables: one table partitioned on `timestamp`,
--   so the WHERE on `timestamp` prunes partitions (cost) and there is no _YYYYMMDD suffix.
-- * Sink exports are not de-duplicated: the same entry can arrive twice. Every line carries
--   a unique request_id; QUALIFY keeps one row per request.
-- * jsonPayload numbers arrive as FLOAT64 (Cloud Logging stores JSON numbers as doubles):
--   tokens are cast back to INT64, cost to NUMERIC before summing.
-- * For a local-time day use DATE(timestamp, 'Europe/Paris') etc.
-- * This is analytics. Invoices come from the Postgres ledger (litellm_usage).
WITH requests AS (
  SELECT
    timestamp,
    jsonPayload.request_id AS request_id,
    jsonPayload.tenant_id AS tenant_id,
    jsonPayload.model AS model,
    jsonPayload.status AS status,
    CAST(jsonPayload.prompt_tokens AS INT64) AS prompt_tokens,
    CAST(jsonPayload.completion_tokens AS INT64) AS completion_tokens,
    CAST(jsonPayload.total_tokens AS INT64) AS total_tokens,
    CAST(jsonPayload.cost_usd AS NUMERIC) AS cost_usd
  FROM `${PROJECT}.${BQ_DATASET}.run_googleapis_com_stdout`
  WHERE timestamp >= TIMESTAMP_SUB(TIMESTAMP_TRUNC(CURRENT_TIMESTAMP(), DAY), INTERVAL 30 DAY)
    AND jsonPayload.message = 'litellm_request'
  QUALIFY ROW_NUMBER() OVER (PARTITION BY jsonPayload.request_id ORDER BY timestamp) = 1
)
SELECT
  DATE(timestamp) AS day_utc,
  tenant_id,
  COUNT(*) AS requests,
  COUNTIF(status != 'ok') AS failed_requests,
  SUM(prompt_tokens) AS prompt_tokens,
  SUM(completion_tokens) AS completion_tokens,
  SUM(total_tokens) AS total_tokens,
  ROUND(SUM(cost_usd), 6) AS cost_usd
FROM requests
GROUP BY day_utc, tenant_id
ORDER BY day_utc DESC, cost_usd DESC, tenant_id;
