-- Reconcile the Postgres ledger (litellm_usage) with the request log lines in BigQuery.
--
-- The ledger is the billing record; the log line of every request is a second copy that
-- reaches BigQuery through the log sink. Over one closed window this query lists every
-- request that is:
--   missing_in_ledger  logged but no ledger row (a lost ledger write: replay it from the log)
--   missing_in_logs    in the ledger but not in the logs (sink filter, exclusion or quota)
--   cost_mismatch      both sides, cost differs by more than 1e-9 USD
--   tokens_mismatch    both sides, token counts differ
-- No rows means the two copies agree.
--
-- The ledger side is read live from Cloud SQL with a federated query; create the
-- connection once (bq mk --connection --connection_type=CLOUD_SQL ...) and fill
-- ${LEDGER_CONNECTION} with PROJECT.LOCATION.CONNECTION_ID. If the ledger is exported to
-- BigQuery instead, replace the EXTERNAL_QUERY(...) call with that table.
--
--   PROJECT=my-project BQ_DATASET=litellm_logs LEDGER_CONNECTION=my-project.us.ledger \
--     envsubst < deploy/bigquery/reconcile_ledger_vs_logs.sql | bq query --use_legacy_sql=false
--
-- The window is the 24 closed hours ending one hour ago (late log lines have arrived by
-- then). Both sides are read with a margin of 70 minutes, longer than the longest request
-- (Cloud Run's 60-minute timeout): the ledger's created_at is when the request started,
-- the log line's timestamp when it ended.
DECLARE window_end TIMESTAMP DEFAULT TIMESTAMP_SUB(TIMESTAMP_TRUNC(CURRENT_TIMESTAMP(), HOUR), INTERVAL 1 HOUR);
DECLARE window_start TIMESTAMP DEFAULT TIMESTAMP_SUB(window_end, INTERVAL 24 HOUR);

WITH logs AS (
  SELECT
    jsonPayload.request_id AS request_id,
    timestamp AS logged_at,
    jsonPayload.tenant_id AS tenant_id,
    jsonPayload.model AS model,
    CAST(jsonPayload.prompt_tokens AS INT64) AS prompt_tokens,
    CAST(jsonPayload.completion_tokens AS INT64) AS completion_tokens,
    CAST(jsonPayload.total_tokens AS INT64) AS total_tokens,
    CAST(jsonPayload.cost_usd AS FLOAT64) AS cost_usd
  FROM `${PROJECT}.${BQ_DATASET}.run_googleapis_com_stdout`
  WHERE timestamp >= TIMESTAMP_SUB(window_start, INTERVAL 70 MINUTE)
    AND timestamp < TIMESTAMP_ADD(window_end, INTERVAL 70 MINUTE)
    AND jsonPayload.message = 'litellm_request'
  -- the sink is not de-duplicated
  QUALIFY ROW_NUMBER() OVER (PARTITION BY jsonPayload.request_id ORDER BY timestamp) = 1
),
ledger AS (
  SELECT
    request_id,
    created_at,
    tenant_id,
    model,
    prompt_tokens,
    completion_tokens,
    total_tokens,
    cost_usd
  FROM EXTERNAL_QUERY(
    '${LEDGER_CONNECTION}',
    -- Postgres side; numeric(20,12) is sent as float8 (BigQuery's NUMERIC keeps 9 decimals).
    -- 28 hours covers the window plus both margins.
    '''SELECT request_id, created_at, tenant_id, model, prompt_tokens, completion_tokens,
              total_tokens, cost_usd::float8 AS cost_usd
       FROM litellm_usage
       WHERE created_at >= now() - interval '28 hours' ''')
),
joined AS (
  SELECT
    COALESCE(l.request_id, g.request_id) AS request_id,
    COALESCE(l.tenant_id, g.tenant_id) AS tenant_id,
    COALESCE(l.model, g.model) AS model,
    l.created_at,
    g.logged_at,
    l.total_tokens AS ledger_total_tokens,
    g.total_tokens AS log_total_tokens,
    l.cost_usd AS ledger_cost_usd,
    g.cost_usd AS log_cost_usd,
    l.request_id IS NOT NULL AS in_ledger,
    g.request_id IS NOT NULL AS in_logs,
    l.prompt_tokens = g.prompt_tokens
      AND l.completion_tokens = g.completion_tokens
      AND l.total_tokens = g.total_tokens AS tokens_equal
  FROM ledger AS l
  FULL OUTER JOIN logs AS g ON l.request_id = g.request_id
)
SELECT
  CASE
    WHEN NOT in_ledger THEN 'missing_in_ledger'
    WHEN NOT in_logs THEN 'missing_in_logs'
    WHEN ABS(ledger_cost_usd - log_cost_usd) > 1e-9 THEN 'cost_mismatch'
    ELSE 'tokens_mismatch'
  END AS problem,
  request_id,
  tenant_id,
  model,
  created_at,
  logged_at,
  ledger_total_tokens,
  log_total_tokens,
  ledger_cost_usd,
  log_cost_usd
FROM joined
WHERE
  -- judge each request by its own side's time, inside the closed window
  COALESCE(created_at, logged_at) >= window_start
  AND COALESCE(created_at, logged_at) < window_end
  AND (NOT in_ledger OR NOT in_logs
       OR ABS(ledger_cost_usd - log_cost_usd) > 1e-9
       OR NOT tokens_equal)
ORDER BY problem, tenant_id, request_id;
