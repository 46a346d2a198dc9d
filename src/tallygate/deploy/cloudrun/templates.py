"""The monitoring files of deploy/monitoring/, filled in with the Config's values."""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .constants import MONITORING_PHASES, POLICY_LABEL, DeployError


def template_values(config: Config) -> dict[str, str]:
    values = {
        "PROJECT": config.project,
        "REGION": config.region,
        "SERVICE": config.service,
        "BQ_DATASET": config.bq_dataset,
        "MAX_INSTANCES": str(config.max_instances),
        "SINK_NAME": config.sink_name,
        "SLO_SERVICE": slo_service_id(config),
        "SQL_DATABASE_ID": (
            f"{config.sql_project}:{config.sql_instance_id}" if config.cloudsql_instance else "no-cloud-sql"
        ),
    }
    for key, value in config.thresholds.items():
        values[key] = _number(value)
    return values


def slo_service_id(config: Config) -> str:
    return config.service


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
    alerts: tuple[tuple[str, str, Path], ...]  # (stable key, display name, rendered file)
    directory: Path
    slo_service: tuple[tuple[str, Path], ...] = ()  # (service ID, rendered Service body)
    slos: tuple[tuple[str, Path], ...] = ()  # (SLO ID, rendered ServiceLevelObjective body)
    # the uptime check's alert policy: (stable key, display name, rendered file, the policy as
    # a printf format whose one %s is the check's ID, known only once the check exists)
    uptime_policy: tuple[str, str, Path, str] | None = None


def render(config: Config, out_dir: Path) -> Rendered:
    """Write filled-in copies of deploy/monitoring/* into out_dir."""
    values = template_values(config)
    mon = config.assets / "monitoring"
    need_monitoring = any(p in config.phases for p in MONITORING_PHASES)
    if need_monitoring and not mon.is_dir():
        raise DeployError(f"cannot find {mon}: run from a tallygate checkout or pass --source")
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: list[tuple[str, Path]] = []
    alerts: list[tuple[str, str, Path]] = []
    slo_service: list[tuple[str, Path]] = []
    slos: list[tuple[str, Path]] = []
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
            if src.stem.startswith("cloudsql_") and not config.cloudsql_instance:
                continue
            doc = _substitute_json(json.loads(src.read_text()), values, str(src))
            assert isinstance(doc, dict)
            # the policy's identity: found by this label and updated in place on the next run
            # (the display name may change with the text; thresholds live in the conditions)
            doc.setdefault("userLabels", {})[POLICY_LABEL] = src.stem
            dst = out_dir / "alerts" / src.name
            dst.write_text(json.dumps(doc, indent=2) + "\n")
            alerts.append((src.stem, str(doc["displayName"]), dst))
    if "slo" in config.phases:
        (out_dir / "slo").mkdir(exist_ok=True)
        for src in sorted((mon / "slo").glob("*.json")):
            doc = _substitute_json(json.loads(src.read_text()), values, str(src))
            dst = out_dir / "slo" / src.name
            dst.write_text(json.dumps(doc, indent=2) + "\n")
            if src.stem == "service":
                slo_service.append((values["SLO_SERVICE"], dst))
            else:
                slos.append((src.stem, dst))
    uptime_policy = None
    if "uptime" in config.phases:
        uptime_policy = _render_uptime_policy(mon / "uptime" / "live_failing.json", values, out_dir)
    return Rendered(
        tuple(metrics),
        dashboard,
        dashboard_name,
        tuple(alerts),
        out_dir,
        tuple(slo_service),
        tuple(slos),
        uptime_policy,
    )


UPTIME_CHECK_ID = "UPTIME_CHECK_ID"
_CHECK_ID_MARK = "@@UPTIME_CHECK_ID@@"


def _render_uptime_policy(src: Path, values: dict[str, str], out_dir: Path) -> tuple[str, str, Path, str]:
    """The policy on the uptime check: everything filled in but the check's ID (the API picks it
    when the check is created), kept as ${UPTIME_CHECK_ID} in the file and as %s in the format."""
    doc = _substitute_json(json.loads(src.read_text()), {**values, UPTIME_CHECK_ID: _CHECK_ID_MARK}, str(src))
    assert isinstance(doc, dict)
    doc.setdefault("userLabels", {})[POLICY_LABEL] = "uptime_" + src.stem
    text = json.dumps(doc, indent=2) + "\n"
    dst = out_dir / "uptime_policy.json"
    dst.write_text(text.replace(_CHECK_ID_MARK, "${" + UPTIME_CHECK_ID + "}"))
    fmt = text.replace("%", "%%").replace(_CHECK_ID_MARK, "%s")
    return "uptime_" + src.stem, str(doc["displayName"]), dst, fmt
