-- Margin per tenant and UTC day over the last 30 days: what the tenant was billed (the Stripe
-- export), minus the upstream LLM cost of its requests (the log export) and its share of the
-- service's own Google Cloud cost (the standard Cloud Billing export: Cloud Run, Cloud SQL,
-- Cloud Logging, net of credits, in USD), shared out by its share of the day's requests.
--
-- Inputs (fill with envsubst):
--   ${PROJECT}.${BQ_DATASET}.run_googleapis_com_stdout  the sink's table (deploy cloudrun)
--   ${BILLING_EXPORT_TABLE}  the standard usage cost export, PROJECT.DATASET.gcp_billing_export_v1_XXXXXX_XXXXXX_XXXXXX
--   ${STRIPE_DATASET}        Stripe's export (Sigma / Data Pipeline tables): invoices,
--                            invoice_line_items, customers_metadata; a customer's tenant is its
--                            metadata key tenant_id
-- Rounding: amounts are NUMERIC (exact) until the output, rounded half away from zero to 6
-- decimals. Stripe amounts are integer cents of USD invoices; a line's amount is spread
-- evenly over the UTC days of its period (a one-day share for a line without one).
WITH req AS (
  SELECT DATE(timestamp) AS day,
         jsonPayload.tenant_id AS tenant_id,
         CAST(jsonPayload.cost_usd AS NUMERIC) AS cost_usd
  FROM `${PROJECT}.${BQ_DATASET}.run_googleapis_com_stdout`
  WHERE timestamp >= TIMESTAMP(DATE_SUB(CURRENT_DATE(), INTERVAL 30 DAY))
    AND jsonPayload.message = 'litellm_request'
  QUALIFY ROW_NUMBER() OVER (PARTITION BY jsonPayload.request_id ORDER BY timestamp) = 1
),
usage_share AS (
  SELECT day, tenant_id, COUNT(*) AS requests, SUM(cost_usd) AS upstream_usd,
         COUNT(*) / SUM(COUNT(*)) OVER (PARTITION BY day) AS request_share
  FROM req
  GROUP BY day, tenant_id
),
cost_rows AS (
  SELECT DATE(b.usage_start_time) AS day,
         b.service.description AS service,
         (CAST(b.cost AS NUMERIC)
          + IFNULL((SELECT SUM(CAST(c.amount AS NUMERIC)) FROM UNNEST(b.credits) AS c), 0))
         / CAST(b.currency_conversion_rate AS NUMERIC) AS net_usd
  FROM `${BILLING_EXPORT_TABLE}` AS b
  WHERE b.project.id = '${PROJECT}'
    AND b.service.description IN ('Cloud Run', 'Cloud SQL', 'Cloud Logging')
    AND b.cost_type != 'tax'
    AND b.usage_start_time >= TIMESTAMP(DATE_SUB(CURRENT_DATE(), INTERVAL 30 DAY))
),
infra AS (
  SELECT day,
         SUM(IF(service = 'Cloud Run', net_usd, 0)) AS cloud_run_usd,
         SUM(IF(service = 'Cloud SQL', net_usd, 0)) AS cloud_sql_usd,
         SUM(IF(service = 'Cloud Logging', net_usd, 0)) AS logging_usd
  FROM cost_rows
  GROUP BY day
),
line_days AS (
  SELECT m.value AS tenant_id,
         DATE(li.period_start) AS first_day,
         GREATEST(DATE_DIFF(DATE(li.period_end), DATE(li.period_start), DAY), 1) AS days,
         CAST(li.amount AS NUMERIC) / 100 AS amount_usd
  FROM `${STRIPE_DATASET}.invoice_line_items` AS li
  JOIN `${STRIPE_DATASET}.invoices` AS inv ON inv.id = li.invoice_id
  JOIN `${STRIPE_DATASET}.customers_metadata` AS m ON m.customer_id = inv.customer_id AND m.key = 'tenant_id'
  WHERE li.currency = 'usd' AND inv.status IN ('open', 'paid')
),
billed AS (
  SELECT DATE_ADD(first_day, INTERVAL n DAY) AS day, tenant_id, SUM(amount_usd / days) AS billed_usd
  FROM line_days, UNNEST(GENERATE_ARRAY(0, days - 1)) AS n
  GROUP BY day, tenant_id
),
per_tenant AS (
  SELECT COALESCE(u.day, b.day) AS day,
         COALESCE(u.tenant_id, b.tenant_id) AS tenant_id,
         IFNULL(u.requests, 0) AS requests,
         IFNULL(u.request_share, 0) AS request_share,
         IFNULL(u.upstream_usd, 0) AS upstream_usd,
         IFNULL(b.billed_usd, 0) AS billed_usd
  FROM usage_share AS u
  FULL OUTER JOIN billed AS b ON b.day = u.day AND b.tenant_id = u.tenant_id
  WHERE COALESCE(u.day, b.day) BETWEEN DATE_SUB(CURRENT_DATE(), INTERVAL 30 DAY) AND CURRENT_DATE()
)
SELECT t.day AS day_utc,
       t.tenant_id,
       t.requests,
       ROUND(t.billed_usd, 6) AS billed_usd,
       ROUND(t.upstream_usd, 6) AS upstream_usd,
       ROUND(t.request_share * IFNULL(i.cloud_run_usd, 0), 6) AS cloud_run_usd,
       ROUND(t.request_share * IFNULL(i.cloud_sql_usd, 0), 6) AS cloud_sql_usd,
       ROUND(t.request_share * IFNULL(i.logging_usd, 0), 6) AS logging_usd,
       ROUND(t.billed_usd - t.upstream_usd
             - t.request_share * (IFNULL(i.cloud_run_usd, 0) + IFNULL(i.cloud_sql_usd, 0) + IFNULL(i.logging_usd, 0)),
             6) AS margin_usd
FROM per_tenant AS t
LEFT JOIN infra AS i ON i.day = t.day
ORDER BY day_utc DESC, margin_usd;
