"""The `litellm_request` line: one JSON object per request on stdout.

Field names and types are the public contract (docs/contracts.md): the log-based
metrics and the BigQuery export depend on them, so types never change (tokens are
ints, cost and latencies always floats).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TextIO

import orjson

from ..metering.record import EXTRA_TOKEN_COLUMNS, UsageRecord
from ..metering.usage import has_priced_parts
from ..money import usd_text

_STREAM_LABEL = {True: "true", False: "false"}

# RFC 3339 prefixes up to the second ("2026-11-27T12:00:00."): formatting costs more than
# the rest of the line, so each is made once, the start's keyed by its second and the end's
# by the start's second and the whole seconds the request lasted; bounded, cleared when large
_prefixes: dict[tuple, str] = {}


def _times(start: datetime, latency_ms: float) -> tuple[str, str]:
    """(end, start) as RFC 3339 UTC with microseconds; the end is start + latency."""
    if start.tzinfo is not UTC:
        start = start.astimezone(UTC)
    key = (start.year, start.month, start.day, start.hour, start.minute, start.second)
    prefix = _prefixes.get(key)
    if prefix is None:
        if len(_prefixes) > 4096:
            _prefixes.clear()
        prefix = _prefixes[key] = start.strftime("%Y-%m-%dT%H:%M:%S.")
    start_us = start.microsecond
    carry, end_us = divmod(start_us + int(latency_ms * 1000), 1_000_000)
    if not carry:
        return f"{prefix}{end_us:06d}Z", f"{prefix}{start_us:06d}Z"
    end_key = (key, carry)
    end_prefix = _prefixes.get(end_key)
    if end_prefix is None:
        end = start + timedelta(seconds=carry)
        end_prefix = _prefixes[end_key] = end.strftime("%Y-%m-%dT%H:%M:%S.")
    return f"{end_prefix}{end_us:06d}Z", f"{prefix}{start_us:06d}Z"


def log_entry(record: UsageRecord) -> dict:
    end, start = _times(record.created_at, record.latency_ms)
    entry = {
        "severity": "INFO" if record.status_code < 500 else "WARNING",
        "message": "litellm_request",
        # the entry's timestamp is when the request ended, so a long stream's tokens count in
        # the window they were billed in; the start is its own field
        "time": end,
        "start_time": start,
        "request_id": record.request_id,
        "tenant_id": record.tenant_id,
        "api_key_id": record.api_key_id,
        "model": record.model,
        "upstream_model": record.upstream_model,
        "provider": record.provider,
        "endpoint": record.endpoint,
        "stream": record.stream,
        "status_code": record.status_code,
        "status": record.status,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "total_tokens": record.total_tokens,
        "cached_tokens": record.cached_tokens,
        "reasoning_tokens": record.reasoning_tokens,
        "cost_usd": float(record.cost_usd),
        "cost_usd_exact": usd_text(record.cost_usd),
        "price_source": record.price_source,
        "price_version": record.price_version,
        "usage_source": record.usage_source,
        "latency_ms": float(record.latency_ms),
        # LogEntry labels are strings by definition: the metrics' label extractors read these
        "logging.googleapis.com/labels": {
            "tenant_id": record.tenant_id,
            # the name the price data knows the model by, or "other" (UsageRecord.model_label):
            # one client sending made-up names cannot use up a metric's series for every tenant
            "model": record.model_label,
            "stream": _STREAM_LABEL[record.stream],
        },
    }
    # parts priced apart and the tier appear when the request had them (a missing count is
    # 0: replay and the log-based metrics read it so), keeping the common line short
    if has_priced_parts(record):
        for name in EXTRA_TOKEN_COLUMNS:
            value = getattr(record, name)
            if value:
                entry[name] = value
    if record.service_tier is not None:
        entry["service_tier"] = record.service_tier
    if record.usage_flag is not None:  # missing | implausible (docs/reliability.md)
        entry["usage_flag"] = record.usage_flag
    if record.ttft_ms is not None:
        entry["ttft_ms"] = float(record.ttft_ms)
    if record.trace:
        entry["logging.googleapis.com/trace"] = record.trace
    return entry


def escape_line_breaks(data: bytes) -> bytes:
    """JSON allows U+2028, U+2029 and U+0085 raw, but many line readers split on them:
    escaped, a model name from a request cannot cut a log line in two."""
    return (
        data.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029").replace(b"\xc2\x85", b"\\u0085")
    )


def _ascii(record: UsageRecord) -> bool:
    return record.model.isascii() and (record.upstream_model is None or record.upstream_model.isascii())


class JsonLogSink:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def write(self, records: Iterable[UsageRecord]) -> None:
        # one write per batch: a syscall per line is measurable on the hot path
        data = b"".join([orjson.dumps(log_entry(r), option=orjson.OPT_APPEND_NEWLINE) for r in records])
        # only the model names come from outside unchecked (tenant ids and trace ids are
        # validated ASCII); isascii() is a flag check, a scan of the batch is not
        if not all(_ascii(r) for r in records):
            data = escape_line_breaks(data)
        if data:
            stream = self.stream
            raw = getattr(stream, "buffer", None)
            if raw is not None:  # the bytes as they are, without a decode and an encode
                stream.flush()  # whatever the text layer holds goes first
                raw.write(data)
                raw.flush()
            else:
                stream.write(data.decode())
                stream.flush()
