"""The steps printed as a POSIX shell script (--dry-run)."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from typing import TextIO

from .config import Config
from .constants import _VAR_REF
from .steps import Step
from .templates import Rendered


def _dq(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")


def shell_quote(arg: str, variables: Iterable[str] = ()) -> str:
    """shlex.quote, except that ${NAME} of a captured variable stays expandable."""
    names = set(variables)
    if names and any(m.group(1) in names for m in _VAR_REF.finditer(arg)):
        out, pos = [], 0
        for m in _VAR_REF.finditer(arg):
            if m.group(1) in names:
                out.append(_dq(arg[pos : m.start()]) + "${" + m.group(1) + "}")
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
    out.write(
        f"# tallygate deploy cloudrun: project {config.project}, region {config.region}, service {config.service}\n"
    )
    out.write(f"# image {config.image}\n")
    out.write(f"# filled-in monitoring files: {rendered.directory}\n")
    if not config.cloudsql_instance:
        out.write(
            "# WARNING: no --cloudsql-instance: the ledger is SQLite inside the instance and is lost "
            "when it stops; the log lines (and BigQuery) are then the only durable copy\n"
        )
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
    out.write(
        f"#   gcloud run services describe {config.service} --region={config.region} "
        f"--project={config.project} --format='value(status.url)'\n"
    )
    if "bigquery" in config.phases:
        out.write(
            f"#   PROJECT={config.project} BQ_DATASET={config.bq_dataset} envsubst "
            "< deploy/bigquery/tokens_cost_per_tenant_day.sql | bq query --use_legacy_sql=false\n"
        )
    if "alerts" in config.phases:
        out.write(
            "#   Cloud SDKs older than the GA 'monitoring policies' group: use 'gcloud alpha monitoring policies'\n"
        )
