"""`tallygate deploy cloudrun`: the whole Cloud Run set-up, as gcloud and bq commands.

With ``--dry-run`` the commands are printed, in order, as a shell script (one command per
line, comments above each); without it they are run one by one and the first failure
stops the run with the failing command and its exit status.

Everything here follows docs/deployment.md, which lists what the original deployment
guide got wrong and why. In short:

* images go to Artifact Registry (``REGION-docker.pkg.dev/PROJECT/REPO/IMAGE:TAG``),
  never ``gcr.io`` (Container Registry is shut down);
* ``--no-allow-unauthenticated`` / ``--allow-unauthenticated`` (there is no ``=false``);
* the port is ``--port=8080``: ``PORT`` is reserved and cannot be an env var;
* secrets live in Secret Manager, are written from stdin or a file (never from the
  command line) and are mapped with ``--set-secrets ENV=NAME:VERSION`` pinned to a version;
  the runtime service account is granted ``roles/secretmanager.secretAccessor`` first;
* ``PGSSLMODE`` (libpq's name), ``PGHOST=/cloudsql/PROJECT:REGION:INSTANCE`` over the
  Cloud SQL unix socket;
* log-based metrics come from LogMetric files (``--config-from-file``): gcloud has no
  ``--value-extractor`` or ``--metric-type`` flags;
* the BigQuery sink uses ``--use-partitioned-tables``, a narrowed filter, and its writer
  identity is granted ``roles/bigquery.dataEditor``.

Only the standard library is used, so the command works from a plain checkout.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import string
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, TextIO

# ----------------------------------------------------------------------------- constants

CONTAINER_PORT = 8080
LOG_MESSAGE = "litellm_request"
STARTUP_PROBE = {  # /ready answers 503 until the ledger is reachable; up to 2 minutes
    "httpGet.path": "/ready", "httpGet.port": str(CONTAINER_PORT),
    "periodSeconds": "2", "timeoutSeconds": "1", "failureThreshold": "60",
}
LIVENESS_PROBE = {  # /live never depends on the upstream or the database
    "httpGet.path": "/live", "httpGet.port": str(CONTAINER_PORT),
    "periodSeconds": "10", "timeoutSeconds": "3", "failureThreshold": "3",
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
    "services", "registry", "build", "identity", "secrets", "deploy", "access",
    "metrics", "dashboard", "alerts", "bigquery",
)
MONITORING_PHASES = ("metrics", "dashboard", "alerts")

# alert thresholds: placeholder -> (option dest, default, help)
ALERT_THRESHOLDS: tuple[tuple[str, str, float, str], ...] = (
    ("TOKEN_SURGE_PER_5M", "alert_token_surge", 1_000_000,
     "tokens one tenant may use in 5 minutes before the token-surge alert fires"),
    ("COST_SURGE_USD_PER_5M", "alert_cost_surge", 5.0,
     "USD one tenant may spend in 5 minutes before the cost-surge alert fires"),
    ("SURGE_FACTOR", "alert_surge_factor", 3.0,
     "the surge alerts also fire when the total over 5 minutes exceeds this many times "
     "the same 5 minutes one day earlier"),
    ("ERROR_RATIO_5XX", "alert_5xx_ratio", 0.02,
     "share of 5xx responses over 5 minutes that fires the error alert (0.02 = 2%%)"),
    ("LATENCY_P95_MS", "alert_latency_p95_ms", 30_000,
     "P95 latency of non-streaming requests over 5 minutes, milliseconds"),
    ("TTFT_P95_MS", "alert_ttft_p95_ms", 5_000,
     "P95 time to first token of streaming requests over 5 minutes, milliseconds"),
)

_PROJECT_RE = re.compile(r"^(?:[a-z0-9][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_SERVICE_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,47}[a-z0-9])?$")
_REPO_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_SQL_INSTANCE_RE = re.compile(r"^(?P<project>[^:\s]+(?::[^:\s]+)?):(?P<region>[a-z0-9-]+):(?P<instance>[a-z][a-z0-9-]*)$")
_DATASET_RE = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MEMORY_RE = re.compile(r"^[0-9]+(?:Mi|Gi)$")
_SA_ID_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_VAR_REF = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


class DeployError(Exception):
    """A bad option or a failed step; the message is meant for the user as is."""


# ----------------------------------------------------------------------------- options

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `tallygate deploy cloudrun`."""
    g = parser.add_argument_group("target")
    g.add_argument("--project", default=os.environ.get("CLOUDSDK_CORE_PROJECT"),
                   help="Google Cloud project ID (default: $CLOUDSDK_CORE_PROJECT)")
    g.add_argument("--region", default="us-central1", help="Cloud Run and Artifact Registry region")
    g.add_argument("--service", default="litellm-proxy", help="Cloud Run service name")
    g.add_argument("--repository", default="litellm", help="Artifact Registry Docker repository")
    g.add_argument("--image-tag", default=None,
                   help="image tag (default: the git commit of --source, else a UTC timestamp)")
    g.add_argument("--source", default=".",
                   help="build context holding the Dockerfile (default: current directory)")
    g.add_argument("--service-account", default=None,
                   help="runtime service account e-mail (default: SERVICE-run@PROJECT.iam.gserviceaccount.com, created if missing)")

    g = parser.add_argument_group("database (Cloud SQL for PostgreSQL)")
    g.add_argument("--cloudsql-instance", default=None, metavar="PROJECT:REGION:INSTANCE",
                   help="connect over the Cloud SQL unix socket: sets --add-cloudsql-instances and PGHOST=/cloudsql/...")
    g.add_argument("--pg-user", default="litellm", help="PGUSER")
    g.add_argument("--pg-database", default="litellm", help="PGDATABASE")
    g.add_argument("--ledger-mode", choices=("async", "sync"), default="async",
                   help="TALLYGATE_LEDGER_MODE")

    g = parser.add_argument_group("service")
    g.add_argument("--concurrency", type=int, default=15)
    g.add_argument("--min-instances", type=int, default=1)
    g.add_argument("--max-instances", type=int, default=50)
    g.add_argument("--cpu", default="1")
    g.add_argument("--memory", default="1Gi")
    g.add_argument("--timeout", type=int, default=3600,
                   help="request timeout in seconds; it also caps every stream (max 3600)")
    g.add_argument("--auth", choices=("public", "iam"), default="public",
                   help="public: --allow-unauthenticated, the gateway's own keys protect every route; "
                        "iam: --no-allow-unauthenticated, callers send a Google ID token in "
                        "X-Serverless-Authorization and the gateway key in Authorization")
    g.add_argument("--invoker", action="append", default=[], metavar="MEMBER",
                   help="with --auth iam: principal granted roles/run.invoker, e.g. "
                        "serviceAccount:client@PROJECT.iam.gserviceaccount.com (repeatable)")
    g.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra non-secret environment variable (repeatable)")

    g = parser.add_argument_group("secrets (Secret Manager)")
    g.add_argument("--secret-versions", default="1", metavar="N|ENV=N,...",
                   help="pinned secret versions: one number for all, or e.g. OPENAI_API_KEY=3,PGPASSWORD=2 (others 1)")
    g.add_argument("--secret-file", action="append", default=[], metavar="ENV=PATH",
                   help="read a secret's value from PATH instead of the environment variable ENV (repeatable)")

    g = parser.add_argument_group("observability")
    g.add_argument("--bq-dataset", default="litellm_logs")
    g.add_argument("--bq-location", default="US")
    g.add_argument("--sink-name", default=None, help="log sink name (default: SERVICE-bq-sink)")
    g.add_argument("--notification-channel", action="append", default=[], metavar="NAME",
                   help="projects/PROJECT/notificationChannels/ID added to every alert policy (repeatable)")
    for placeholder, dest, default, text in ALERT_THRESHOLDS:
        g.add_argument("--" + dest.replace("_", "-"), dest=dest, type=float, default=default,
                       help=f"{text} (default {default:g}; ${{{placeholder}}} in the alert files)")

    g = parser.add_argument_group("what to run")
    g.add_argument("--dry-run", action="store_true",
                   help="print the commands instead of running them")
    g.add_argument("--render-dir", default=None,
                   help="where the filled-in monitoring files are written (default: a new temporary directory)")
    g.add_argument("--skip-build", action="store_true", help="deploy an image that was already pushed")
    g.add_argument("--skip-monitoring", action="store_true", help="no log-based metrics, dashboard or alerts")
    g.add_argument("--skip-bigquery", action="store_true", help="no BigQuery dataset or log sink")
    g.add_argument("--only", default=None, metavar="PHASE[,PHASE]",
                   help="run only these phases: " + ", ".join(PHASES))


# ----------------------------------------------------------------------------- config

@dataclass(frozen=True)
class SecretSpec:
    env: str
    name: str
    version: str
    file: str | None


@dataclass(frozen=True)
class Config:
    project: str
    region: str
    service: str
    repository: str
    image: str
    source: Path
    assets: Path
    service_account: str
    create_service_account: bool
    cloudsql_instance: str | None
    pg_user: str
    pg_database: str
    ledger_mode: str
    concurrency: int
    min_instances: int
    max_instances: int
    cpu: str
    memory: str
    timeout: int
    auth: str
    invokers: tuple[str, ...]
    extra_env: tuple[tuple[str, str], ...]
    secrets: tuple[SecretSpec, ...]
    bq_dataset: str
    bq_location: str
    sink_name: str
    notification_channels: tuple[str, ...]
    thresholds: dict[str, float]
    phases: tuple[str, ...]

    @property
    def env_vars(self) -> list[tuple[str, str]]:
        env: list[tuple[str, str]] = []
        if self.cloudsql_instance:
            env += [("PGHOST", f"/cloudsql/{self.cloudsql_instance}"),
                    ("PGUSER", self.pg_user), ("PGDATABASE", self.pg_database),
                    # libpq reads PGSSLMODE (not PGSSL); a unix socket carries no TLS
                    ("PGSSLMODE", "disable")]
        env += [("TALLYGATE_LEDGER_MODE", self.ledger_mode),
                ("GOOGLE_CLOUD_PROJECT", self.project)]
        env += list(self.extra_env)
        return env


def _git_tag(source: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    tag = out.stdout.strip()
    return tag if out.returncode == 0 and _TAG_RE.match(tag) else None


def _assets_dir(source: Path) -> Path:
    for candidate in (source / "deploy", Path(__file__).resolve().parents[3] / "deploy"):
        if (candidate / "monitoring").is_dir():
            return candidate
    return source / "deploy"


def _parse_versions(raw: str) -> dict[str, str]:
    raw = (raw or "1").strip()
    envs = [e for e, _ in SECRET_ENVS]
    if re.fullmatch(r"[1-9][0-9]*", raw):
        return {e: raw for e in envs}
    versions = {e: "1" for e in envs}
    for item in raw.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or name not in versions:
            raise DeployError(f"--secret-versions: expected N or ENV=N,... with ENV one of "
                              f"{', '.join(envs)}; got {item!r}")
        if not re.fullmatch(r"[1-9][0-9]*", value):
            raise DeployError(f"--secret-versions: {name} must be pinned to a version number "
                              f"(not 'latest'), got {value!r}")
        versions[name] = value
    return versions


def build_config(args: argparse.Namespace) -> Config:
    """Validate the options; raises DeployError with a message naming the bad option."""
    project = (args.project or "").strip()
    if not project:
        raise DeployError("--project is required (or set CLOUDSDK_CORE_PROJECT)")
    if not _PROJECT_RE.match(project):
        raise DeployError(f"--project: {project!r} is not a project ID (6-30 of a-z, 0-9, -)")
    checks: list[tuple[bool, str]] = [
        (bool(_REGION_RE.match(args.region)), f"--region: {args.region!r} is not a region like us-central1"),
        (bool(_SERVICE_RE.match(args.service)), f"--service: {args.service!r}: lowercase letters, digits and hyphens, at most 49, starting with a letter"),
        (bool(_REPO_RE.match(args.repository)), f"--repository: {args.repository!r} is not a repository name"),
        (1 <= args.concurrency <= 1000, "--concurrency must be between 1 and 1000"),
        (args.min_instances >= 0, "--min-instances must be 0 or more"),
        (args.max_instances >= max(1, args.min_instances), "--max-instances must be at least 1 and at least --min-instances"),
        (1 <= args.timeout <= 3600, "--timeout must be between 1 and 3600 seconds"),
        (args.cpu in ("1", "2", "4", "6", "8") or bool(re.fullmatch(r"[0-9]+m", args.cpu)), f"--cpu: {args.cpu!r} is not 1, 2, 4, 6, 8 or NNNm"),
        (bool(_MEMORY_RE.match(args.memory)), f"--memory: {args.memory!r} is not like 512Mi or 1Gi"),
        (bool(_DATASET_RE.match(args.bq_dataset)), f"--bq-dataset: {args.bq_dataset!r}: letters, digits and underscores only"),
        (args.auth == "iam" or not args.invoker, "--invoker only makes sense with --auth iam"),
    ]
    for ok, message in checks:
        if not ok:
            raise DeployError(message)
    if args.concurrency > 1 and args.cpu.endswith("m"):
        raise DeployError("--concurrency above 1 needs at least 1 whole --cpu")

    source = Path(args.source)
    tag = args.image_tag or _git_tag(source) or _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    if not _TAG_RE.match(tag):
        raise DeployError(f"--image-tag: {tag!r} is not a valid Docker tag")
    image = f"{args.region}-docker.pkg.dev/{project.replace(':', '/')}/{args.repository}/{args.service}:{tag}"

    sql = args.cloudsql_instance
    if sql and not _SQL_INSTANCE_RE.match(sql):
        raise DeployError(f"--cloudsql-instance: {sql!r} is not PROJECT:REGION:INSTANCE")

    if args.service_account:
        sa = args.service_account
        if not re.fullmatch(r"[a-z0-9-]+@[a-z0-9.-]+\.iam\.gserviceaccount\.com|[0-9]+-compute@developer\.gserviceaccount\.com", sa):
            raise DeployError(f"--service-account: {sa!r} is not a service account e-mail")
        create_sa = False
    else:
        sa_id = f"{args.service}-run"[:30].rstrip("-")
        if not _SA_ID_RE.match(sa_id):
            raise DeployError(f"cannot derive a service account ID from --service {args.service!r}; pass --service-account")
        sa = f"{sa_id}@{project.split(':')[-1]}.iam.gserviceaccount.com" if ":" not in project else \
            f"{sa_id}@{project.split(':')[1]}.{project.split(':')[0]}.iam.gserviceaccount.com"
        create_sa = True

    extra_env: list[tuple[str, str]] = []
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not _ENV_NAME_RE.match(name):
            raise DeployError(f"--env: expected NAME=VALUE, got {item!r}")
        if name in RESERVED_ENVS:
            raise DeployError(f"--env: {name} is reserved by Cloud Run (the port is set with --port={CONTAINER_PORT})")
        if name in SECRET_LIKE_ENVS:
            raise DeployError(f"--env: {name} is a secret; it goes to Secret Manager, not --set-env-vars")
        if name in {"PGHOST", "PGUSER", "PGDATABASE", "PGSSLMODE", "TALLYGATE_LEDGER_MODE", "GOOGLE_CLOUD_PROJECT"}:
            raise DeployError(f"--env: {name} is set by its own option")
        if name == "PGSSL":
            raise DeployError("--env: PGSSL is not read by libpq; use PGSSLMODE (it is set for you with --cloudsql-instance)")
        extra_env.append((name, value))

    versions = _parse_versions(args.secret_versions)
    files: dict[str, str] = {}
    for item in args.secret_file:
        name, sep, path = item.partition("=")
        if not sep or name not in versions or not path:
            raise DeployError(f"--secret-file: expected ENV=PATH with ENV one of {', '.join(versions)}, got {item!r}")
        files[name] = path
    secrets = tuple(
        SecretSpec(env, f"{args.service}-{suffix}", versions[env], files.get(env))
        for env, suffix in SECRET_ENVS
        if env != "PGPASSWORD" or sql
    )

    for channel in args.notification_channel:
        if not re.fullmatch(r"projects/[^/]+/notificationChannels/[^/]+", channel):
            raise DeployError(f"--notification-channel: {channel!r} is not projects/PROJECT/notificationChannels/ID")

    thresholds: dict[str, float] = {}
    for placeholder, dest, _default, _text in ALERT_THRESHOLDS:
        value = getattr(args, dest)
        if not value > 0:
            raise DeployError(f"--{dest.replace('_', '-')} must be positive")
        thresholds[placeholder] = value

    if args.only:
        phases = tuple(p.strip() for p in args.only.split(",") if p.strip())
        unknown = [p for p in phases if p not in PHASES]
        if unknown:
            raise DeployError(f"--only: unknown phase {', '.join(unknown)}; phases are {', '.join(PHASES)}")
    else:
        phases = PHASES
    skip: set[str] = set()
    if args.skip_build:
        skip.add("build")
    if args.skip_monitoring:
        skip.update(MONITORING_PHASES)
    if args.skip_bigquery:
        skip.add("bigquery")
    if args.auth != "iam" or not args.invoker:
        skip.add("access")
    phases = tuple(p for p in PHASES if p in phases and p not in skip)

    return Config(
        project=project, region=args.region, service=args.service, repository=args.repository,
        image=image, source=source, assets=_assets_dir(source), service_account=sa,
        create_service_account=create_sa, cloudsql_instance=sql, pg_user=args.pg_user,
        pg_database=args.pg_database, ledger_mode=args.ledger_mode,
        concurrency=args.concurrency, min_instances=args.min_instances,
        max_instances=args.max_instances, cpu=args.cpu, memory=args.memory,
        timeout=args.timeout, auth=args.auth, invokers=tuple(args.invoker),
        extra_env=tuple(extra_env), secrets=secrets, bq_dataset=args.bq_dataset,
        bq_location=args.bq_location, sink_name=args.sink_name or f"{args.service}-bq-sink",
        notification_channels=tuple(args.notification_channel), thresholds=thresholds,
        phases=phases,
    )


# ----------------------------------------------------------------------------- templates

def template_values(config: Config) -> dict[str, str]:
    values = {"PROJECT": config.project, "REGION": config.region, "SERVICE": config.service,
              "BQ_DATASET": config.bq_dataset}
    for key, value in config.thresholds.items():
        values[key] = _number(value)
    return values


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def substitute(text: str, values: dict[str, str], where: str = "template") -> str:
    """${NAME} placeholders; an unknown one is an error, not a silent leftover."""
    try:
        return string.Template(text).substitute(values)
    except KeyError as exc:
        raise DeployError(f"{where}: unknown placeholder ${{{exc.args[0]}}}") from None
    except ValueError as exc:
        raise DeployError(f"{where}: {exc}") from None


def _substitute_json(node: object, values: dict[str, str], where: str) -> object:
    """Fill placeholders inside a parsed JSON document; a string that is exactly one
    numeric placeholder (e.g. "${ERROR_RATIO_5XX}") becomes a JSON number."""
    if isinstance(node, dict):
        return {k: _substitute_json(v, values, where) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_json(v, values, where) for v in node]
    if isinstance(node, str):
        whole = re.fullmatch(r"\$\{([A-Z][A-Z0-9_]*)\}", node)
        filled = substitute(node, values, where)
        if whole and re.fullmatch(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?", filled):
            return float(filled) if any(c in filled for c in ".eE") else int(filled)
        return filled
    return node


@dataclass(frozen=True)
class Rendered:
    metrics: tuple[tuple[str, Path], ...]  # (metric name, rendered file)
    dashboard: Path | None
    dashboard_name: str
    alerts: tuple[tuple[str, Path], ...]  # (display name, rendered file)
    directory: Path


def render(config: Config, out_dir: Path) -> Rendered:
    """Write filled-in copies of deploy/monitoring/* into out_dir."""
    values = template_values(config)
    mon = config.assets / "monitoring"
    need_monitoring = any(p in config.phases for p in MONITORING_PHASES)
    if need_monitoring and not mon.is_dir():
        raise DeployError(f"cannot find {mon}: run from a tallygate checkout or pass --source")
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: list[tuple[str, Path]] = []
    alerts: list[tuple[str, Path]] = []
    dashboard: Path | None = None
    dashboard_name = ""
    if "metrics" in config.phases:
        (out_dir / "metrics").mkdir(exist_ok=True)
        for src in sorted((mon / "metrics").glob("*.yaml")):
            text = substitute(src.read_text(), values, str(src))
            dst = out_dir / "metrics" / src.name
            dst.write_text(text)
            metrics.append((src.stem, dst))
    if "dashboard" in config.phases:
        src = mon / "dashboard.json"
        doc = _substitute_json(json.loads(src.read_text()), values, str(src))
        assert isinstance(doc, dict)
        dashboard_name = str(doc.get("displayName", ""))
        dashboard = out_dir / "dashboard.json"
        dashboard.write_text(json.dumps(doc, indent=2) + "\n")
    if "alerts" in config.phases:
        (out_dir / "alerts").mkdir(exist_ok=True)
        for src in sorted((mon / "alerts").glob("*.json")):
            doc = _substitute_json(json.loads(src.read_text()), values, str(src))
            assert isinstance(doc, dict)
            if config.notification_channels:
                doc["notificationChannels"] = list(config.notification_channels)
            dst = out_dir / "alerts" / src.name
            dst.write_text(json.dumps(doc, indent=2) + "\n")
            alerts.append((str(doc["displayName"]), dst))
    return Rendered(tuple(metrics), dashboard, dashboard_name, tuple(alerts), out_dir)


# ----------------------------------------------------------------------------- steps

@dataclass(frozen=True)
class Step:
    """One command. The optional fields make the whole set-up safe to run again."""

    phase: str
    comment: str
    argv: tuple[str, ...]
    unless: tuple[str, ...] | None = None         # skip when this probe exits 0
    unless_output: tuple[str, ...] | None = None  # skip when this probe prints anything
    otherwise: tuple[str, ...] | None = None      # with `unless`: run this instead (update)
    stdin_env: str | None = None                  # the value of this env var goes to stdin
    capture: str | None = None                    # keep stdout as ${NAME} for later steps


def sink_filter(config: Config) -> str:
    return (f'resource.type="cloud_run_revision"'
            f' AND resource.labels.service_name="{config.service}"'
            f' AND logName="projects/{config.project}/logs/run.googleapis.com%2Fstdout"'
            f' AND jsonPayload.message="{LOG_MESSAGE}"')


def _kv(mapping: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in mapping.items())


def _env_flag(env: Sequence[tuple[str, str]]) -> str:
    """--set-env-vars value; gcloud's ^DELIM^ syntax when a value holds a comma."""
    if not any("," in v for _, v in env):
        return ",".join(f"{k}={v}" for k, v in env)
    for delim in ("@", "|", "#", "~", ";"):
        if not any(delim in v for _, v in env):
            return f"^{delim}^" + delim.join(f"{k}={v}" for k, v in env)
    raise DeployError("--env values use every delimiter gcloud offers; simplify them")


def deploy_argv(config: Config) -> tuple[str, ...]:
    p = config.project
    argv = [
        "gcloud", "run", "deploy", config.service,
        f"--image={config.image}",
        f"--region={config.region}",
        f"--project={p}",
        f"--service-account={config.service_account}",
        "--allow-unauthenticated" if config.auth == "public" else "--no-allow-unauthenticated",
        f"--port={CONTAINER_PORT}",
        f"--concurrency={config.concurrency}",
        f"--min-instances={config.min_instances}",
        f"--max-instances={config.max_instances}",
        f"--cpu={config.cpu}",
        f"--memory={config.memory}",
        f"--timeout={config.timeout}",
        "--no-cpu-throttling",
        "--cpu-boost",
        f"--startup-probe={_kv(STARTUP_PROBE)}",
        f"--liveness-probe={_kv(LIVENESS_PROBE)}",
    ]
    if config.cloudsql_instance:
        argv.append(f"--add-cloudsql-instances={config.cloudsql_instance}")
    argv.append(f"--set-env-vars={_env_flag(config.env_vars)}")
    argv.append("--set-secrets=" + ",".join(f"{s.env}={s.name}:{s.version}" for s in config.secrets))
    argv.append("--quiet")
    return tuple(argv)


def build_steps(config: Config, rendered: Rendered) -> list[Step]:
    p = config.project
    pf = f"--project={p}"
    steps: list[Step] = []

    def add(phase: str, comment: str, argv: Iterable[str], **kw) -> None:
        if phase in config.phases:
            steps.append(Step(phase, comment, tuple(argv), **{k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items()}))

    services = ["run.googleapis.com", "artifactregistry.googleapis.com", "cloudbuild.googleapis.com",
                "secretmanager.googleapis.com", "iam.googleapis.com", "logging.googleapis.com",
                "monitoring.googleapis.com"]
    if config.cloudsql_instance:
        services.append("sqladmin.googleapis.com")
    if "bigquery" in config.phases:
        services.append("bigquery.googleapis.com")
    add("services", "enable the APIs the set-up uses",
        ["gcloud", "services", "enable", *services, pf])

    add("registry", "Artifact Registry Docker repository (Container Registry was shut down in 2025)",
        ["gcloud", "artifacts", "repositories", "create", config.repository,
         "--repository-format=docker", f"--location={config.region}",
         "--description=tallygate images", pf],
        unless=["gcloud", "artifacts", "repositories", "describe", config.repository,
                f"--location={config.region}", pf])

    add("build", "build the Dockerfile with Cloud Build and push it to Artifact Registry",
        ["gcloud", "builds", "submit", str(config.source), f"--tag={config.image}",
         "--ignore-file=.dockerignore", pf])

    member = f"serviceAccount:{config.service_account}"
    if config.create_service_account:
        add("identity", "runtime service account: the service's own identity, not the default compute account",
            ["gcloud", "iam", "service-accounts", "create", config.service_account.split("@")[0],
             f"--display-name={config.service} runtime", pf],
            unless=["gcloud", "iam", "service-accounts", "describe", config.service_account, pf])
    if config.cloudsql_instance:
        add("identity", "the runtime account may open Cloud SQL connections",
            ["gcloud", "projects", "add-iam-policy-binding", p, f"--member={member}",
             "--role=roles/cloudsql.client", "--condition=None", "--quiet"])

    for s in config.secrets:
        add("secrets", f"secret {s.name} holds {s.env}",
            ["gcloud", "secrets", "create", s.name, "--replication-policy=automatic", pf],
            unless=["gcloud", "secrets", "describe", s.name, pf])
        probe = ["gcloud", "secrets", "versions", "describe", s.version, f"--secret={s.name}", pf]
        if s.file:
            add("secrets", f"version {s.version} of {s.name} from the file {s.file} (added only if missing)",
                ["gcloud", "secrets", "versions", "add", s.name, f"--data-file={s.file}", pf],
                unless=probe)
        else:
            add("secrets", f"version {s.version} of {s.name} from ${s.env}, on stdin (added only if missing)",
                ["gcloud", "secrets", "versions", "add", s.name, "--data-file=-", pf],
                unless=probe, stdin_env=s.env)
        add("secrets", f"the runtime account may read {s.name} (checked by Cloud Run at deploy time)",
            ["gcloud", "secrets", "add-iam-policy-binding", s.name, f"--member={member}",
             "--role=roles/secretmanager.secretAccessor", pf])

    add("deploy", "deploy: --port (PORT is reserved), secrets pinned with --set-secrets, "
                  "CPU kept after responses for the ledger and metrics pipeline",
        deploy_argv(config))

    for invoker in config.invokers:
        add("access", f"{invoker} may invoke the private service (ID token in X-Serverless-Authorization)",
            ["gcloud", "run", "services", "add-iam-policy-binding", config.service,
             f"--region={config.region}", f"--member={invoker}", "--role=roles/run.invoker", pf])

    for name, path in rendered.metrics:
        add("metrics", f"log-based metric {name} (LogMetric file; created, or updated when it exists)",
            ["gcloud", "logging", "metrics", "create", name, f"--config-from-file={path}", pf],
            unless=["gcloud", "logging", "metrics", "describe", name, pf],
            otherwise=["gcloud", "logging", "metrics", "update", name, f"--config-from-file={path}", pf])

    if rendered.dashboard is not None:
        add("dashboard", f"dashboard {rendered.dashboard_name!r} (skipped when one with that name exists)",
            ["gcloud", "monitoring", "dashboards", "create", f"--config-from-file={rendered.dashboard}", pf],
            unless_output=["gcloud", "monitoring", "dashboards", "list",
                           f'--filter=displayName="{rendered.dashboard_name}"', "--format=value(name)", pf])

    for display, path in rendered.alerts:
        add("alerts", f"alert policy {display!r} (skipped when one with that name exists)",
            ["gcloud", "monitoring", "policies", "create", f"--policy-from-file={path}", pf],
            unless_output=["gcloud", "monitoring", "policies", "list",
                           f'--filter=displayName="{display}"', "--format=value(name)", pf])

    dataset_ref = f"{p}:{config.bq_dataset}"
    add("bigquery", f"BigQuery dataset {config.bq_dataset} in {config.bq_location} (the sink needs it to exist)",
        ["bq", f"--location={config.bq_location}", f"--project_id={p}", "mk", "--dataset",
         "--description=tallygate request log lines (Cloud Logging sink)", dataset_ref],
        unless=["bq", f"--project_id={p}", "show", "--dataset", dataset_ref])
    destination = f"bigquery.googleapis.com/projects/{p}/datasets/{config.bq_dataset}"
    add("bigquery", "log sink: only this service's request lines, into one partitioned table",
        ["gcloud", "logging", "sinks", "create", config.sink_name, destination,
         "--use-partitioned-tables", f"--log-filter={sink_filter(config)}",
         "--description=tallygate litellm_request lines", pf],
        unless=["gcloud", "logging", "sinks", "describe", config.sink_name, pf],
        otherwise=["gcloud", "logging", "sinks", "update", config.sink_name, destination,
                   "--use-partitioned-tables", f"--log-filter={sink_filter(config)}", pf])
    add("bigquery", "the sink's writer identity (already 'serviceAccount:...')",
        ["gcloud", "logging", "sinks", "describe", config.sink_name,
         "--format=value(writerIdentity)", pf],
        capture="WRITER_IDENTITY")
    add("bigquery", "the writer identity may write to BigQuery",
        ["gcloud", "projects", "add-iam-policy-binding", p, "--member=${WRITER_IDENTITY}",
         "--role=roles/bigquery.dataEditor", "--condition=None", "--quiet"])
    return steps


# ----------------------------------------------------------------------------- printing

def _dq(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")


def shell_quote(arg: str, variables: Iterable[str] = ()) -> str:
    """shlex.quote, except that ${NAME} of a captured variable stays expandable."""
    names = set(variables)
    if names and any(m.group(1) in names for m in _VAR_REF.finditer(arg)):
        out, pos = [], 0
        for m in _VAR_REF.finditer(arg):
            if m.group(1) in names:
                out.append(_dq(arg[pos:m.start()]) + "${" + m.group(1) + "}")
                pos = m.end()
        out.append(_dq(arg[pos:]))
        return '"' + "".join(out) + '"'
    return shlex.quote(arg)


def command_line(step: Step, variables: Iterable[str] = ()) -> str:
    """The step as one line of POSIX shell."""
    names = tuple(variables)

    def q(argv: Sequence[str]) -> str:
        return " ".join(shell_quote(a, names) for a in argv)

    line = q(step.argv)
    if step.stdin_env:
        line = f"printf '%s' \"${step.stdin_env}\" | {line}"
    if step.capture:
        line = f'{step.capture}="$({line})"'
    if step.unless and step.otherwise:
        line = f"if {q(step.unless)} >/dev/null 2>&1; then {q(step.otherwise)}; else {line}; fi"
    elif step.unless:
        line = f"{q(step.unless)} >/dev/null 2>&1 || {line}"
    elif step.unless_output:
        line = f'[ -n "$({q(step.unless_output)})" ] || {line}'
    return line


def write_script(config: Config, rendered: Rendered, steps: Sequence[Step], out: TextIO) -> None:
    out.write("#!/bin/sh\n")
    out.write(f"# tallygate deploy cloudrun: project {config.project}, region {config.region}, "
              f"service {config.service}\n")
    out.write(f"# image {config.image}\n")
    out.write(f"# filled-in monitoring files: {rendered.directory}\n")
    if not config.cloudsql_instance:
        out.write("# WARNING: no --cloudsql-instance: the ledger is SQLite inside the instance and is lost "
                  "when it stops; the log lines (and BigQuery) are then the only durable copy\n")
    if "secrets" in config.phases:
        missing = [s.env for s in config.secrets if not s.file]
        if missing:
            out.write(f"# secret values are read from the environment: {' '.join('$' + m for m in missing)}\n")
    out.write("set -eu\n")
    variables: list[str] = []
    phase = None
    for step in steps:
        if step.phase != phase:
            phase = step.phase
            out.write(f"\n# --- {phase}\n")
        out.write(f"# {step.comment}\n")
        out.write(command_line(step, variables) + "\n")
        if step.capture:
            variables.append(step.capture)
    out.write("\n# done. Useful next commands (not run):\n")
    out.write(f"#   gcloud run services describe {config.service} --region={config.region} "
              f"--project={config.project} --format='value(status.url)'\n")
    if "bigquery" in config.phases:
        out.write(f"#   PROJECT={config.project} BQ_DATASET={config.bq_dataset} envsubst "
                  "< deploy/bigquery/tokens_cost_per_tenant_day.sql | bq query --use_legacy_sql=false\n")
    if "alerts" in config.phases:
        out.write("#   Cloud SDKs older than the GA 'monitoring policies' group: "
                  "use 'gcloud alpha monitoring policies'\n")


# ----------------------------------------------------------------------------- running

Runner = Callable[..., subprocess.CompletedProcess]


def _fill(argv: Sequence[str], captured: dict[str, str]) -> list[str]:
    return [_VAR_REF.sub(lambda m: captured.get(m.group(1), m.group(0)), a) for a in argv]


def execute(steps: Sequence[Step], *, runner: Runner = subprocess.run,
            env: dict[str, str] | None = None, out: TextIO | None = None,
            err: TextIO | None = None) -> int:
    """Run the steps in order; stop at the first failure. Returns an exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    env = dict(os.environ if env is None else env)
    captured: dict[str, str] = {}
    policies_group: list[str] | None = None
    for index, step in enumerate(steps, 1):
        argv = _fill(step.argv, captured)
        if argv[:3] == ["gcloud", "monitoring", "policies"]:
            if policies_group is None:
                probe = runner(["gcloud", "monitoring", "policies", "--help"],
                               capture_output=True, text=True, env=env)
                policies_group = [] if probe.returncode == 0 else ["alpha"]
                if policies_group:
                    out.write("note: this Cloud SDK has no GA 'monitoring policies'; using 'gcloud alpha'\n")
            argv = ["gcloud", *policies_group, *argv[1:]]
        shown = command_line(Step(step.phase, step.comment, tuple(argv), stdin_env=step.stdin_env))
        out.write(f"[{index}/{len(steps)}] {step.comment}\n")
        if step.unless or step.unless_output:
            probe_argv = _fill(step.unless or step.unless_output or (), captured)
            probe = runner(probe_argv, capture_output=True, text=True, env=env)
            exists = probe.returncode == 0 if step.unless else bool((probe.stdout or "").strip()) and probe.returncode == 0
            if step.unless_output and probe.returncode != 0:
                err.write(f"error: step {index} ({step.phase}): probe failed with exit status "
                          f"{probe.returncode}: {command_line(Step(step.phase, '', tuple(probe_argv)))}\n")
                if probe.stderr:
                    err.write(probe.stderr if probe.stderr.endswith("\n") else probe.stderr + "\n")
                return probe.returncode or 1
            if exists:
                if step.otherwise:
                    argv = _fill(step.otherwise, captured)
                    shown = command_line(Step(step.phase, step.comment, tuple(argv)))
                else:
                    out.write("  exists, skipped\n")
                    continue
        out.write(f"  $ {shown}\n")
        out.flush()
        stdin_text: str | None = None
        if step.stdin_env:
            value = env.get(step.stdin_env)
            if not value:
                err.write(f"error: step {index} ({step.phase}): ${step.stdin_env} is not set; export it "
                          f"or pass --secret-file {step.stdin_env}=PATH\n")
                return 2
            stdin_text = value
        try:
            if step.capture:
                result = runner(argv, input=stdin_text, capture_output=True, text=True, env=env)
            else:
                result = runner(argv, input=stdin_text, text=True, env=env)
        except FileNotFoundError:
            err.write(f"error: step {index} ({step.phase}): {argv[0]} is not installed or not on PATH\n")
            return 127
        if result.returncode != 0:
            err.write(f"error: step {index} of {len(steps)} ({step.phase}) failed with exit status "
                      f"{result.returncode}:\n  {shown}\n")
            if step.capture and result.stderr:
                err.write(result.stderr if result.stderr.endswith("\n") else result.stderr + "\n")
            err.write("fix the cause and run the command again: the steps that already succeeded are skipped\n")
            return result.returncode
        if step.capture:
            value = (result.stdout or "").strip()
            if not value:
                err.write(f"error: step {index} ({step.phase}): {argv[0]} printed nothing for {step.capture}\n")
                return 1
            captured[step.capture] = value
    out.write("done\n")
    return 0


# ----------------------------------------------------------------------------- entry point

def plan(args: argparse.Namespace, render_dir: Path) -> tuple[Config, Rendered, list[Step]]:
    config = build_config(args)
    rendered = render(config, render_dir)
    return config, rendered, build_steps(config, rendered)


def run(args: argparse.Namespace) -> int:
    """`tallygate deploy cloudrun`; returns the process exit status."""
    try:
        config = build_config(args)
        if args.render_dir:
            render_dir = Path(args.render_dir)
        else:
            render_dir = Path(tempfile.mkdtemp(prefix="tallygate-deploy-"))
        rendered = render(config, render_dir)
        steps = build_steps(config, rendered)
        if args.dry_run:
            write_script(config, rendered, steps, sys.stdout)
            return 0
        if "build" in config.phases and not (config.source / "Dockerfile").is_file():
            raise DeployError(f"no Dockerfile in {config.source}: run from the repository root or pass --source")
        missing = [tool for tool in {s.argv[0] for s in steps} if shutil.which(tool) is None]
        if missing:
            raise DeployError(f"{', '.join(sorted(missing))} not found on PATH: install the Google Cloud SDK")
        return execute(steps)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tallygate deploy cloudrun",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
