"""Shared helpers for the deploy tests (not a conftest: the suite's conftest is tests/conftest.py)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import json
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MONITORING = DEPLOY / "monitoring"
METRICS_DIR = MONITORING / "metrics"
ALERTS_DIR = MONITORING / "alerts"

if str(ROOT / "src") not in sys.path:  # a plain checkout without `pip install -e .`
    try:
        import tallygate  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT / "src"))

from tallygate.deploy import cloudrun  # noqa: E402

PROJECT = "acme-llm-prod"
SQL_INSTANCE = f"{PROJECT}:us-central1:ledger"

# the per-request line exactly as docs/contracts.md shows it
CONTRACT = ROOT / "docs" / "contracts.md"


def contract_line() -> dict:
    text = CONTRACT.read_text()
    m = re.search(r"## The per-request log line.*?```json\n(.*?)```", text, re.S)
    assert m, "docs/contracts.md lost its log line example"
    return json.loads(m.group(1))


# ----------------------------------------------------------------------------- files

def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def metric_files() -> list[Path]:
    """The metrics of the request line (litellm_*); the ledger's are ledger_metric_files()."""
    return sorted(METRICS_DIR.glob("litellm_*.yaml"))


def ledger_metric_files() -> list[Path]:
    return sorted(METRICS_DIR.glob("tallygate_ledger_*.yaml"))


def alert_files() -> list[Path]:
    return sorted(ALERTS_DIR.glob("*.json"))


def default_values(**overrides: str) -> dict[str, str]:
    values = {"PROJECT": PROJECT, "REGION": "us-central1", "SERVICE": "litellm-proxy",
              "BQ_DATASET": "litellm_logs", "MAX_INSTANCES": "50", "SINK_NAME": "litellm-proxy-bq-sink",
              "SLO_SERVICE": "litellm-proxy", "SQL_DATABASE_ID": f"{PROJECT}:ledger"}
    for placeholder, _dest, default, _help in cloudrun.ALERT_THRESHOLDS:
        values[placeholder] = cloudrun._number(default)
    values.update(overrides)
    return values


def rendered_metric(path: Path, **overrides: str) -> dict:
    return yaml.safe_load(cloudrun.substitute(path.read_text(), default_values(**overrides), str(path)))


def rendered_json(path: Path, **overrides: str) -> dict:
    doc = cloudrun._substitute_json(json.loads(path.read_text()), default_values(**overrides), str(path))
    assert isinstance(doc, dict)
    return doc


# ----------------------------------------------------------------------------- dry run

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tallygate deploy cloudrun")
    cloudrun.add_arguments(p)
    return p


def parse_args(*argv: str) -> argparse.Namespace:
    return parser().parse_args(list(argv))


def base_argv(render_dir: Path, *extra: str) -> list[str]:
    return ["--project", PROJECT, "--image-tag", "abc123", "--source", str(ROOT),
            "--render-dir", str(render_dir), "--dry-run", *extra]


def dry_run(render_dir: Path, *extra: str, with_sql: bool = True) -> tuple[int, str, str]:
    """Run `deploy cloudrun --dry-run` in process; returns (status, stdout, stderr)."""
    argv = base_argv(render_dir, *(["--cloudsql-instance", SQL_INSTANCE] if with_sql else []), *extra)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cloudrun.run(parse_args(*argv))
    return status, out.getvalue(), err.getvalue()


_CONNECTORS = {"||", "&&", "|", ";", "then", "else", "fi", "if"}


def script_commands(script: str, track: str = "") -> list[list[str]]:
    """Every simple command of the printed script that starts with gcloud, bq or curl (probes
    too); `retry` is dropped and $POLICIES_TRACK becomes `track` ("" or "alpha")."""
    commands: list[list[str]] = []
    for line in script.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        # $(...) command substitutions become separate commands
        for inner in re.findall(r'"\$\((.*?)\)"(?=[\s;]|$)', line):
            commands.extend(script_commands(inner, track))
        line = re.sub(r'"\$\((.*?)\)"(?=[\s;]|$)', '"SUBST"', line)
        tokens = shlex.split(line.replace("; ", " ; "))
        current: list[str] = []
        for tok in tokens + ["||"]:
            if tok in _CONNECTORS or tok in ("[", "]") or re.fullmatch(r"\d?>.*|>.*", tok):
                if current and current[0] in ("gcloud", "bq", "curl"):
                    commands.append(current)
                current = [] if tok in _CONNECTORS or tok in ("[", "]") else current
                continue
            if tok == "retry" and not current:
                continue
            if tok == "$POLICIES_TRACK":
                if track:
                    current.append(track)
                continue
            current.append(tok)
    return commands


def flag_values(command: list[str], flag: str) -> list[str]:
    out = []
    for i, tok in enumerate(command):
        if tok.startswith(flag + "="):
            out.append(tok[len(flag) + 1:])
        elif tok == flag and i + 1 < len(command) and not command[i + 1].startswith("--"):
            out.append(command[i + 1])
    return out


def find(commands: list[list[str]], *prefix: str) -> list[list[str]]:
    return [c for c in commands if c[:len(prefix)] == list(prefix)]


# ----------------------------------------------------------------------------- Cloud SDK

def sdk_root() -> Path | None:
    gcloud = shutil.which("gcloud")
    if not gcloud:
        return None
    root = Path(gcloud).resolve().parent.parent
    return root if (root / "lib" / "googlecloudsdk").is_dir() else None


@functools.lru_cache(maxsize=1)
def gcloud_tree() -> dict | None:
    """gcloud's static completion tree: every command and flag this SDK version has."""
    root = sdk_root()
    path = root / "data" / "cli" / "gcloud_completions.py" if root else None
    if not path or not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("_gcloud_completions", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.STATIC_COMPLETION_CLI_TREE


@functools.lru_cache(maxsize=1)
def bq_tree() -> dict | None:
    root = sdk_root()
    path = root / "data" / "cli" / "bq.json" if root else None
    return json.loads(path.read_text()) if path and path.is_file() else None


@functools.lru_cache(maxsize=1)
def api_messages() -> dict | None:
    """The generated API message classes of the installed Cloud SDK (apitools)."""
    root = sdk_root()
    if root is None:
        return None
    for extra in (root / "lib", root / "lib" / "third_party"):
        if str(extra) not in sys.path:
            sys.path.append(str(extra))
    try:
        from apitools.base.py import encoding  # type: ignore
        from googlecloudsdk.generated_clients.apis.logging.v2 import logging_v2_messages as logging_v2  # type: ignore
        from googlecloudsdk.generated_clients.apis.monitoring.v1 import monitoring_v1_messages as monitoring_v1  # type: ignore
        from googlecloudsdk.generated_clients.apis.monitoring.v3 import monitoring_v3_messages as monitoring_v3  # type: ignore
    except Exception:  # pragma: no cover - depends on the SDK build
        return None
    return {"encoding": encoding, "LogMetric": logging_v2.LogMetric,
            "Dashboard": monitoring_v1.Dashboard, "AlertPolicy": monitoring_v3.AlertPolicy,
            "Service": monitoring_v3.Service, "ServiceLevelObjective": monitoring_v3.ServiceLevelObjective}


def unknown_fields(doc: dict, message_name: str) -> list[str]:
    """Fields (and enum values) the API message does not know, as dotted paths."""
    api = api_messages()
    assert api is not None
    msg = api["encoding"].DictToMessage(doc, api[message_name])
    problems: list[str] = []

    def walk(m: Any, where: str) -> None:
        for name in m.all_unrecognized_fields():
            problems.append(f"{where}{name}")
        for field in m.all_fields():
            value = getattr(m, field.name)
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                if hasattr(item, "all_unrecognized_fields"):
                    walk(item, f"{where}{field.name}{f'[{i}]' if field.repeated else ''}.")

    walk(msg, "")
    return problems


# ----------------------------------------------------------------------------- PromQL

def promql_selectors(expr: Any) -> Iterator[tuple[str, dict[str, str], Any]]:
    """(metric name, equality matchers, range or None) of every selector in a parsed query."""
    import promql_parser

    if isinstance(expr, promql_parser.MatrixSelector):
        vs = expr.vector_selector
        yield vs.name, {m.name: m.value for m in vs.matchers.matchers}, expr.range
        return
    if isinstance(expr, promql_parser.VectorSelector):
        yield expr.name, {m.name: m.value for m in expr.matchers.matchers}, None
        return
    for attr in ("lhs", "rhs", "expr", "param", "args"):
        child = getattr(expr, attr, None)
        if child is None:
            continue
        for c in child if isinstance(child, list) else [child]:
            yield from promql_selectors(c)
