"""LogEntries as Cloud Run builds them from the lines the container writes, and what a
LogMetric records for them (its filter, value and label extractors run by logfilter.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from logfilter import LogFilterError, compile_filter, extract_label, extract_value

__all__ = ["cloud_run_entry", "evaluate_metric", "MetricPoint"]


# JSON keys Cloud Run's logging agent moves out of jsonPayload into LogEntry fields
_SPECIAL = {
    "severity": "severity",
    "httpRequest": "httpRequest",
    "logging.googleapis.com/insertId": "insertId",
    "logging.googleapis.com/labels": "labels",
    "logging.googleapis.com/operation": "operation",
    "logging.googleapis.com/sourceLocation": "sourceLocation",
    "logging.googleapis.com/spanId": "spanId",
    "logging.googleapis.com/trace": "trace",
    "logging.googleapis.com/trace_sampled": "traceSampled",
}
_TIME_KEYS = ("time", "timestamp", "timestampSeconds", "timestampNanos")


def _as_struct(value: Any) -> Any:
    """google.protobuf.Struct holds every number as a double."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {k: _as_struct(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_struct(v) for v in value]
    return value


def cloud_run_entry(line: str, *, project: str = "test-project", service: str = "litellm-proxy",
                    region: str = "us-central1", revision: str | None = None,
                    stream: str = "stdout", instance_id: str = "0069c7a988") -> dict:
    """The LogEntry Cloud Run makes of one line the container wrote to stdout or stderr."""
    revision = revision or f"{service}-00001-abc"
    entry: dict[str, Any] = {
        "logName": f"projects/{project}/logs/run.googleapis.com%2F{stream}",
        "resource": {"type": "cloud_run_revision", "labels": {
            "service_name": service, "revision_name": revision, "location": region,
            "project_id": project, "configuration_name": service}},
        "labels": {"instanceId": instance_id},
        "severity": "DEFAULT",
    }
    line = line.rstrip("\n")
    try:
        payload = json.loads(line)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        entry["textPayload"] = line
        return entry
    payload = dict(payload)
    for key, field in _SPECIAL.items():
        if key in payload:
            value = payload.pop(key)
            if field == "labels" and isinstance(value, dict):
                entry["labels"].update({k: str(v) for k, v in value.items()})
            elif field == "severity":
                entry["severity"] = str(value).upper()
            else:
                entry[field] = value
    for key in _TIME_KEYS:
        if key in payload:
            entry.setdefault("timestamp", payload.pop(key))
    if set(payload) == {"message"}:
        entry["textPayload"] = str(payload["message"])
    else:
        entry["jsonPayload"] = _as_struct(payload)
    return entry


# ----------------------------------------------------------------------------- metrics

@dataclass(frozen=True)
class MetricPoint:
    labels: tuple[tuple[str, str], ...]
    value: float  # 1 for a counter


def evaluate_metric(metric: dict, entries: Iterable[dict]) -> list[MetricPoint]:
    """What a LogMetric records for these entries: one point per matching entry."""
    predicate = compile_filter(metric.get("filter", ""))
    descriptor = metric.get("metricDescriptor", {})
    value_type = descriptor.get("valueType", "INT64")
    extractor = metric.get("valueExtractor")
    label_extractors = metric.get("labelExtractors", {}) or {}
    points = []
    for entry in entries:
        if not predicate(entry):
            continue
        if value_type == "DISTRIBUTION":
            if not extractor:
                raise LogFilterError("a DISTRIBUTION metric needs a valueExtractor")
            value = extract_value(extractor, entry)
            if value is None:
                continue  # no value: the entry is not recorded
        else:
            value = 1.0
        labels = tuple(sorted((k, extract_label(v, entry)) for k, v in label_extractors.items()))
        points.append(MetricPoint(labels, value))
    return points
