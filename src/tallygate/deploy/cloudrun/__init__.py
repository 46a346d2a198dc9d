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
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .config import Config, SecretSpec, build_config
from .constants import (
    ALERT_THRESHOLDS,
    CONTAINER_PORT,
    LIVENESS_PROBE,
    LOG_MESSAGE,
    MONITORING_PHASES,
    PHASES,
    RESERVED_ENVS,
    SECRET_ENVS,
    SECRET_LIKE_ENVS,
    STARTUP_PROBE,
    DeployError,
)
from .execute import Runner, execute
from .options import add_arguments
from .script import command_line, config_warnings, shell_quote, write_script
from .steps import Step, build_steps, deploy_argv, sink_filter
from .templates import Rendered, _number, _substitute_json, render, substitute, template_values

__all__ = [
    "ALERT_THRESHOLDS",
    "CONTAINER_PORT",
    "LIVENESS_PROBE",
    "LOG_MESSAGE",
    "MONITORING_PHASES",
    "PHASES",
    "RESERVED_ENVS",
    "SECRET_ENVS",
    "SECRET_LIKE_ENVS",
    "STARTUP_PROBE",
    "Config",
    "DeployError",
    "Rendered",
    "Runner",
    "SecretSpec",
    "Step",
    "_number",
    "_substitute_json",
    "add_arguments",
    "build_config",
    "build_steps",
    "command_line",
    "config_warnings",
    "deploy_argv",
    "execute",
    "main",
    "render",
    "run",
    "shell_quote",
    "sink_filter",
    "substitute",
    "template_values",
    "write_script",
]


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
        for warning in config_warnings(config):
            print(f"WARNING: {warning}", file=sys.stderr)
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
    parser = argparse.ArgumentParser(
        prog="tallygate deploy cloudrun", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
