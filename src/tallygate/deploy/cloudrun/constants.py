"""Fixed values of the Cloud Run set-up: the port, probes, secret names, phases, alert
thresholds, the patterns options are checked against, and the error every check raises."""

from __future__ import annotations

import re

CONTAINER_PORT = 8080
LOG_MESSAGE = "litellm_request"
STARTUP_PROBE = {  # /ready answers 503 until the ledger is reachable; up to 2 minutes
    "httpGet.path": "/ready",
    "httpGet.port": str(CONTAINER_PORT),
    "periodSeconds": "2",
    "timeoutSeconds": "1",
    "failureThreshold": "60",
}
LIVENESS_PROBE = {  # /live never depends on the upstream or the database
    "httpGet.path": "/live",
    "httpGet.port": str(CONTAINER_PORT),
    "periodSeconds": "10",
    "timeoutSeconds": "3",
    "failureThreshold": "3",
}

# environment variable -> secret name suffix (the secret is "<service>-<suffix>")
SECRET_ENVS: tuple[tuple[str, str], ...] = (
    ("OPENAI_API_KEY", "openai-api-key"),
    ("PROXY_GATEWAY_TOKEN", "proxy-gateway-token"),
    ("PROXY_MASTER_KEY", "proxy-master-key"),
    ("PGPASSWORD", "pgpassword"),
)
# names that must never travel through --set-env-vars
SECRET_LIKE_ENVS = frozenset({e for e, _ in SECRET_ENVS} | {"DATABASE_URL", "REDIS_URL"})
RESERVED_ENVS = frozenset({"PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"})

PHASES: tuple[str, ...] = (
    "services",
    "registry",
    "identity",
    "build",
    "secrets",
    "database",
    "schema",
    "deploy",
    "access",
    "edge",
    "metrics",
    "dashboard",
    "channels",
    "slo",
    "alerts",
    "uptime",
    "budget",
    "bigquery",
)
MONITORING_PHASES = ("metrics", "dashboard", "channels", "slo", "alerts", "uptime")
# phases that need the Cloud SQL ledger (skipped with --sqlite-ledger)
DATABASE_PHASES = ("database", "schema")

# roles of the runtime service account (the secrets' secretAccessor is granted per secret)
RUNTIME_ROLES = ("roles/cloudsql.client",)
# roles of the build service account: new projects build as the default compute account,
# which lacks them; a dedicated account gets exactly the Cloud Build builder role
BUILD_ROLES = ("roles/cloudbuild.builds.builder",)
# IAM changes are eventually consistent: a binding, or a read right after it, can fail
# for a minute after the account was created; retried with these delays (seconds)
RETRY_DELAYS = (2.0, 4.0, 8.0, 16.0, 32.0)
# the password generated for the database user: letters and digits (safe in YAML and URLs)
PASSWORD_LENGTH = 32
# a policy's stable identity (found by it and updated in place): this user label
POLICY_LABEL = "tallygate_policy"
# gcloud's monitoring policies group: GA in recent Cloud SDKs, alpha only in older ones
POLICIES_TRACK = "POLICIES_TRACK"

# alert thresholds: placeholder -> (option dest, default, help)
ALERT_THRESHOLDS: tuple[tuple[str, str, float, str], ...] = (
    (
        "TOKEN_SURGE_PER_5M",
        "alert_token_surge",
        1_000_000,
        "tokens one tenant may use in 5 minutes before the token-surge alert fires",
    ),
    (
        "COST_SURGE_USD_PER_5M",
        "alert_cost_surge",
        5.0,
        "USD one tenant may spend in 5 minutes before the cost-surge alert fires",
    ),
    (
        "SURGE_FACTOR",
        "alert_surge_factor",
        3.0,
        "the surge alerts also fire when the total over 5 minutes exceeds this many times "
        "the same 5 minutes one day earlier",
    ),
    (
        "ERROR_RATIO_5XX",
        "alert_5xx_ratio",
        0.02,
        "share of 5xx responses over 5 minutes that fires the error alert (0.02 = 2%%)",
    ),
    (
        "LATENCY_P95_MS",
        "alert_latency_p95_ms",
        30_000,
        "P95 latency of non-streaming requests over 5 minutes, milliseconds",
    ),
    (
        "BUFFER_DEPTH",
        "alert_buffer_depth",
        10_000,
        "ledger records waiting in one instance's buffer before the buffer-depth alert fires",
    ),
    (
        "SQL_CPU_RATIO",
        "alert_sql_cpu",
        0.8,
        "Cloud SQL CPU utilization over 5 minutes that fires its alert (0.8 = 80%%)",
    ),
    (
        "SQL_DISK_RATIO",
        "alert_sql_disk",
        0.8,
        "Cloud SQL disk utilization that fires its alert (0.8 = 80%%)",
    ),
    (
        "SQL_CONNECTIONS",
        "alert_sql_connections",
        400,
        "open Cloud SQL connections (backends) that fire the connections alert",
    ),
    (
        "SLO_AVAILABILITY",
        "slo_availability",
        0.995,
        "availability objective: share of requests answered without a 5xx over 28 days",
    ),
    (
        "SLO_TTFT",
        "slo_ttft",
        0.95,
        "time-to-first-token objective: share of streams whose first token comes within --alert-ttft-p95-ms",
    ),
    (
        "TTFT_P95_MS",
        "alert_ttft_p95_ms",
        5_000,
        "P95 time to first token of streaming requests over 5 minutes, milliseconds",
    ),
)

_PROJECT_RE = re.compile(r"^(?:[a-z0-9][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_SERVICE_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,47}[a-z0-9])?$")
_REPO_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_SQL_INSTANCE_RE = re.compile(
    r"^(?P<project>[^:\s]+(?::[^:\s]+)?):(?P<region>[a-z0-9-]+):(?P<instance>[a-z][a-z0-9-]*)$"
)
_DATASET_RE = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MEMORY_RE = re.compile(r"^[0-9]+(?:Mi|Gi)$")
_SA_ID_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_VAR_REF = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


class DeployError(Exception):
    """A bad option or a failed step; the message is meant for the user as is."""
