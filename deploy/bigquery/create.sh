#!/usr/bin/env bash
# BigQuery export of the gateway's request log lines: dataset, log sink, writer grant.
# `tallygate deploy cloudrun` runs the same commands; this script is the stand-alone form.
#
#   PROJECT_ID=my-project deploy/bigquery/create.sh
#
# Environment (defaults in brackets):
#   PROJECT_ID    Google Cloud project ID (required)
#   SERVICE       Cloud Run service name [litellm-proxy]
#   DATASET       BigQuery dataset [litellm_logs]
#   BQ_LOCATION   dataset location [US]
#   SINK          log sink name [$SERVICE-bq-sink]
#   GRANT_SCOPE   project (roles/bigquery.dataEditor on the project, the documented form)
#                 or dataset (least privilege, through `bq add-iam-policy-binding`) [project]
#
# Safe to run again: what exists is kept (the sink's filter is updated).
set -euo pipefail

: "${PROJECT_ID:?set PROJECT_ID to the Google Cloud project ID}"
SERVICE="${SERVICE:-litellm-proxy}"
DATASET="${DATASET:-litellm_logs}"
BQ_LOCATION="${BQ_LOCATION:-US}"
SINK="${SINK:-${SERVICE}-bq-sink}"
GRANT_SCOPE="${GRANT_SCOPE:-project}"

DESTINATION="bigquery.googleapis.com/projects/${PROJECT_ID}/datasets/${DATASET}"
# Only this service's request lines from stdout: no request logs, no stderr, no other service.
FILTER="resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${SERVICE}\" AND logName=\"projects/${PROJECT_ID}/logs/run.googleapis.com%2Fstdout\" AND jsonPayload.message=\"litellm_request\""

# 1. the dataset must exist before the sink can write to it
if ! bq --project_id="${PROJECT_ID}" show --dataset "${PROJECT_ID}:${DATASET}" >/dev/null 2>&1; then
  bq --location="${BQ_LOCATION}" --project_id="${PROJECT_ID}" mk --dataset \
    --description="tallygate request log lines (Cloud Logging sink)" "${PROJECT_ID}:${DATASET}"
fi

# 2. the sink: one table, partitioned on timestamp (no date-suffixed tables); a new sink is
#    created disabled and enabled in step 4, once its writer identity may write
if gcloud logging sinks describe "${SINK}" --project="${PROJECT_ID}" >/dev/null 2>&1; then
  gcloud logging sinks update "${SINK}" "${DESTINATION}" --use-partitioned-tables \
    --log-filter="${FILTER}" --project="${PROJECT_ID}"
else
  gcloud logging sinks create "${SINK}" "${DESTINATION}" --use-partitioned-tables \
    --log-filter="${FILTER}" --description="tallygate litellm_request lines" \
    --disabled --project="${PROJECT_ID}"
fi

# 3. the sink writes as its own service account: let it write to BigQuery (IAM is
#    eventually consistent: a new identity can be unknown for a minute, so retry)
retry() {
  local n=1
  until "$@"; do
    if [ "$n" -gt 5 ]; then return 1; fi
    sleep $((1 << n))
    n=$((n + 1))
  done
}
WRITER_IDENTITY="$(gcloud logging sinks describe "${SINK}" --project="${PROJECT_ID}" \
  --format='value(writerIdentity)')"
if [ -z "${WRITER_IDENTITY}" ]; then
  echo "error: sink ${SINK} has no writer identity" >&2
  exit 1
fi
case "${GRANT_SCOPE}" in
  project)
    retry gcloud projects add-iam-policy-binding "${PROJECT_ID}" --member="${WRITER_IDENTITY}" \
      --role=roles/bigquery.dataEditor --condition=None --quiet >/dev/null
    ;;
  dataset)
    retry bq --project_id="${PROJECT_ID}" add-iam-policy-binding --member="${WRITER_IDENTITY}" \
      --role=roles/bigquery.dataEditor --dataset "${PROJECT_ID}:${DATASET}" >/dev/null
    ;;
  *)
    echo "error: GRANT_SCOPE must be project or dataset, not ${GRANT_SCOPE}" >&2
    exit 2
    ;;
esac

# 4. now it may write: the sink exports
gcloud logging sinks update "${SINK}" --no-disabled --project="${PROJECT_ID}"

echo "sink ${SINK} -> ${DESTINATION} (writer ${WRITER_IDENTITY})"
echo "rows land in ${PROJECT_ID}.${DATASET}.run_googleapis_com_stdout within minutes of the next request"
