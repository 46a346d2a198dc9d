"""The `litellm_request` line: one JSON object per request on stdout.

Field names and types are the public contract (docs/contracts.md): the log-based
metrics and the BigQuery export depend on them, so types never change (tokens are
ints, cost and latencies always floats).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

import orjson

from ..logs import utc_iso
from ..metering.record import EXTRA_TOKEN_COLUMNS, UsageRecord
from ..metering.usage import has_priced_parts
from ..money import usd_text


def log_entry(record: UsageRecord) -> dict:
    entry = {
        "severity": "INFO" if record.status_code < 500 else "WARNING",
        "message": "litellm_request",
        "time": utc_iso(record.created_at),
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
        "logging.googleapis.com/labels": {"tenant_id": record.tenant_id, "model": record.model},
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
