"""The set-up as an ordered list of gcloud and bq commands, each safe to run again."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .constants import (
    BUILD_ROLES,
    CONTAINER_PORT,
    LIVENESS_PROBE,
    LOG_MESSAGE,
    POLICIES_TRACK,
    POLICY_LABEL,
    RUNTIME_ROLES,
    STARTUP_PROBE,
    DeployError,
)
from .templates import Rendered


@dataclass(frozen=True)
class Step:
    """One command. The optional fields make the whole set-up safe to run again; the runner
    (execute.py) and the printed script (script.py) give each the same meaning."""

    phase: str
    comment: str
    argv: tuple[str, ...]
    unless: tuple[str, ...] | None = None  # the resource exists when this probe exits 0: skip, or `otherwise`
    find: tuple[str, ...] | None = None  # prints the existing resource's name (kept as ${FOUND}), or nothing
    otherwise: tuple[str, ...] | None = None  # with `unless` or `find`: update in place (none: skip)
    stdin_env: str | None = None  # the value of this env var goes to stdin
    stdin_password: bool = False  # a new random password goes to stdin
    stdin_from: tuple[str, ...] | None = None  # this command's output, put in `stdin_format`, goes to stdin
    stdin_format: str = "%s"
    probe_stdin: bool = False  # the `unless` probe gets the same stdin (curl's token header)
    capture: str | None = None  # keep stdout (with `find`: the found name, else the command's) as ${NAME}
    retry: bool = False  # IAM is eventually consistent: retried after RETRY_DELAYS
    choose: tuple[str, str, str] | None = None  # (NAME, value when argv exits 0, value otherwise)


FOUND = "FOUND"


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


IMAGE_DIGEST = "IMAGE_DIGEST"


def deployed_image(config: Config) -> str:
    """The image by digest: what runs is exactly what was built, whatever the tag says later."""
    return f"{config.image_name}@${{{IMAGE_DIGEST}}}"


def deploy_argv(config: Config) -> tuple[str, ...]:
    p = config.project
    argv = [
        "gcloud",
        "run",
        "deploy",
        config.service,
        f"--image={deployed_image(config)}",
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
    # behind the load balancer, nothing reaches the run.app URL from outside; set either way,
    # so dropping --public-domain opens it again
    argv.append("--ingress=internal-and-cloud-load-balancing" if config.public_domain else "--ingress=all")
    argv.extend(config.vpc)
    argv.append(f"--set-env-vars={_env_flag(config.env_vars)}")
    argv.append("--set-secrets=" + ",".join(f"{s.env}={s.name}:{s.version}" for s in config.secrets))
    argv.append("--quiet")
    return tuple(argv)


def _grant(project: str, member: str, role: str) -> tuple[str, ...]:
    return (
        "gcloud",
        "projects",
        "add-iam-policy-binding",
        project,
        f"--member={member}",
        f"--role={role}",
        "--condition=None",
        "--quiet",
        "--format=none",
    )


def _sa_email(account_id: str, project: str) -> str:
    if ":" in project:  # domain-scoped project: domain:name
        domain, name = project.split(":", 1)
        return f"{account_id}@{name}.{domain}.iam.gserviceaccount.com"
    return f"{account_id}@{project}.iam.gserviceaccount.com"


def build_account(config: Config) -> str:
    return _sa_email(f"{config.service}-build"[:30].rstrip("-"), config.project)


def job_name(config: Config) -> str:
    return f"{config.service}-db-init"[:63]


MONITORING_API = "https://monitoring.googleapis.com/v3"
TOKEN_HEADER = "Authorization: Bearer %s\n"  # curl reads it with -H @- : the token stays off the command line


def _curl(method: str, url: str, body: Path | None = None) -> tuple[str, ...]:
    argv = ["curl", "--silent", "--show-error", "--fail", "-H", "@-", "-X", method]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--data-binary", f"@{body}"]
    return (*argv, "-o", "/dev/null", url)


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
    if "edge" in config.phases:
        services.append("compute.googleapis.com")
    if "budget" in config.phases:
        services.append("billingbudgets.googleapis.com")
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
        for role in RUNTIME_ROLES:
            add(
                "identity",
                f"the runtime account gets {role} (Cloud SQL connections; retried: IAM is eventually consistent)",
                _grant(config.sql_project, member, role),
                retry=True,
            )

    builder = build_account(config)
    add(
        "build",
        "build service account: new projects build as the default compute account, which may not push images",
        [
            "gcloud",
            "iam",
            "service-accounts",
            "create",
            builder.split("@")[0],
            f"--display-name={config.service} image builds",
            pf,
        ],
        unless=["gcloud", "iam", "service-accounts", "describe", builder, pf],
    )
    for role in BUILD_ROLES:
        add(
            "build",
            f"the build account gets {role} (source, logs, Artifact Registry push)",
            _grant(p, f"serviceAccount:{builder}", role),
            retry=True,
        )
    add(
        "build",
        "build the Dockerfile with Cloud Build as that account and push it to Artifact Registry",
        [
            "gcloud",
            "builds",
            "submit",
            str(config.source),
            f"--tag={config.image}",
            "--ignore-file=.dockerignore",
            f"--service-account=projects/{p}/serviceAccounts/{builder}",
            "--default-buckets-behavior=regional-user-owned-bucket",
            f"--region={config.region}",
            pf,
        ],
    )
    if any(ph in config.phases for ph in ("schema", "deploy")):
        steps.append(
            Step(
                "deploy" if "build" not in config.phases else "build",
                "the digest the tag points to: the service and the schema job run exactly this image",
                (
                    "gcloud",
                    "artifacts",
                    "docker",
                    "images",
                    "describe",
                    config.image,
                    "--format=value(image_summary.digest)",
                    pf,
                ),
                capture=IMAGE_DIGEST,
            )
        )

    for s in config.secrets:
        add(
            "secrets",
            f"secret {s.name} holds {s.env}",
            ["gcloud", "secrets", "create", s.name, "--replication-policy=automatic", pf],
            unless=["gcloud", "secrets", "describe", s.name, pf],
        )
        probe = ["gcloud", "secrets", "versions", "describe", s.version, f"--secret={s.name}", pf]
        add_version = ["gcloud", "secrets", "versions", "add", s.name, pf]
        if s.file:
            add(
                "secrets",
                f"version {s.version} of {s.name} from the file {s.file} (added only if missing)",
                [*add_version[:-1], f"--data-file={s.file}", pf],
                unless=probe,
            )
        elif s.env == "PGPASSWORD":
            add(
                "secrets",
                f"version {s.version} of {s.name}: a new random password (added only if missing; "
                "the database user is given it below)",
                [*add_version[:-1], "--data-file=-", pf],
                unless=probe,
                stdin_password=True,
            )
        else:
            add(
                "secrets",
                f"version {s.version} of {s.name} from ${s.env}, on stdin (added only if missing)",
                [*add_version[:-1], "--data-file=-", pf],
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
                "--format=none",
                pf,
            ],
            retry=True,
        )

    if config.cloudsql_instance:
        sql_id, spf = config.sql_instance_id, f"--project={config.sql_project}"
        backups = ["--backup-start-time=03:00", "--enable-point-in-time-recovery", "--retained-transaction-log-days=7"]
        add(
            "database",
            f"Cloud SQL for PostgreSQL instance {sql_id}: adopted when it exists (backups and point-in-time "
            "recovery turned on), created otherwise (takes several minutes)",
            [
                "gcloud",
                "sql",
                "instances",
                "create",
                sql_id,
                f"--database-version={config.sql_version}",
                "--edition=enterprise",
                f"--tier={config.sql_tier}",
                f"--region={config.region}",
                f"--availability-type={config.sql_availability}",
                "--storage-auto-increase",
                *backups,
                "--deletion-protection",
                spf,
            ],
            unless=["gcloud", "sql", "instances", "describe", sql_id, "--format=value(name)", spf],
            otherwise=["gcloud", "sql", "instances", "patch", sql_id, *backups, "--quiet", spf],
        )
        add(
            "database",
            f"database {config.pg_database}",
            ["gcloud", "sql", "databases", "create", config.pg_database, f"--instance={sql_id}", spf],
            unless=[
                "gcloud",
                "sql",
                "databases",
                "describe",
                config.pg_database,
                f"--instance={sql_id}",
                "--format=value(name)",
                spf,
            ],
        )
        secret = config.password_secret
        assert secret is not None
        password = ("gcloud", "secrets", "versions", "access", secret.version, f"--secret={secret.name}", pf)
        users = ["gcloud", "sql", "users"]
        # the password reaches gcloud in a flags file on stdin, never on a command line
        add(
            "database",
            f"user {config.pg_user} with the password of {secret.name} version {secret.version} "
            "(set again when the user exists, so the secret and the database agree)",
            [*users, "create", config.pg_user, f"--instance={sql_id}", "--flags-file=-", spf],
            unless=[*users, "describe", config.pg_user, f"--instance={sql_id}", "--format=value(name)", spf],
            otherwise=[*users, "set-password", config.pg_user, f"--instance={sql_id}", "--flags-file=-", spf],
            stdin_from=password,
            stdin_format='"--password": "%s"\n',
        )

    env = _env_flag(config.env_vars)
    pw = config.password_secret
    add(
        "schema",
        "the ledger schema: a Cloud Run job running `tallygate db init` (idempotent) with the service's "
        "image, account and database settings, run now and waited for",
        [
            "gcloud",
            "run",
            "jobs",
            "deploy",
            job_name(config),
            f"--image={deployed_image(config)}",
            f"--region={config.region}",
            f"--service-account={config.service_account}",
            f"--set-cloudsql-instances={config.cloudsql_instance}",
            f"--set-env-vars={env}",
            *([f"--set-secrets=PGPASSWORD={pw.name}:{pw.version}"] if pw else []),
            *config.vpc,
            "--command=tallygate",
            "--args=db,init",
            "--tasks=1",
            "--max-retries=3",
            "--task-timeout=600",
            "--execute-now",
            "--wait",
            pf,
        ],
    )

    add(
        "deploy",
        "deploy: the image by digest, --port (PORT is reserved), secrets pinned with --set-secrets, "
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
                "--format=none",
                pf,
            ],
            retry=True,
        )

    if config.public_domain:
        _edge_steps(add, config)

    for name, path in rendered.metrics:
        add(
            "metrics",
            f"log-based metric {name} (LogMetric file; created, or updated when it exists)",
            ["gcloud", "logging", "metrics", "create", name, f"--config-from-file={path}", pf],
            unless=["gcloud", "logging", "metrics", "describe", name, "--format=value(name)", pf],
            otherwise=["gcloud", "logging", "metrics", "update", name, f"--config-from-file={path}", pf],
        )

    if rendered.dashboard is not None:
        add(
            "dashboard",
            f"dashboard {rendered.dashboard_name!r}: found by that name and updated in place, created otherwise",
            ["gcloud", "monitoring", "dashboards", "create", f"--config-from-file={rendered.dashboard}", pf],
            find=[
                "gcloud",
                "monitoring",
                "dashboards",
                "list",
                f'--filter=displayName="{rendered.dashboard_name}"',
                "--format=value(name)",
                "--limit=1",
                pf,
            ],
            otherwise=[
                "gcloud",
                "monitoring",
                "dashboards",
                "update",
                f"${{{FOUND}}}",
                f"--config-from-file={rendered.dashboard}",
                pf,
            ],
        )

    channel_vars: list[str] = []
    for i, email in enumerate(config.alert_emails, 1):
        var = f"ALERT_CHANNEL_{i}"
        if "channels" in config.phases:  # (--only alerts: the e-mail channels are not looked up)
            channel_vars.append(var)
        add(
            "channels",
            f"e-mail notification channel for {email} (found by its address, created otherwise)",
            [
                "gcloud",
                "beta",
                "monitoring",
                "channels",
                "create",
                "--type=email",
                f"--display-name={config.service} alerts: {email}",
                f"--channel-labels=email_address={email}",
                "--format=value(name)",
                pf,
            ],
            find=[
                "gcloud",
                "beta",
                "monitoring",
                "channels",
                "list",
                f'--filter=type="email" AND labels.email_address="{email}"',
                "--format=value(name)",
                "--limit=1",
                pf,
            ],
            capture=var,
        )
    channels = ",".join([*config.notification_channels, *(f"${{{v}}}" for v in channel_vars)])

    for name, body in rendered.slo_service:
        _rest_upsert(
            add,
            "slo",
            f"Monitoring service {name} (the SLOs hang off it)",
            body,
            f"{MONITORING_API}/projects/{p}/services",
            name,
        )
    for name, body in rendered.slos:
        service_id = rendered.slo_service[0][0]
        _rest_upsert(
            add,
            "slo",
            f"service level objective {name} (Monitoring API: gcloud has no SLO commands)",
            body,
            f"{MONITORING_API}/projects/{p}/services/{service_id}/serviceLevelObjectives",
            name,
            id_param="serviceLevelObjectiveId",
        )

    if rendered.alerts:
        _choose_policies_track(add, "alerts")
    for key, display, path in rendered.alerts:
        _upsert_policy(add, "alerts", config, key, display, f"--policy-from-file={path}", channels)

    uptime_name = f"{config.service} /live"
    uptime_common = ["--path=/live", "--period=1", "--timeout=10"]
    if config.auth == "iam":
        uptime_common.append("--service-agent-auth=oidc-token")
    add(
        "uptime",
        f"uptime check {uptime_name!r} on /live from several regions (found by name, updated in place)",
        [
            "gcloud",
            "monitoring",
            "uptime",
            "create",
            uptime_name,
            *(
                # behind the load balancer only its domain is reachable from outside
                ["--resource-type=uptime-url", f"--resource-labels=host={config.public_domain},project_id={p}"]
                if config.public_domain
                else [
                    "--resource-type=cloud-run-revision",
                    f"--resource-labels=project_id={p},service_name={config.service},location={config.region}",
                ]
            ),
            "--protocol=https",
            *uptime_common,
            "--status-classes=2xx",
            f"--user-labels=service={config.service},app=tallygate",
            pf,
        ],
        find=[
            "gcloud",
            "monitoring",
            "uptime",
            "list-configs",
            f'--filter=displayName="{uptime_name}"',
            "--format=value(name)",
            "--limit=1",
            pf,
        ],
        otherwise=[
            "gcloud",
            "monitoring",
            "uptime",
            "update",
            f"${{{FOUND}}}",
            *uptime_common,
            "--set-status-classes=2xx",
            pf,
        ],
    )
    if rendered.uptime_policy is not None:
        key, display, _path, policy_format = rendered.uptime_policy
        if not (rendered.alerts and "alerts" in config.phases):  # (--only uptime: not chosen yet)
            _choose_policies_track(add, "uptime")
        _upsert_policy(
            add,
            "uptime",
            config,
            key,
            display,
            "--policy-from-file=-",  # stdin: the check's ID is known only now
            channels,
            stdin_from=[
                "gcloud",
                "monitoring",
                "uptime",
                "list-configs",
                f'--filter=displayName="{uptime_name}"',
                "--format=value(name.basename())",
                "--limit=1",
                pf,
            ],
            stdin_format=policy_format,
        )

    if config.billing_account:
        _budget_step(add, config, channels)

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
        "log sink: only this service's request lines, into one partitioned table; created disabled, so it "
        "exports nothing before its writer identity may write (updated in place when it exists)",
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
            "--disabled",
            pf,
        ],
        unless=["gcloud", "logging", "sinks", "describe", config.sink_name, "--format=value(name)", pf],
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
        "the writer identity may write to BigQuery (retried: a new identity takes a while to be known to IAM)",
        _grant(p, "${WRITER_IDENTITY}", "roles/bigquery.dataEditor"),
        retry=True,
    )
    add(
        "bigquery",
        "the sink starts exporting, now that it may write",
        ["gcloud", "logging", "sinks", "update", config.sink_name, "--no-disabled", pf],
    )
    return steps


BUDGET_THRESHOLDS = ("percent=0.5", "percent=0.9", "percent=1.0", "percent=1.0,basis=forecasted-spend")


def _budget_step(add: Any, config: Config, channels: str) -> None:
    """A monthly budget on the project's spend (Cloud Logging's ingestion is the cost that can
    surprise: docs/deployment.md), alerting the same channels as the policies; found by its
    display name and updated in place."""
    name = f"{config.service} ({config.project}) monthly"
    account = f"--billing-account={config.billing_account}"
    budgets = ["gcloud", "billing", "budgets"]
    scope = [f"--budget-amount={_amount(config.budget_amount)}", f"--filter-projects=projects/{config.project}"]
    notify = [f"--notifications-rule-monitoring-notification-channels={channels}"] if channels else []
    add(
        "budget",
        f"budget {name!r}: {_amount(config.budget_amount)} a month in the billing account's currency, alerts at "
        "50%, 90%, 100% and 100% forecast (found by name, updated in place)",
        [
            *budgets,
            "create",
            account,
            f"--display-name={name}",
            *scope,
            "--calendar-period=month",
            *(f"--threshold-rule={rule}" for rule in BUDGET_THRESHOLDS),
            *notify,
        ],
        find=[*budgets, "list", account, f'--filter=displayName="{name}"', "--format=value(name)", "--limit=1"],
        otherwise=[
            *budgets,
            "update",
            f"${{{FOUND}}}",
            account,
            *scope,
            "--calendar-period=month",
            "--clear-threshold-rules",
            *(f"--add-threshold-rule={rule}" for rule in BUDGET_THRESHOLDS),
            *notify,
        ],
    )


def _amount(value: float) -> str:
    return f"{value:.2f}"


def _choose_policies_track(add: Any, phase: str) -> None:
    add(
        phase,
        "gcloud monitoring policies is GA in recent Cloud SDKs and alpha only in older ones (528): "
        "use whichever this SDK has",
        ["gcloud", "monitoring", "policies", "--help"],
        choose=(POLICIES_TRACK, "", "alpha"),
    )


def _upsert_policy(
    add: Any, phase: str, config: Config, key: str, display: str, source: str, channels: str, **stdin: Any
) -> None:
    """An alert policy found by its label POLICY_LABEL=key (and the service) and updated in place,
    created otherwise; `source` is its --policy-from-file flag."""
    track, pf = f"${{{POLICIES_TRACK}}}", f"--project={config.project}"
    channel_flag = [f"--notification-channels={channels}"] if channels else []
    set_channels = [f"--set-notification-channels={channels}"] if channels else []
    policies = ["gcloud", track, "monitoring", "policies"]
    add(
        phase,
        f"alert policy {display!r}: found by its label {POLICY_LABEL}={key} and updated in place, created otherwise",
        [*policies, "create", source, *channel_flag, pf],
        find=[
            *policies,
            "list",
            f"--filter=userLabels.{POLICY_LABEL}={key} AND userLabels.service={config.service}",
            "--format=value(name)",
            "--limit=1",
            pf,
        ],
        otherwise=[*policies, "update", f"${{{FOUND}}}", source, *set_channels, pf],
        **stdin,
    )


def _rest_upsert(
    add: Any, phase: str, comment: str, body: Path, collection: str, rid: str, id_param: str = "serviceId"
) -> None:
    """A Monitoring API resource by its ID: PATCHed when it exists, POSTed otherwise (curl with a
    token from gcloud; it reaches curl on stdin)."""
    token = ("gcloud", "auth", "print-access-token")
    add(
        phase,
        comment + " (updated in place when it exists)",
        _curl("POST", f"{collection}?{id_param}={rid}", body),
        unless=_curl("GET", f"{collection}/{rid}"),
        otherwise=_curl("PATCH", f"{collection}/{rid}", body),
        stdin_from=token,
        stdin_format=TOKEN_HEADER,
        probe_stdin=True,
    )


def _edge_steps(add: Any, config: Config) -> None:
    """External HTTPS load balancer -> serverless NEG -> the service, with a Google-managed
    certificate and a Cloud Armor policy: per-IP rate limiting, and the preconfigured WAF rules
    in preview (prompts are arbitrary text: SQLi/XSS signatures match them; read the logs for
    false positives before enforcing)."""
    s, p = config.service, config.project
    pf = f"--project={p}"
    c = ["gcloud", "compute"]

    def ensure(comment: str, kind: list[str], name: str, create: list[str], where: list[str]) -> None:
        add(
            "edge",
            comment,
            [*c, *kind, "create", name, *create, *where, pf],
            unless=[*c, *kind, "describe", name, *where, "--format=value(name)", pf],
        )

    region, glob = [f"--region={config.region}"], ["--global"]
    neg, backend, armor = f"{s}-neg", f"{s}-backend", f"{s}-armor"
    ensure(
        "serverless network endpoint group: the load balancer's way to the service",
        ["network-endpoint-groups"],
        neg,
        ["--network-endpoint-type=serverless", f"--cloud-run-service={s}"],
        region,
    )
    ensure(
        "backend service of the load balancer",
        ["backend-services"],
        backend,
        ["--load-balancing-scheme=EXTERNAL_MANAGED", "--enable-logging"],
        glob,
    )
    add(
        "edge",
        "the endpoint group behind the backend service (once)",
        [
            *c,
            "backend-services",
            "add-backend",
            backend,
            f"--network-endpoint-group={neg}",
            f"--network-endpoint-group-region={config.region}",
            "--global",
            pf,
        ],
        find=[*c, "backend-services", "describe", backend, "--global", "--format=value(backends.group)", pf],
    )
    ensure("Cloud Armor policy", ["security-policies"], armor, ["--type=CLOUD_ARMOR", f"--description={s} edge"], [])
    rate = [
        "--action=rate-based-ban",
        "--expression=true",
        f"--rate-limit-threshold-count={config.armor_rate_limit}",
        "--rate-limit-threshold-interval-sec=60",
        "--ban-duration-sec=300",
        "--conform-action=allow",
        "--exceed-action=deny-429",
        "--enforce-on-key=IP",
        f"--security-policy={armor}",
    ]
    waf = [
        "--action=deny-403",
        "--expression=evaluatePreconfiguredWaf('sqli-v33-stable', {'sensitivity': 1}) || "
        "evaluatePreconfiguredWaf('xss-v33-stable', {'sensitivity': 1}) || "
        "evaluatePreconfiguredWaf('lfi-v33-stable', {'sensitivity': 1}) || "
        "evaluatePreconfiguredWaf('rce-v33-stable', {'sensitivity': 1})",
        "--preview",
        f"--security-policy={armor}",
    ]
    for priority, flags, what in (
        ("1000", rate, f"per-IP rate limit: {config.armor_rate_limit} requests a minute, then 429 and a 5-minute ban"),
        ("2000", waf, "preconfigured WAF rules (SQLi, XSS, LFI, RCE at sensitivity 1), in preview"),
    ):
        rules = [*c, "security-policies", "rules"]
        add(
            "edge",
            f"Cloud Armor rule {priority}: {what} (updated in place when it exists)",
            [*rules, "create", priority, *flags, pf],
            unless=[*rules, "describe", priority, f"--security-policy={armor}", "--format=value(priority)", pf],
            otherwise=[*rules, "update", priority, *flags, pf],
        )
    add(
        "edge",
        "the backend service is protected by the Cloud Armor policy",
        [*c, "backend-services", "update", backend, f"--security-policy={armor}", "--global", pf],
    )
    ensure(
        f"Google-managed certificate for {config.public_domain} (active once DNS points at the address)",
        ["ssl-certificates"],
        f"{s}-cert",
        [f"--domains={config.public_domain}"],
        glob,
    )
    ensure("URL map: every path to the backend", ["url-maps"], f"{s}-lb", [f"--default-service={backend}"], glob)
    ensure(
        "HTTPS proxy",
        ["target-https-proxies"],
        f"{s}-https",
        [f"--url-map={s}-lb", f"--ssl-certificates={s}-cert"],
        glob,
    )
    ensure("the load balancer's global IP address", ["addresses"], f"{s}-ip", ["--ip-version=IPV4"], glob)
    ensure(
        "forwarding rule: HTTPS on the address to the proxy",
        ["forwarding-rules"],
        f"{s}-https",
        [
            f"--address={s}-ip",
            f"--target-https-proxy={s}-https",
            "--ports=443",
            "--load-balancing-scheme=EXTERNAL_MANAGED",
        ],
        glob,
    )
