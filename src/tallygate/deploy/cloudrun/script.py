"""The steps printed as a POSIX shell script (--dry-run)."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from typing import TextIO

from .config import Config
from .constants import _VAR_REF, PASSWORD_LENGTH, POLICIES_TRACK
from .steps import FOUND, Step
from .templates import Rendered


def _dq(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")


def shell_quote(arg: str, variables: Iterable[str] = (), words: Iterable[str] = ()) -> str:
    """shlex.quote, except that ${NAME} of a captured variable stays expandable, and a word
    variable standing alone (${POLICIES_TRACK}: empty or "alpha") is left unquoted so that an
    empty value is no argument at all."""
    whole = _VAR_REF.fullmatch(arg)
    if whole and whole.group(1) in set(words):
        return f"${whole.group(1)}"
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


RETRY_FUNCTION = """\
# IAM changes are eventually consistent: retry a command after 2, 4, 8, 16 and 32 seconds
retry() {
  n=1
  until "$@"; do
    if [ "$n" -gt 5 ]; then return 1; fi
    echo "  failed; retrying in $((1 << n)) s" >&2
    sleep $((1 << n))
    n=$((n + 1))
  done
}
"""


def command_line(step: Step, variables: Iterable[str] = (), words: Iterable[str] = ()) -> str:
    """The step as one line of POSIX shell."""
    names = (*variables, FOUND, *words)
    word_names = tuple(words)

    def q(argv: Sequence[str]) -> str:
        return " ".join(shell_quote(a, names, word_names) for a in argv)

    if step.choose:
        name, if_ok, if_not = step.choose
        return (
            f"if {q(step.argv)} >/dev/null 2>&1; then {name}={shlex.quote(if_ok)}; "
            f"else {name}={shlex.quote(if_not)}; fi"
        )
    prefix = ""
    if step.stdin_env:
        prefix = f"printf '%s' \"${step.stdin_env}\" | "
    elif step.stdin_password:
        prefix = f"LC_ALL=C tr -dc A-Za-z0-9 </dev/urandom | head -c {PASSWORD_LENGTH} | "
    elif step.stdin_from:
        fmt = step.stdin_format.replace("\\", "\\\\").replace("\n", "\\n")
        prefix = f'printf {shlex.quote(fmt)} "$({q(step.stdin_from)})" | '
    retry = "retry " if step.retry else ""
    line = f"{prefix}{retry}{q(step.argv)}"
    if step.find and step.capture:
        var = step.capture
        return f'{var}="$({q(step.find)})"; [ -n "${var}" ] || {var}="$({line})"'
    if step.capture:
        line = f'{step.capture}="$({line})"'
    if step.find and not step.otherwise:
        return f'[ -n "$({q(step.find)})" ] || {line}'
    if step.find:
        assert step.otherwise
        return f'{FOUND}="$({q(step.find)})"; if [ -n "${FOUND}" ]; then {prefix}{q(step.otherwise)}; else {line}; fi'
    if step.unless:
        probe_prefix = prefix if step.probe_stdin else ""
        if step.otherwise:
            return (
                f"if {probe_prefix}{q(step.unless)} >/dev/null 2>&1; then {prefix}{q(step.otherwise)}; else {line}; fi"
            )
        return f"{probe_prefix}{q(step.unless)} >/dev/null 2>&1 || {line}"
    return line


def config_warnings(config: Config) -> list[str]:
    """What the user must hear before anything runs (printed by the dry run and the real run)."""
    warnings = []
    if not config.cloudsql_instance:
        warnings.append(
            "--sqlite-ledger: the ledger is SQLite inside each instance and is LOST when it stops; "
            "the log lines (and BigQuery) are then the only durable copy of the billing records"
        )
    if "alerts" in config.phases and not (config.notification_channels or config.alert_emails):
        warnings.append(
            "no --alert-email or --notification-channel: the alert policies notify NOBODY; "
            "they only show in the console"
        )
    return warnings


def write_script(config: Config, rendered: Rendered, steps: Sequence[Step], out: TextIO) -> None:
    out.write("#!/bin/sh\n")
    out.write(f"# shellcheck disable=SC2086  # ${POLICIES_TRACK} is empty or alpha: unquoted on purpose\n")
    out.write(
        f"# tallygate deploy cloudrun: project {config.project}, region {config.region}, service {config.service}\n"
    )
    out.write(f"# image {config.image}\n")
    out.write(f"# filled-in monitoring files: {rendered.directory}\n")
    for warning in config_warnings(config):
        out.write(f"# WARNING: {warning}\n")
    if "secrets" in config.phases:
        missing = [s.env for s in config.secrets if not s.file and s.env != "PGPASSWORD"]
        if missing:
            out.write(f"# secret values are read from the environment: {' '.join('$' + m for m in missing)}\n")
    out.write("set -eu\n")
    if any(s.retry for s in steps):
        out.write("\n" + RETRY_FUNCTION)
    words = [s.choose[0] for s in steps if s.choose]
    variables: list[str] = []
    phase = None
    for step in steps:
        if step.phase != phase:
            phase = step.phase
            out.write(f"\n# --- {phase}\n")
        out.write(f"# {step.comment}\n")
        out.write(command_line(step, variables, words) + "\n")
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
