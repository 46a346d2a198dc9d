"""The set-up as an ordered list of gcloud and bq commands, each safe to run again."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .config import Config
from .constants import CONTAINER_PORT, LIVENESS_PROBE, LOG_MESSAGE, STARTUP_PROBE, DeployError
from .templates import Rendered


@dataclass(frozen=True)
class Step:
    """One command. The optional fields make the whole set-up safe to run again."""

    phase: str
    comment: str
    argv: tuple[str, ...]
    unless: tuple[str, ...] | None = None  # skip when this probe exits 0
    unless_output: tuple[str, ...] | None = None  # skip when this probe prints anything
    otherwise: tuple[str, ...] | None = None  # with `unless`: run this instead (update)
    stdin_env: str | None = None  # the value of this env var goes to stdin
    capture: str | None = None  # keep stdout as ${NAME} for later steps


def sink_filter(config: Config) -> str:
    return (
        f'resource.type="cloud_run_revision"'
        f' AND resource.labels.service_name="{config.service}"'
        f' AND logName="projects/{config.project}/logs/run.googleapis.com%2Fstdout"'
        f' AND jsonPayload.message="{LOG_MESSAGE}"'
    )


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
        "gcloud",
        "run",
        "deploy",
        config.service,
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

    def add(phase: str, comment: str, argv: Iterable[str], **kw: Any) -> None:
        if phase in config.phases:
            options: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items()}
            steps.append(Step(phase, comment, tuple(argv), **options))

    services = [
        "run.googleapis.com",
        "artifactregistry.googleapis.com",
        "cloudbuild.googleapis.com",
        "secretmanager.googleapis.com",
        "iam.googleapis.com",
        "logging.googleapis.com",
        "monitoring.googleapis.com",
    ]
    if config.cloudsql_instance:
        services.append("sqladmin.googleapis.com")
    if "bigquery" in config.phases:
        services.append("bigquery.googleapis.com")
    add("services", "enable the APIs the set-up uses", ["gcloud", "services", "enable", *services, pf])

    add(
        "registry",
        "Artifact Registry Docker repository (Container Registry was shut down in 2025)",
        [
            "gcloud",
            "artifacts",
            "repositories",
            "create",
            config.repository,
            "--repository-format=docker",
            f"--location={config.region}",
            "--description=tallygate images",
            pf,
        ],
        unless=[
            "gcloud",
            "artifacts",
            "repositories",
            "describe",
            config.repository,
            f"--location={config.region}",
            pf,
        ],
    )

    add(
        "build",
        "build the Dockerfile with Cloud Build and push it to Artifact Registry",
        ["gcloud", "builds", "submit", str(config.source), f"--tag={config.image}", "--ignore-file=.dockerignore", pf],
    )

    member = f"serviceAccount:{config.service_account}"
    if config.create_service_account:
        add(
            "identity",
            "runtime service account: the service's own identity, not the default compute account",
            [
                "gcloud",
                "iam",
                "service-accounts",
                "create",
                config.service_account.split("@")[0],
                f"--display-name={config.service} runtime",
                pf,
            ],
            unless=["gcloud", "iam", "service-accounts", "describe", config.service_account, pf],
        )
    if config.cloudsql_instance:
        add(
            "identity",
            "the runtime account may open Cloud SQL connections",
            [
                "gcloud",
                "projects",
                "add-iam-policy-binding",
                p,
                f"--member={member}",
                "--role=roles/cloudsql.client",
                "--condition=None",
                "--quiet",
            ],
        )

    for s in config.secrets:
        add(
            "secrets",
            f"secret {s.name} holds {s.env}",
            ["gcloud", "secrets", "create", s.name, "--replication-policy=automatic", pf],
            unless=["gcloud", "secrets", "describe", s.name, pf],
        )
        probe = ["gcloud", "secrets", "versions", "describe", s.version, f"--secret={s.name}", pf]
        if s.file:
            add(
                "secrets",
                f"version {s.version} of {s.name} from the file {s.file} (added only if missing)",
                ["gcloud", "secrets", "versions", "add", s.name, f"--data-file={s.file}", pf],
                unless=probe,
            )
        else:
            add(
                "secrets",
                f"version {s.version} of {s.name} from ${s.env}, on stdin (added only if missing)",
                ["gcloud", "secrets", "versions", "add", s.name, "--data-file=-", pf],
                unless=probe,
                stdin_env=s.env,
            )
        add(
            "secrets",
            f"the runtime account may read {s.name} (checked by Cloud Run at deploy time)",
            [
                "gcloud",
                "secrets",
                "add-iam-policy-binding",
                s.name,
                f"--member={member}",
                "--role=roles/secretmanager.secretAccessor",
                pf,
            ],
        )

    add(
        "deploy",
        "deploy: --port (PORT is reserved), secrets pinned with --set-secrets, "
        "CPU kept after responses for the ledger and metrics pipeline",
        deploy_argv(config),
    )

    for invoker in config.invokers:
        add(
            "access",
            f"{invoker} may invoke the private service (ID token in X-Serverless-Authorization)",
            [
                "gcloud",
                "run",
                "services",
                "add-iam-policy-binding",
                config.service,
                f"--region={config.region}",
                f"--member={invoker}",
                "--role=roles/run.invoker",
                pf,
            ],
        )

    for name, path in rendered.metrics:
        add(
            "metrics",
            f"log-based metric {name} (LogMetric file; created, or updated when it exists)",
            ["gcloud", "logging", "metrics", "create", name, f"--config-from-file={path}", pf],
            unless=["gcloud", "logging", "metrics", "describe", name, pf],
            otherwise=["gcloud", "logging", "metrics", "update", name, f"--config-from-file={path}", pf],
        )

    if rendered.dashboard is not None:
        add(
            "dashboard",
            f"dashboard {rendered.dashboard_name!r} (skipped when one with that name exists)",
            ["gcloud", "monitoring", "dashboards", "create", f"--config-from-file={rendered.dashboard}", pf],
            unless_output=[
                "gcloud",
                "monitoring",
                "dashboards",
                "list",
                f'--filter=displayName="{rendered.dashboard_name}"',
                "--format=value(name)",
                pf,
            ],
        )

    for display, path in rendered.alerts:
        add(
            "alerts",
            f"alert policy {display!r} (skipped when one with that name exists)",
            ["gcloud", "monitoring", "policies", "create", f"--policy-from-file={path}", pf],
            unless_output=[
                "gcloud",
                "monitoring",
                "policies",
                "list",
                f'--filter=displayName="{display}"',
                "--format=value(name)",
                pf,
            ],
        )

    dataset_ref = f"{p}:{config.bq_dataset}"
    add(
        "bigquery",
        f"BigQuery dataset {config.bq_dataset} in {config.bq_location} (the sink needs it to exist)",
        [
            "bq",
            f"--location={config.bq_location}",
            f"--project_id={p}",
            "mk",
            "--dataset",
            "--description=tallygate request log lines (Cloud Logging sink)",
            dataset_ref,
        ],
        unless=["bq", f"--project_id={p}", "show", "--dataset", dataset_ref],
    )
    destination = f"bigquery.googleapis.com/projects/{p}/datasets/{config.bq_dataset}"
    add(
        "bigquery",
        "log sink: only this service's request lines, into one partitioned table",
        [
            "gcloud",
            "logging",
            "sinks",
            "create",
            config.sink_name,
            destination,
            "--use-partitioned-tables",
            f"--log-filter={sink_filter(config)}",
            "--description=tallygate litellm_request lines",
            pf,
        ],
        unless=["gcloud", "logging", "sinks", "describe", config.sink_name, pf],
        otherwise=[
            "gcloud",
            "logging",
            "sinks",
            "update",
            config.sink_name,
            destination,
            "--use-partitioned-tables",
            f"--log-filter={sink_filter(config)}",
            pf,
        ],
    )
    add(
        "bigquery",
        "the sink's writer identity (already 'serviceAccount:...')",
        ["gcloud", "logging", "sinks", "describe", config.sink_name, "--format=value(writerIdentity)", pf],
        capture="WRITER_IDENTITY",
    )
    add(
        "bigquery",
        "the writer identity may write to BigQuery",
        [
            "gcloud",
            "projects",
            "add-iam-policy-binding",
            p,
            "--member=${WRITER_IDENTITY}",
            "--role=roles/bigquery.dataEditor",
            "--condition=None",
            "--quiet",
        ],
    )
    return steps
