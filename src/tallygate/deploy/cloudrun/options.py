"""The command-line options of `tallygate deploy cloudrun`."""

from __future__ import annotations

import argparse
import os

from .constants import ALERT_THRESHOLDS, PHASES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `tallygate deploy cloudrun`."""
    g = parser.add_argument_group("target")
    g.add_argument(
        "--project",
        default=os.environ.get("CLOUDSDK_CORE_PROJECT"),
        help="Google Cloud project ID (default: $CLOUDSDK_CORE_PROJECT)",
    )
    g.add_argument("--region", default="us-central1", help="Cloud Run and Artifact Registry region")
    g.add_argument("--service", default="litellm-proxy", help="Cloud Run service name")
    g.add_argument("--repository", default="litellm", help="Artifact Registry Docker repository")
    g.add_argument(
        "--image-tag",
        default=None,
        help="image tag (default: the git commit of --source, else a UTC timestamp); the service runs the "
        "image by the digest the tag points to",
    )
    g.add_argument(
        "--allow-dirty",
        action="store_true",
        help="build from a work tree with uncommitted changes (the tag becomes COMMIT-dirty); refused otherwise",
    )
    g.add_argument("--source", default=".", help="build context holding the Dockerfile (default: current directory)")
    g.add_argument(
        "--service-account",
        default=None,
        help="runtime service account e-mail (default: SERVICE-run@PROJECT.iam.gserviceaccount.com, created if missing)",
    )

    g = parser.add_argument_group("database (Cloud SQL for PostgreSQL)")
    g.add_argument(
        "--cloudsql-instance",
        default=None,
        metavar="PROJECT:REGION:INSTANCE",
        help="the ledger's Cloud SQL for PostgreSQL instance, adopted when it exists and created otherwise "
        "(default: PROJECT:REGION:SERVICE-ledger); reached over its unix socket (--add-cloudsql-instances, "
        "PGHOST=/cloudsql/...)",
    )
    g.add_argument(
        "--sqlite-ledger",
        action="store_true",
        help="no Cloud SQL: the ledger is SQLite inside each instance and LOSES billing rows when an "
        "instance stops (demos only)",
    )
    g.add_argument("--sql-tier", default="db-custom-1-3840", help="machine tier of a created instance")
    g.add_argument("--sql-version", default="POSTGRES_16", choices=("POSTGRES_15", "POSTGRES_16", "POSTGRES_17"))
    g.add_argument(
        "--sql-availability",
        default="zonal",
        choices=("zonal", "regional"),
        help="regional adds a standby in another zone (twice the cost)",
    )
    g.add_argument("--pg-user", default="litellm", help="PGUSER")
    g.add_argument("--pg-database", default="litellm", help="PGDATABASE")
    g.add_argument("--ledger-mode", choices=("async", "sync"), default="async", help="TALLYGATE_LEDGER_MODE")

    g = parser.add_argument_group("service")
    g.add_argument("--concurrency", type=int, default=15)
    g.add_argument("--min-instances", type=int, default=1)
    g.add_argument("--max-instances", type=int, default=50)
    g.add_argument("--cpu", default="1")
    g.add_argument("--memory", default="1Gi")
    g.add_argument(
        "--timeout", type=int, default=3600, help="request timeout in seconds; it also caps every stream (max 3600)"
    )
    g.add_argument(
        "--auth",
        choices=("public", "iam"),
        default="public",
        help="public: --allow-unauthenticated, the gateway's own keys protect every route; "
        "iam: --no-allow-unauthenticated, callers send a Google ID token in "
        "X-Serverless-Authorization and the gateway key in Authorization",
    )
    g.add_argument(
        "--invoker",
        action="append",
        default=[],
        metavar="MEMBER",
        help="with --auth iam: principal granted roles/run.invoker, e.g. "
        "serviceAccount:client@PROJECT.iam.gserviceaccount.com (repeatable)",
    )
    g.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra non-secret environment variable (repeatable)",
    )

    g = parser.add_argument_group("network")
    g.add_argument(
        "--public-domain",
        default=None,
        metavar="DOMAIN",
        help="front the service with an external HTTPS load balancer for DOMAIN (serverless NEG, Google-managed "
        "certificate, Cloud Armor policy) and accept only internal and load-balancer traffic",
    )
    g.add_argument(
        "--armor-rate-limit",
        type=int,
        default=600,
        help="with --public-domain: requests per minute one client IP may send before Cloud Armor answers 429",
    )
    g.add_argument(
        "--vpc-network", default=None, help="Direct VPC egress: the VPC network the service's outbound traffic uses"
    )
    g.add_argument("--vpc-subnet", default=None, help="Direct VPC egress: the subnet (with --vpc-network)")
    g.add_argument("--vpc-connector", default=None, help="Serverless VPC Access connector (instead of Direct VPC)")
    g.add_argument(
        "--vpc-egress",
        choices=("all-traffic", "private-ranges-only"),
        default="all-traffic",
        help="with a VPC: all-traffic sends the upstream calls through it too (egress firewall, NAT with a fixed IP)",
    )

    g = parser.add_argument_group("secrets (Secret Manager)")
    g.add_argument(
        "--secret-versions",
        default="1",
        metavar="N|ENV=N,...",
        help="pinned secret versions: one number for all, or e.g. OPENAI_API_KEY=3,PGPASSWORD=2 (others 1)",
    )
    g.add_argument(
        "--secret-file",
        action="append",
        default=[],
        metavar="ENV=PATH",
        help="read a secret's value from PATH instead of the environment variable ENV (repeatable); "
        "PGPASSWORD is generated when no file is given",
    )
    g.add_argument(
        "--master-key",
        action="store_true",
        help="map PROXY_MASTER_KEY (the admin API's key) even when $PROXY_MASTER_KEY is not set here "
        "(its pinned version must exist); without it and without $PROXY_MASTER_KEY the admin API is off",
    )

    g = parser.add_argument_group("observability")
    g.add_argument("--bq-dataset", default="litellm_logs")
    g.add_argument("--bq-location", default="US")
    g.add_argument("--sink-name", default=None, help="log sink name (default: SERVICE-bq-sink)")
    g.add_argument(
        "--notification-channel",
        action="append",
        default=[],
        metavar="NAME",
        help="projects/PROJECT/notificationChannels/ID (a Slack, PagerDuty or webhook channel made in the "
        "console) added to every alert policy (repeatable)",
    )
    g.add_argument(
        "--alert-email",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="e-mail notification channel, created when missing and added to every alert policy (repeatable)",
    )
    g.add_argument(
        "--billing-account",
        default=None,
        metavar="ID",
        help="the project's Cloud Billing account (XXXXXX-XXXXXX-XXXXXX): a monthly budget on this project's "
        "spend with alerts at 50%%, 90%% and 100%% (and 100%% forecast) to the alert channels",
    )
    g.add_argument(
        "--budget-amount",
        type=float,
        default=2000.0,
        help="with --billing-account: the monthly budget, in the billing account's currency (default 2000)",
    )
    for placeholder, dest, default, text in ALERT_THRESHOLDS:
        g.add_argument(
            "--" + dest.replace("_", "-"),
            dest=dest,
            type=float,
            default=default,
            help=f"{text} (default {default:g}; ${{{placeholder}}} in the alert files)",
        )

    g = parser.add_argument_group("what to run")
    g.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    g.add_argument(
        "--render-dir",
        default=None,
        help="where the filled-in monitoring files are written (default: a new temporary directory)",
    )
    g.add_argument("--skip-build", action="store_true", help="deploy an image that was already pushed")
    g.add_argument("--skip-monitoring", action="store_true", help="no log-based metrics, dashboard or alerts")
    g.add_argument("--skip-bigquery", action="store_true", help="no BigQuery dataset or log sink")
    g.add_argument("--only", default=None, metavar="PHASE[,PHASE]", help="run only these phases: " + ", ".join(PHASES))
