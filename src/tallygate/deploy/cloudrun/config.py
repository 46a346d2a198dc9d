"""The options, checked and resolved into one Config (image name, service account, secrets,
environment, phases); every bad option raises DeployError naming it."""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .constants import (
    _DATASET_RE,
    _ENV_NAME_RE,
    _MEMORY_RE,
    _PROJECT_RE,
    _REGION_RE,
    _REPO_RE,
    _SA_ID_RE,
    _SERVICE_RE,
    _SQL_INSTANCE_RE,
    _TAG_RE,
    ALERT_THRESHOLDS,
    CONTAINER_PORT,
    DATABASE_PHASES,
    MONITORING_PHASES,
    PHASES,
    RESERVED_ENVS,
    SECRET_ENVS,
    SECRET_LIKE_ENVS,
    DeployError,
)


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
    image: str  # REGION-docker.pkg.dev/PROJECT/REPO/SERVICE:TAG, what the build pushes
    source: Path
    assets: Path
    service_account: str
    create_service_account: bool
    cloudsql_instance: str | None  # None only with --sqlite-ledger
    sql_tier: str
    sql_version: str
    sql_availability: str
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
    alert_emails: tuple[str, ...]
    public_domain: str | None
    armor_rate_limit: int
    vpc: tuple[str, ...]  # the VPC egress flags of the service and the schema job
    billing_account: str | None
    budget_amount: float
    thresholds: dict[str, float]
    phases: tuple[str, ...]

    @property
    def image_name(self) -> str:
        """The image without its tag: the deploy adds @DIGEST."""
        return self.image.rsplit(":", 1)[0]

    @property
    def sql_project(self) -> str:
        assert self.cloudsql_instance
        return self.cloudsql_instance.rsplit(":", 2)[0]

    @property
    def sql_instance_id(self) -> str:
        assert self.cloudsql_instance
        return self.cloudsql_instance.rsplit(":", 1)[1]

    @property
    def password_secret(self) -> SecretSpec | None:
        return next((s for s in self.secrets if s.env == "PGPASSWORD"), None)

    @property
    def env_vars(self) -> list[tuple[str, str]]:
        env: list[tuple[str, str]] = []
        if self.cloudsql_instance:
            env += [
                ("PGHOST", f"/cloudsql/{self.cloudsql_instance}"),
                ("PGUSER", self.pg_user),
                ("PGDATABASE", self.pg_database),
                # libpq reads PGSSLMODE (not PGSSL); a unix socket carries no TLS
                ("PGSSLMODE", "disable"),
            ]
        env += [("TALLYGATE_LEDGER_MODE", self.ledger_mode), ("GOOGLE_CLOUD_PROJECT", self.project)]
        env += list(self.extra_env)
        return env


def _git(source: Path, *argv: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(source), *argv], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


# what the Dockerfile copies into the image: a new file there that git does not track (nor
# ignore) is built in too, so it makes the tree dirty like a change to a tracked file
IMAGE_INPUTS = ("Dockerfile", ".dockerignore", "requirements.lock", "pyproject.toml", "README.md", "src")


def _git_tag(source: Path, allow_dirty: bool) -> str | None:
    """The commit as the image tag; a work tree with changes is refused (the image would not
    be what the commit says) or, with --allow-dirty, tagged COMMIT-dirty."""
    tag = (_git(source, "rev-parse", "--short=12", "HEAD") or "").strip()
    if not _TAG_RE.match(tag):
        return None
    status = _git(source, "status", "--porcelain", "--untracked-files=no")
    status = status or _git(source, "status", "--porcelain", "--untracked-files=all", "--", *IMAGE_INPUTS)
    if status:
        if not allow_dirty:
            raise DeployError(
                f"{source} has uncommitted changes (or new files the image would contain): commit them, "
                "or pass --allow-dirty (the image is then tagged COMMIT-dirty), or name the tag with --image-tag"
            )
        tag += "-dirty"
    return tag


def _assets_dir(source: Path) -> Path:
    for candidate in (source / "deploy", Path(__file__).resolve().parents[4] / "deploy"):
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
            raise DeployError(
                f"--secret-versions: expected N or ENV=N,... with ENV one of {', '.join(envs)}; got {item!r}"
            )
        if not re.fullmatch(r"[1-9][0-9]*", value):
            raise DeployError(
                f"--secret-versions: {name} must be pinned to a version number (not 'latest'), got {value!r}"
            )
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
        (
            bool(_SERVICE_RE.match(args.service)),
            f"--service: {args.service!r}: lowercase letters, digits and hyphens, at most 49, starting with a letter",
        ),
        (bool(_REPO_RE.match(args.repository)), f"--repository: {args.repository!r} is not a repository name"),
        (1 <= args.concurrency <= 1000, "--concurrency must be between 1 and 1000"),
        (args.min_instances >= 0, "--min-instances must be 0 or more"),
        (
            args.max_instances >= max(1, args.min_instances),
            "--max-instances must be at least 1 and at least --min-instances",
        ),
        (1 <= args.timeout <= 3600, "--timeout must be between 1 and 3600 seconds"),
        (
            args.cpu in ("1", "2", "4", "6", "8") or bool(re.fullmatch(r"[0-9]+m", args.cpu)),
            f"--cpu: {args.cpu!r} is not 1, 2, 4, 6, 8 or NNNm",
        ),
        (bool(_MEMORY_RE.match(args.memory)), f"--memory: {args.memory!r} is not like 512Mi or 1Gi"),
        (
            bool(_DATASET_RE.match(args.bq_dataset)),
            f"--bq-dataset: {args.bq_dataset!r}: letters, digits and underscores only",
        ),
        (args.auth == "iam" or not args.invoker, "--invoker only makes sense with --auth iam"),
    ]
    for ok, message in checks:
        if not ok:
            raise DeployError(message)
    if args.concurrency > 1 and args.cpu.endswith("m"):
        raise DeployError("--concurrency above 1 needs at least 1 whole --cpu")

    source = Path(args.source)
    tag = (
        args.image_tag
        or (None if args.skip_build else _git_tag(source, args.allow_dirty))
        or _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    )
    if not _TAG_RE.match(tag):
        raise DeployError(f"--image-tag: {tag!r} is not a valid Docker tag")
    image = f"{args.region}-docker.pkg.dev/{project.replace(':', '/')}/{args.repository}/{args.service}:{tag}"

    sql = args.cloudsql_instance
    if sql and args.sqlite_ledger:
        raise DeployError("--sqlite-ledger and --cloudsql-instance exclude each other")
    if not sql and not args.sqlite_ledger:
        # adopted when it exists, created otherwise
        sql = f"{project}:{args.region}:{args.service}-ledger"
    if sql and not _SQL_INSTANCE_RE.match(sql):
        raise DeployError(f"--cloudsql-instance: {sql!r} is not PROJECT:REGION:INSTANCE")
    if sql and not re.fullmatch(r"db-[a-z0-9-]+", args.sql_tier):
        raise DeployError(f"--sql-tier: {args.sql_tier!r} is not a Cloud SQL tier like db-custom-1-3840")

    if args.service_account:
        sa = args.service_account
        if not re.fullmatch(
            r"[a-z0-9-]+@[a-z0-9.-]+\.iam\.gserviceaccount\.com|[0-9]+-compute@developer\.gserviceaccount\.com", sa
        ):
            raise DeployError(f"--service-account: {sa!r} is not a service account e-mail")
        create_sa = False
    else:
        sa_id = f"{args.service}-run"[:30].rstrip("-")
        if not _SA_ID_RE.match(sa_id):
            raise DeployError(
                f"cannot derive a service account ID from --service {args.service!r}; pass --service-account"
            )
        sa = (
            f"{sa_id}@{project.split(':')[-1]}.iam.gserviceaccount.com"
            if ":" not in project
            else f"{sa_id}@{project.split(':')[1]}.{project.split(':')[0]}.iam.gserviceaccount.com"
        )
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
            raise DeployError(
                "--env: PGSSL is not read by libpq; use PGSSLMODE (it is set for you with --cloudsql-instance)"
            )
        extra_env.append((name, value))

    versions = _parse_versions(args.secret_versions)
    files: dict[str, str] = {}
    for item in args.secret_file:
        name, sep, path = item.partition("=")
        if not sep or name not in versions or not path:
            raise DeployError(f"--secret-file: expected ENV=PATH with ENV one of {', '.join(versions)}, got {item!r}")
        files[name] = path
    # PROXY_MASTER_KEY is optional: without it the admin API is off
    master_key = bool(files.get("PROXY_MASTER_KEY") or os.environ.get("PROXY_MASTER_KEY")) or args.master_key
    secrets = tuple(
        SecretSpec(env, f"{args.service}-{suffix}", versions[env], files.get(env))
        for env, suffix in SECRET_ENVS
        if (env != "PGPASSWORD" or sql) and (env != "PROXY_MASTER_KEY" or master_key)
    )

    emails = tuple(args.alert_email)
    for email in emails:
        if not re.fullmatch(r"[^@\s,]+@[^@\s,]+\.[^@\s,]+", email):
            raise DeployError(f"--alert-email: {email!r} is not an e-mail address")
    domain = args.public_domain
    if domain and not re.fullmatch(r"(?=.{4,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}", domain):
        raise DeployError(f"--public-domain: {domain!r} is not a domain name like gateway.example.com")
    if not 1 <= args.armor_rate_limit <= 1_000_000:
        raise DeployError("--armor-rate-limit must be between 1 and 1000000 requests per minute")
    if args.vpc_connector and (args.vpc_network or args.vpc_subnet):
        raise DeployError("--vpc-connector and --vpc-network/--vpc-subnet exclude each other")
    if args.vpc_subnet and not args.vpc_network:
        raise DeployError("--vpc-subnet needs --vpc-network")
    vpc: tuple[str, ...] = ()
    if args.vpc_network:
        vpc = (f"--network={args.vpc_network}",)
        vpc += (f"--subnet={args.vpc_subnet}",) if args.vpc_subnet else ()
    elif args.vpc_connector:
        vpc = (f"--vpc-connector={args.vpc_connector}",)
    if vpc:
        vpc += (f"--vpc-egress={args.vpc_egress}",)

    billing = args.billing_account
    if billing and not re.fullmatch(r"[0-9A-F]{6}-[0-9A-F]{6}-[0-9A-F]{6}", billing):
        raise DeployError(f"--billing-account: {billing!r} is not a billing account ID like 012345-6789AB-CDEF01")
    if not args.budget_amount > 0:
        raise DeployError("--budget-amount must be positive")
    if billing and len(args.alert_email) + len(args.notification_channel) > 5:
        raise DeployError(
            "--billing-account: a budget notifies at most 5 channels (--alert-email, --notification-channel)"
        )

    for placeholder in ("SLO_AVAILABILITY", "SLO_TTFT"):
        dest = next(d for p, d, _x, _t in ALERT_THRESHOLDS if p == placeholder)
        if not 0 < getattr(args, dest) < 1:
            raise DeployError(f"--{dest.replace('_', '-')} must be between 0 and 1 (0.995 = 99.5%)")

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
    if not sql:
        skip.update(DATABASE_PHASES)
    if not emails:
        skip.add("channels")
    if not domain:
        skip.add("edge")
    if not billing:
        skip.add("budget")
    phases = tuple(p for p in PHASES if p in phases and p not in skip)

    return Config(
        project=project,
        region=args.region,
        service=args.service,
        repository=args.repository,
        image=image,
        source=source,
        assets=_assets_dir(source),
        service_account=sa,
        create_service_account=create_sa,
        cloudsql_instance=sql,
        sql_tier=args.sql_tier,
        sql_version=args.sql_version,
        sql_availability=args.sql_availability,
        pg_user=args.pg_user,
        pg_database=args.pg_database,
        ledger_mode=args.ledger_mode,
        concurrency=args.concurrency,
        min_instances=args.min_instances,
        max_instances=args.max_instances,
        cpu=args.cpu,
        memory=args.memory,
        timeout=args.timeout,
        auth=args.auth,
        invokers=tuple(args.invoker),
        extra_env=tuple(extra_env),
        secrets=secrets,
        bq_dataset=args.bq_dataset,
        bq_location=args.bq_location,
        sink_name=args.sink_name or f"{args.service}-bq-sink",
        notification_channels=tuple(args.notification_channel),
        alert_emails=emails,
        public_domain=domain,
        armor_rate_limit=args.armor_rate_limit,
        vpc=vpc,
        billing_account=billing,
        budget_amount=args.budget_amount,
        thresholds=thresholds,
        phases=phases,
    )
